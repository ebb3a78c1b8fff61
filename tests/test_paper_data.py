"""Paper-tier converters on tiny fixtures in the original dataset formats."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from benchmark.paper import paper_data
from benchmark.paper.paper_data import (
    DataIntegrityError,
    DataSourceError,
    convert_longhealth,
    convert_narrativeqa,
    extract_story_span,
    prepare_data,
    sha256_file,
    verify_sha256,
    write_jsonl,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NQA_DIR = FIXTURES / "narrativeqa"
NQA_ZIP_DIR = FIXTURES / "narrativeqa_zip"
LH_JSON = FIXTURES / "longhealth" / "benchmark_v5.json"

sys.path.insert(0, str(FIXTURES))
from make_fixtures import MOVIE, doc_id  # noqa: E402

LAMP, ORCHARD, FOX = doc_id("The Lamp Keeper"), doc_id("The Orchard"), doc_id("The Fox and the Crow")


# ----------------------------------------------------------------- NarrativeQA


def test_narrativeqa_counts_golds_and_ids():
    records = convert_narrativeqa(NQA_DIR, [LAMP, ORCHARD, FOX])
    assert [r["doc_id"] for r in records] == [LAMP, ORCHARD, FOX]
    assert [len(r["questions"]) for r in records] == [3, 2, 2]
    lamp = records[0]
    assert [q["id"] for q in lamp["questions"]] == [f"{LAMP}-q0", f"{LAMP}-q1", f"{LAMP}-q2"]
    assert lamp["questions"][0]["answers"] == ["forty years", "For forty years."]
    assert lamp["questions"][1]["answers"] == ["one hundred and twelve"]  # identical golds deduplicated
    assert lamp["questions"][2]["answers"] == ["the Gull", "The Gull"]  # stripped, order kept
    assert list(lamp) == ["doc_id", "text", "questions"]
    assert list(lamp["questions"][0]) == ["id", "question", "answers"]


def test_narrativeqa_story_span_between_markers():
    lamp, orchard, fox = convert_narrativeqa(NQA_DIR, [LAMP, ORCHARD, FOX])
    # Gutenberg header and licence after the end marker are gone, CRLF and trailing spaces too.
    assert lamp["text"].startswith("Produced by Jane Doe")
    assert lamp["text"].endswith("new eBooks .")
    assert "Project Gutenberg EBook of" not in lamp["text"]
    assert "LICENSE BOILERPLATE" not in lamp["text"]
    assert "\r" not in lamp["text"] and " \n" not in lamp["text"]
    # HTML around a movie script is cut at the markers.
    assert orchard["text"].startswith("THE ORCHARD Written") and orchard["text"].endswith("THE END")
    assert "<html>" not in orchard["text"] and "<script>" not in orchard["text"]
    # Markers that do not occur: the whole text is kept.
    assert fox["text"].startswith("A short fable.") and fox["text"].endswith("dropped the cheese.")


def test_extract_story_span_rules():
    assert extract_story_span("junk START story END junk", "START", "END") == "START story END"
    assert extract_story_span("junk START story", "START", "END") == "START story"
    assert extract_story_span("story END junk", "START", "END") == "story END"
    assert extract_story_span("  whole  \r\n text ", None, "") == "whole\n text"


def test_narrativeqa_selection_order_is_respected():
    records = convert_narrativeqa(NQA_DIR, [FOX, LAMP])
    assert [r["doc_id"] for r in records] == [FOX, LAMP]  # ORCHARD (train split) not selected


def test_narrativeqa_searches_every_split_file():
    records = convert_narrativeqa(NQA_DIR, [ORCHARD])  # lives in train-*.parquet only
    assert records[0]["questions"][1]["answers"] == ["green apples", "apples"]


def test_narrativeqa_unknown_id_is_a_clear_error():
    with pytest.raises(DataSourceError) as err:
        convert_narrativeqa(NQA_DIR, [LAMP, "0" * 40])
    assert "0" * 40 in str(err.value) and "not found" in str(err.value)
    assert LAMP not in str(err.value)


def test_narrativeqa_bad_source_dir(tmp_path):
    with pytest.raises(DataSourceError, match="no \\*.parquet files"):
        convert_narrativeqa(tmp_path, [LAMP])
    with pytest.raises(DataSourceError, match="not found"):
        convert_narrativeqa(tmp_path / "nope", [LAMP])


def test_narrativeqa_hub_failure_points_to_source(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataSourceError, match="--source DIR"):
        convert_narrativeqa(None, [LAMP])


# ------------------------------------------------------------------ LongHealth


def test_longhealth_structure_and_golds():
    records = convert_longhealth(LH_JSON)
    assert [r["doc_id"] for r in records] == ["patient_01", "patient_02", "patient_03"]
    assert sum(len(r["questions"]) for r in records) == 9
    p2 = records[1]
    raw = json.loads(LH_JSON.read_text())["patient_02"]
    assert p2["text"] == raw["texts"]["text_0"].strip() + "\n\n" + raw["texts"]["text_1"].strip()
    # questions sorted by No; the gold is the TEXT of the correct option
    assert [q["id"] for q in p2["questions"]] == ["patient_02-q1", "patient_02-q2", "patient_02-q3"]
    q1 = p2["questions"][0]
    assert q1["answers"] == ["35 %"]
    assert q1["options"] == ["25 %", "35 %", "45 %", "55 %", "65 %"]
    assert list(q1) == ["id", "question", "answers", "options"]


def test_longhealth_correct_as_letter_and_text_order(tmp_path):
    data = json.loads(LH_JSON.read_text())
    data["patient_01"]["questions"][1]["correct"] = "C"  # option letter instead of text
    texts = data["patient_03"]["texts"]
    data["patient_03"]["texts"] = {"text_10": "ten", "text_2": "two", **texts}
    src = tmp_path / "benchmark_v5.json"
    src.write_text(json.dumps(data))
    records = {r["doc_id"]: r for r in convert_longhealth(src)}
    assert records["patient_01"]["questions"][1]["answers"] == ["Alpha"]
    assert records["patient_03"]["text"].split("\n\n")[-2:] == ["two", "ten"]


def test_longhealth_bad_correct_field_names_file_and_field(tmp_path):
    data = json.loads(LH_JSON.read_text())
    data["patient_02"]["questions"][0]["correct"] = "something else"
    src = tmp_path / "benchmark_v5.json"
    src.write_text(json.dumps(data))
    with pytest.raises(DataIntegrityError) as err:
        convert_longhealth(src)
    assert str(src) in str(err.value) and "'correct'" in str(err.value) and "patient_02" in str(err.value)


def test_longhealth_patient_selection(tmp_path):
    records = convert_longhealth(LH_JSON, ["patient_03", "patient_01"])
    assert [r["doc_id"] for r in records] == ["patient_03", "patient_01"]
    with pytest.raises(DataSourceError, match="patient_99"):
        convert_longhealth(LH_JSON, ["patient_99"])
    with pytest.raises(DataSourceError, match="not found"):
        convert_longhealth(tmp_path / "missing.json")


# ------------------------------------------------------------- files & hashes


def test_verify_sha256(tmp_path):
    f = tmp_path / "a.json"
    f.write_text("{}")
    actual = sha256_file(f)
    assert verify_sha256(f, actual, "thing") == actual
    with pytest.raises(DataIntegrityError) as err:
        verify_sha256(f, "ab" * 32, "LongHealth benchmark_v5.json")
    msg = str(err.value)
    assert str(f) in msg and "ab" * 32 in msg and actual in msg and "LongHealth benchmark_v5.json" in msg
    with pytest.warns(UserWarning, match="not checked"):
        assert verify_sha256(f, None, "thing") == actual


def test_write_jsonl_is_utf8_one_record_a_line(tmp_path):
    out = write_jsonl([{"doc_id": "x", "text": "Ünïcode — ok"}, {"doc_id": "y", "text": ""}],
                      tmp_path / "d" / "o.jsonl")
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == '{"doc_id": "x", "text": "Ünïcode — ok"}'
    assert len(lines) == 2


# --------------------------------------------------------------- prepare_data


def test_paper_spec_has_the_papers_twenty_documents():
    sel = paper_data.paper_selection("narrativeqa")
    assert len(sel.doc_ids) == 20 and len(set(sel.doc_ids)) == 20
    assert sum(sel.expected_questions.values()) == 596 == sel.expected_total
    assert sel.doc_ids[0] == "60a79c800ff1d55aedfba99108890ecc3632c456"
    lh = paper_data.paper_selection("longhealth")
    assert lh.doc_ids is None and (lh.expected_documents, lh.expected_total) == (20, 400)


def test_prepare_narrativeqa_with_selection_file(tmp_path):
    selection = tmp_path / "sel.json"
    selection.write_text(
        json.dumps({"selected_documents": [{"document_id": ORCHARD, "questions": 2},
                                           {"document_id": LAMP, "questions": 3}]})
    )
    out = tmp_path / "nqa.jsonl"
    summary = prepare_data("narrativeqa", NQA_DIR, out, selection=selection)
    assert summary["documents"] == 2 and summary["questions"] == 5
    assert summary["sha256"] == sha256_file(out)
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["doc_id"] for r in lines] == [ORCHARD, LAMP]


def test_prepare_narrativeqa_question_count_mismatch(tmp_path):
    selection = tmp_path / "sel.json"
    selection.write_text(json.dumps({"selected_documents": [{"document_id": LAMP, "questions": 30}]}))
    with pytest.raises(DataIntegrityError, match="expected 30"):
        prepare_data("narrativeqa", NQA_DIR, tmp_path / "o.jsonl", selection=selection)


def test_prepare_narrativeqa_paper_ids_missing_from_fixture(tmp_path):
    with pytest.raises(DataSourceError, match="20 selected NarrativeQA document id"):
        prepare_data("narrativeqa", NQA_DIR, tmp_path / "o.jsonl")


def test_prepare_narrativeqa_without_recorded_ids(tmp_path, monkeypatch):
    spec = json.loads(paper_data.SPEC_PATH.read_text())
    spec["narrativeqa"]["doc_ids"] = None
    spec["narrativeqa"]["todo"] = "ids not found"
    fake = tmp_path / "paper_selection.json"
    fake.write_text(json.dumps(spec))
    monkeypatch.setattr(paper_data, "SPEC_PATH", fake)
    with pytest.raises(DataSourceError, match="--selection FILE"):
        prepare_data("narrativeqa", NQA_DIR, tmp_path / "o.jsonl")


def test_prepare_longhealth_checks_source_hash(tmp_path):
    with pytest.raises(DataIntegrityError) as err:
        prepare_data("longhealth", LH_JSON, tmp_path / "lh.jsonl")
    msg = str(err.value)
    assert str(LH_JSON) in msg and paper_data.spec_source("longhealth")["sha256"] in msg and sha256_file(LH_JSON) in msg


def test_prepare_longhealth_counts_checked_against_paper(tmp_path):
    with pytest.raises(DataIntegrityError, match="3 documents, expected 20"):
        prepare_data("longhealth", LH_JSON, tmp_path / "lh.jsonl", source_sha256=sha256_file(LH_JSON))


def test_prepare_longhealth_fixture(tmp_path):
    selection = tmp_path / "sel.json"
    selection.write_text(json.dumps({"longhealth": {"patient_ids": ["patient_01", "patient_02", "patient_03"]}}))
    out = tmp_path / "lh.jsonl"
    with pytest.warns(UserWarning, match="not checked"):
        summary = prepare_data("longhealth", LH_JSON, out, selection=selection, source_sha256=None)
    assert summary == {"documents": 3, "questions": 9, "sha256": sha256_file(out), "out": str(out)}


def test_prepare_unknown_dataset_and_missing_source(tmp_path):
    with pytest.raises(ValueError, match="unknown paper dataset"):
        prepare_data("squad", None, tmp_path / "o.jsonl")
    with pytest.raises(DataSourceError, match="--source FILE"):
        prepare_data("longhealth", None, tmp_path / "o.jsonl")


def test_fixture_generator_is_reproducible(tmp_path):
    import make_fixtures

    written = make_fixtures.write_narrativeqa(tmp_path / "nqa")
    assert [p.name for p in written] == ["test-00000-of-00001.parquet", "train-00000-of-00001.parquet"]
    lh = make_fixtures.write_longhealth(tmp_path / "lh")
    assert lh.read_bytes() == LH_JSON.read_bytes()
    shutil.rmtree(tmp_path / "nqa")


# ------------------------------------------------------- NarrativeQA, the original archives


def _zip_sources(**over):
    pins = {"narrativeqa_full_text.zip": sha256_file(NQA_ZIP_DIR / "narrativeqa_full_text.zip"),
            "narrativeqa-master.zip": sha256_file(NQA_ZIP_DIR / "narrativeqa-master.zip")}
    return {**paper_data.spec_source("narrativeqa"), "archives": pins, **over}


def test_archives_give_the_same_records_as_the_parquet_files():
    ids = [LAMP, ORCHARD, FOX]
    from_zip = convert_narrativeqa(NQA_ZIP_DIR, ids, sources=_zip_sources())
    assert from_zip == convert_narrativeqa(NQA_DIR, ids)
    # the full-text zip itself as --source, the master zip beside it
    assert convert_narrativeqa(NQA_ZIP_DIR / "narrativeqa_full_text.zip", [FOX], sources=_zip_sources()) == from_zip[2:]


def test_archives_rebuild_the_papers_jsonl_row_for_row():
    rows = paper_data.narrativeqa_reconstruction(NQA_ZIP_DIR / "narrativeqa_full_text.zip",
                                                 NQA_ZIP_DIR / "narrativeqa-master.zip", [ORCHARD, LAMP])
    assert len(rows) == 5
    story = convert_narrativeqa(NQA_DIR, [ORCHARD])[0]["text"]  # gunzipped, cut at the markers
    # the paper's records_for_document, written out: key order, _id format, answers not deduplicated
    assert rows[0] == {
        "_id": f"narrativeqa_{ORCHARD}_q000", "context": story, "question": "What colour is Lena's basket?",
        "answers": ["blue", "It is blue."],
        "metadata": {"document_id": ORCHARD, "set": "train", "kind": "movie", "wiki_title": "The Orchard",
                     "story_url": "http://example.org/The_Orchard",
                     "story_word_count_official": str(len(MOVIE.split())),
                     "subset_seed": 0, "subset_doc_rank": 0, "story_words": len(story.split())}}
    assert list(rows[0]) == ["_id", "context", "question", "answers", "metadata"]
    assert list(rows[0]["metadata"])[-3:] == ["subset_seed", "subset_doc_rank", "story_words"]
    assert rows[3]["_id"] == f"narrativeqa_{LAMP}_q001" and rows[3]["metadata"]["subset_doc_rank"] == 1
    assert rows[3]["answers"] == ["one hundred and twelve", "one hundred and twelve"]
    assert paper_data.reconstruction_bytes(rows[:1]) == (json.dumps(rows[0], ensure_ascii=False) + "\n").encode()


def test_archives_check_the_reconstruction_and_archive_sha256():
    full, master = NQA_ZIP_DIR / "narrativeqa_full_text.zip", NQA_ZIP_DIR / "narrativeqa-master.zip"
    ids = [LAMP, ORCHARD, FOX]
    import hashlib

    rebuilt = hashlib.sha256(paper_data.reconstruction_bytes(paper_data.narrativeqa_reconstruction(full, master, ids)))
    ok = _zip_sources(reconstruction_sha256=rebuilt.hexdigest())
    assert len(paper_data.convert_narrativeqa_archives(full, master, ids, sources=ok)) == 3
    with pytest.raises(DataIntegrityError, match=f"{rebuilt.hexdigest()}, expected 91bc5e49"):
        paper_data.convert_narrativeqa_archives(full, master, ids, sources=_zip_sources())  # the spec's pin
    # another selection is not the paper's: nothing to compare the rebuilt file with
    assert len(paper_data.convert_narrativeqa_archives(full, master, ids, sources=_zip_sources(),
                                                       check_reconstruction=False)) == 3
    with pytest.raises(DataIntegrityError, match="narrativeqa_full_text.zip: sha256 mismatch"):
        paper_data.convert_narrativeqa_archives(full, master, ids, sources=paper_data.spec_source("narrativeqa"))


def test_prepare_data_from_the_archives_and_their_errors(tmp_path):
    selection = tmp_path / "sel.json"
    selection.write_text(json.dumps({"selected_documents": [{"document_id": FOX, "questions": 2},
                                                            {"document_id": LAMP, "questions": 3}]}))
    out = tmp_path / "nqa.jsonl"
    summary = prepare_data("narrativeqa", NQA_ZIP_DIR, out, selection=selection, sources=_zip_sources())
    assert (summary["documents"], summary["questions"]) == (2, 5)
    assert out.read_bytes() == write_jsonl(convert_narrativeqa(NQA_DIR, [FOX, LAMP]), tmp_path / "p.jsonl").read_bytes()
    with pytest.raises(DataSourceError, match="1 selected NarrativeQA document id.*: " + "f" * 40):
        convert_narrativeqa(NQA_ZIP_DIR, [LAMP, "f" * 40], sources=_zip_sources())
    absent = doc_id("A story without a file")  # in documents.csv and qaps.csv, no .content file
    with pytest.raises(DataSourceError, match=f"narrativeqa_full_text.zip: no member '{absent}.content'"):
        convert_narrativeqa(NQA_ZIP_DIR, [absent], sources=_zip_sources())
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(NQA_ZIP_DIR / "narrativeqa_full_text.zip", lonely)
    with pytest.raises(DataSourceError, match="narrativeqa-master.zip not found"):
        convert_narrativeqa(lonely, [LAMP])


def test_the_paper_spec_is_the_one_record_of_revisions_and_hashes():
    spec = json.loads(paper_data.SPEC_PATH.read_text())
    text = paper_data.SPEC_PATH.read_text()
    nqa, lh = paper_data.spec_source("narrativeqa"), paper_data.spec_source("longhealth")
    for pin in (nqa["revision"], lh["revision"], lh["sha256"], nqa["reconstruction_sha256"], *nqa["archives"].values()):
        assert pin not in text  # the selection file does not repeat them
        assert pin not in Path(paper_data.__file__).read_text()  # nor does the code
    assert not {"revision", "dataset", "commit", "source_sha256"} & (set(spec["narrativeqa"]) | set(spec["longhealth"]))
    assert re.fullmatch(r"[0-9a-f]{40}", nqa["revision"]) and re.fullmatch(r"[0-9a-f]{40}", lh["revision"])
    assert nqa["reconstruction_sha256"].startswith("91bc5e49")


def test_fixture_archives_are_reproducible(tmp_path):
    import make_fixtures

    for path in make_fixtures.write_narrativeqa_archives(tmp_path):
        assert path.read_bytes() == (NQA_ZIP_DIR / path.name).read_bytes()


def test_prepare_data_cli_reports_a_wrong_archive_in_one_error(tmp_path, capsys):
    from benchmark.cli import main

    rc = main(["prepare-data", "narrativeqa", "--source", str(NQA_ZIP_DIR), "--out", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: NarrativeQA narrativeqa_full_text.zip: sha256 mismatch for ")
    assert "Traceback" not in err and not (tmp_path / "o.jsonl").exists()
