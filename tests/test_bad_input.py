"""Bad input gets a one-line error naming the flag / file / line / field and a non-zero exit,
before any work starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.protocol.evaluator import Loaders

ROOT = Path(__file__).resolve().parents[1]


def _refuse_model(*a):
    pytest.fail("a model was loaded despite a bad flag or submission")


#: the real spec; any model load fails the test
NO_MODEL = Loaders(load_model=_refuse_model)


@pytest.mark.parametrize("flags, named", [
    (["--docs", "0"], "--docs 0"),
    (["--docs", "-2"], "--docs -2"),
    (["--questions", "0"], "--questions 0"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--conditions", "bogus"], "--conditions bogus"),
    (["--conditions", "base", "base"], "--conditions"),
    (["--rhos", "1.5"], "--rhos 1.5"),
    (["--rhos", "-0.1"], "--rhos -0.1"),
    (["--rhos", "nan"], "--rhos nan"),
    (["--rhos", "0.5", "0.5"], "--rhos: 0.5"),
    (["--model", "no-such-model"], "no-such-model"),
    (["--dataset", "no-such-dataset"], "no-such-dataset"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_evaluate_flags_fail_before_any_work(flags, named, monkeypatch, tmp_path, capsys):
    import benchmark.protocol.runner as R

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(R, "evaluate", lambda *a, **k: pytest.fail("evaluate ran despite a bad flag"))
    assert main(["evaluate", str(ROOT / "submissions" / "snapkv"), *flags], loaders=NO_MODEL) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and named in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command, flags, named", [
    (["evaluate", str(ROOT / "submissions" / "snapkv-noadapter")], ["--conditions", "base", "adapter_all"],
     "--conditions adapter_all"),
    (["evaluate", str(ROOT / "submissions" / "snapkv")], ["--device", "cuda"], "--device cuda"),
    (["evaluate", str(ROOT / "submissions" / "snapkv")], ["--device", "gpu"], "--device gpu"),
    (["verify", "any.json"], ["--device", "cuda"], "--device cuda"),
], ids=["adapter-condition-without-adapter", "cuda-without-cuda", "not-a-device", "verify-cuda-without-cuda"])
def test_flags_the_submission_or_machine_cannot_honour(command, flags, named, monkeypatch, tmp_path, capsys):
    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU-only torch
    assert main([*command, *flags], loaders=NO_MODEL) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and named in err, err
    assert not (tmp_path / "runs").exists()


def _line(doc_id="d", text="Some text.", answers=("Tollervik",), question="Where?") -> str:
    return json.dumps({"doc_id": doc_id, "text": text,
                       "questions": [{"id": f"{doc_id}-q", "question": question, "answers": list(answers)}]})


@pytest.mark.parametrize("content, where, words", [
    (_line().encode() + b"\n" + _line("e").encode().replace(b"Some", b"S\xe9me") + b"\n", ":2:", "not UTF-8"),
    ((_line(text="   ") + "\n").encode(), ":1: field 'text'", "blank"),
    ((_line(answers=(" ",)) + "\n").encode(), ":1: field 'questions/0/answers/0'", "blank"),
    ((_line(question="\t") + "\n").encode(), ":1: field 'questions/0/question'", "blank"),
    ((_line(answers=("The.",)) + "\n").encode(), ":1: field 'questions/0/answers/0'", "normalises to an empty"),
], ids=["non-utf8", "blank-text", "blank-answer", "blank-question", "answer-normalises-to-empty"])
def test_bad_data_file_is_reported_with_file_and_line(tmp_path, capsys, content, where, words):
    f = tmp_path / "docs.jsonl"
    f.write_bytes(content)
    assert main(["validate-data", str(f)]) == 1
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert f"{f}{where}" in first and words in first, err


def test_data_path_that_is_a_folder(tmp_path, capsys):
    from benchmark.protocol.datasets import DataError, load_documents

    assert main(["validate-data", str(tmp_path)]) == 1
    assert "is a folder" in capsys.readouterr().err
    with pytest.raises(DataError, match="is a folder"):
        load_documents(tmp_path)


def test_validate_data_reports_every_bad_line(tmp_path, capsys):
    f = tmp_path / "docs.jsonl"
    lines = [_line("a"), "{not json", _line("b", text=" "), _line("c"), _line("a"), _line("d", answers=("an",))]
    f.write_text("\n".join(lines) + "\n")
    assert main(["validate-data", str(f)]) == 1
    err = capsys.readouterr().err
    for lineno, words in ((2, "not valid JSON"), (3, "blank"), (5, "duplicate doc_id"), (6, "normalises")):
        assert any(f"{f}:{lineno}:" in line and words in line for line in err.splitlines()), (lineno, err)
    assert f"{f}:1:" not in err and f"{f}:4:" not in err
    assert f"INVALID {f}: 4 problems" in err


def test_corrupt_result_file_on_resume_fails_with_one_line(tmp_path, monkeypatch, capsys):
    """The CLI path of a truncated result file: a one-line error and exit 2, the file kept."""
    from benchmark.protocol.tiny import tiny_model

    model, tok = tiny_model("llama")
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "runs" / "snapkv" / "mini" / "smollm2-135m" / "mini-narrative.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"format": "lorakv-bench-result/1", "predictions": [')
    rc = main(["evaluate", str(ROOT / "submissions" / "snapkv"), "--model", "smollm2-135m",
               "--dataset", "mini-narrative", "--docs", "1", "--questions", "1", "--rhos", "0"],
              loaders=Loaders(load_model=lambda *a: (model, tok)))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err and "cannot resume" in err, err
    assert path.read_text().endswith("[")


@pytest.mark.parametrize("compressor, field, words", [
    ("{press: SnapKVPres}", "field 'compressor/press'", "did you mean SnapKVPress"),
    ("{press: SnapKVPress, kwargs: {windw_size: 8}}", "field 'compressor/kwargs/windw_size'",
     "(its kwargs: window_size, kernel_size)"),
    ("{press: CriticalKVPress, kwargs: {press: {press: SnapKVPress, kwargs: {kernel: 3}}}}",
     "field 'compressor/kwargs/press/kwargs/kernel'", "(its kwargs: window_size, kernel_size)"),
    ("{press: AdaKVPress, kwargs: {press: {press: ExpectedAtention}}}", "field 'compressor/kwargs/press/press'",
     "did you mean ExpectedAttentionPress"),
], ids=["press-typo", "kwarg-typo", "nested-kwarg-typo", "nested-press-typo"])
def test_press_typo_suggests_names_and_lists_kwargs(tmp_path, monkeypatch, capsys, compressor, field, words):
    sub = tmp_path / "submissions" / "typo"
    sub.mkdir(parents=True)
    (sub / "submission.yaml").write_text(f"name: typo\nauthors: [t]\ndescription: t\ncompressor: {compressor}\n"
                                         "adapter: {recipe: none}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(sub), "--docs", "1"], loaders=NO_MODEL) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {sub / 'submission.yaml'}: {field}") and "\n" not in err and words in err, err


def test_duplicate_question_id_within_a_document(tmp_path, capsys):
    row = json.loads(_line("a"))
    row["questions"].append(dict(row["questions"][0], question="Who?"))
    f = tmp_path / "docs.jsonl"
    f.write_text(json.dumps(row) + "\n")
    assert main(["validate-data", str(f)]) == 1
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith(f"INVALID {f}:1: field 'questions/1/id'") and "duplicate question id 'a-q'" in first


def test_train_qa_that_gives_an_evaluation_question_away_is_a_leak(tmp_path, capsys):
    ok = json.loads(_line("a", question="Where did Maren open her bakery?"))
    ok["questions"][0]["tags"] = ["covered"]
    ok["train_qa"] = [{"question": "In which town is the bakery?", "answer": "Tollervik"}]  # covered: the design
    asked = dict(ok, doc_id="b", questions=[dict(ok["questions"][0], id="b-q")],
                 train_qa=[{"question": "  where did MAREN open her\tbakery? ", "answer": "In Tollervik."}])
    tagged = dict(ok, doc_id="c", questions=[dict(ok["questions"][0], id="c-q", tags=["uncovered"])])
    f = tmp_path / "docs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in (ok, asked, tagged)))
    assert main(["validate-data", str(f)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"INVALID {f}:2: field 'train_qa/0/question': leak") and "'b-q'" in err[0], err
    assert err[1].startswith(f"INVALID {f}:3: field 'questions/0/tags': leak") and "'Tollervik'" in err[1], err
    assert err[2:] == [f"INVALID {f}: 2 problems"]


def test_committed_mini_data_has_no_leaks():
    """Every data file the mini spec pins (test and dev splits of both datasets)."""
    from benchmark.protocol.datasets import check_documents, check_leaks
    from benchmark.protocol.spec import load_spec

    files = [f for ds in load_spec("mini").datasets for f in (ds.test, ds.dev) if f is not None]
    assert len(files) == 4
    for f in files:
        assert check_documents(f.path, f.sha256)[1] == [] and check_leaks(f.path) == [], f.path
