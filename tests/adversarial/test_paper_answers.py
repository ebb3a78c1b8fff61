"""Paper-tier answers are checked where the paper data is not (it lives in one user's cache).

``prepare-data`` writes a digest of the split's gold answers into the package; conformance checks
every prediction's answers, question text and the split's coverage against it, and refuses a
paper-tier result outright when no digest exists. The digests here are made from the fixtures in
the datasets' original formats, by the same command a maintainer runs on the real data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark import cli
from benchmark.paper import paper_data
from benchmark.protocol.datasets import load_documents
from benchmark.protocol.runner import result_header
from benchmark.protocol.spec import load_spec
from benchmark.trust.conformance import check_result_file, kept_per_head

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
MODEL_ID = "qwen3-4b"
ENVIRONMENT = {"lorakv_bench": "0.1.0", "python": "3.11.7", "torch": "2.13.0", "transformers": "5.2.0",
               "peft": "0.21.2", "kvpress": "0.5.5", "device": "cuda:0", "torch_threads": 16, "dtype": "bfloat16",
               "sandbox": "bubblewrap", "gpu_name": "NVIDIA H100 80GB HBM3"}


def _fixture_ids() -> list[str]:
    import sys

    sys.path.insert(0, str(FIXTURES))
    try:
        from make_fixtures import doc_id
    finally:
        sys.path.remove(str(FIXTURES))
    return [doc_id("The Lamp Keeper"), doc_id("The Orchard"), doc_id("The Fox and the Crow")]


@pytest.fixture()
def answers_dir(tmp_path, monkeypatch) -> Path:
    """Where digests are read and written in this test: never the package's own folder."""
    folder = tmp_path / "answers"
    monkeypatch.setattr(paper_data, "ANSWERS_DIR", folder)
    return folder


@pytest.fixture()
def prepared(tmp_path, answers_dir, capsys) -> list:
    """The NarrativeQA fixture prepared by ``lorakv-bench prepare-data``, which writes its digest."""
    selection = tmp_path / "selection.json"
    selection.write_text(json.dumps(_fixture_ids()))
    out = tmp_path / "narrativeqa.jsonl"
    assert cli.main(["prepare-data", "narrativeqa", "--source", str(FIXTURES / "narrativeqa"),
                     "--selection", str(selection), "--out", str(out)]) == 0
    assert "answer digest written" in capsys.readouterr().out
    return load_documents(out)


def paper_result(root: Path, docs: list, answers_of=None, skip: int = 0, after: str = "") -> Path:
    """A paper-tier result of paper-tier-default on qwen3-4b and ``docs`` that is right in every
    other respect: paper extraction and metric, paper_floor budget (the no-context prefix at rho = 1),
    the model's KV shape. Its
    stored answers are ``answers_of(question, prediction)`` (default: the gold ones); the last
    ``skip`` questions of the last document are left out; ``after`` follows every generation."""
    from benchmark.config import DTYPE_BYTES, KV_SHAPES
    from benchmark.protocol.results import ResultFile, result_path
    from benchmark.protocol.submission import load_submission

    sub = load_submission(ROOT / "submissions" / "paper-tier-default")
    spec = load_spec("paper")
    model, ds = spec.model(MODEL_ID), spec.dataset("narrativeqa")
    layers, kv_heads, head_dim = KV_SHAPES[MODEL_ID]
    scoring = spec.scoring()
    header = result_header(sub, spec, model, ds, "test", sorted(spec.rhos), list(spec.conditions), dict(ENVIRONMENT))
    path = result_path(root / "leaderboard" / "results", sub.name, "paper", model.id, ds.id)
    rf = ResultFile(path, header)
    records, preds = [], []
    for d_i, doc in enumerate(docs):
        records.append({"doc_id": doc.doc_id, "n_prefix_tokens": 40, "n_doc_tokens": 1000,
                        "n_no_context_prefix_tokens": 30, "timings": {},
                        "adapter": {"bytes": 8192, "first_loss": 2.0, "final_loss": 0.5}})
        questions = doc.questions[:len(doc.questions) - skip] if d_i == len(docs) - 1 else doc.questions
        for q_i, q in enumerate(questions):
            for rho in sorted(spec.rhos):
                for cond in ("base", sub.headline_condition):
                    generation = q.answers[0] if (q_i + d_i) % 2 == 0 and rho < 0.99 else "I do not know"
                    generation += after
                    prediction = scoring.extract(generation, "")
                    answers = list(q.answers) if answers_of is None else answers_of(q, prediction)
                    s = scoring.score(prediction, answers)
                    # rho = 1: the no-context prompt's prefix is the cache
                    entries = layers * kv_heads * (30 if rho >= 1 else kept_per_head(40, 1000, rho, scoring))
                    preds.append({"doc_id": doc.doc_id, "question_id": q.id, "question": q.question, "rho": rho,
                                  "condition": cond, "generation": generation, "prediction": prediction,
                                  "answers": answers, "rouge_l": s["rouge_l"],
                                  "exact_match": s["exact_match"], "kv_entries": entries,
                                  "kv_bytes": entries * 2 * head_dim * DTYPE_BYTES["bfloat16"]})
    rf.data["documents"], rf.data["predictions"] = records, preds
    rf.save()
    return path


def fabricated(q, prediction) -> list[str]:
    """Attack B: the file's own predictions as the gold answers (every question scores 100)."""
    return [prediction]


def test_fabricated_paper_result_is_refused_when_no_digest_exists(tmp_path, answers_dir, prepared):
    """Attack B as measured: without the paper data and without a digest, nothing vouches for the
    answers, so the file is refused with one line that says how to make the digest."""
    path = paper_result(tmp_path, prepared, fabricated)
    for digest in answers_dir.glob("*.json"):
        digest.unlink()
    problems = check_result_file(path, submissions_dir=ROOT / "submissions")
    assert len(problems) == 1, problems
    (problem,) = problems
    assert problem.startswith(f"{path}: field 'dataset/id'") and "\n" not in problem
    assert "cannot be checked" in problem and "lorakv-bench prepare-data narrativeqa" in problem


def test_gold_answers_pass_against_the_digest(tmp_path, prepared):
    path = paper_result(tmp_path, prepared)
    assert check_result_file(path, submissions_dir=ROOT / "submissions") == []


def test_text_after_the_answer_is_scored_the_papers_way(tmp_path, prepared):
    """A generation that goes on after its answer (``Tollervik}.`` then a line of explanation): the
    paper's extraction reads the generation alone and takes its last line, the mini tier's would take
    ``Tollervik`` through the answer prefix. Stored the paper's way, the file passes every check;
    stored the mini way, the extraction and score checks name the fields."""
    from benchmark.protocol.metrics import Scoring

    path = paper_result(tmp_path, prepared, after="}.\nThe story says so in its second part.")
    data = json.loads(path.read_text())
    assert {p["prediction"] for p in data["predictions"]} == {"The story says so in its second part."}
    assert check_result_file(path, submissions_dir=ROOT / "submissions") == []

    mini_way, prefix = Scoring(), load_spec("paper").prompt.answer_prefix
    for p in data["predictions"]:
        p["prediction"] = mini_way.extract(p["generation"], prefix)
        p |= load_spec("paper").scoring().score(p["prediction"], p["answers"])
    assert data["predictions"][0]["prediction"] != "The story says so in its second part."
    path.write_text(json.dumps(data))
    problems = check_result_file(path, submissions_dir=ROOT / "submissions")
    assert any("/prediction'" in p and "extracts to 'The story says so in its second part.'" in p
               for p in problems), problems


def test_fabricated_answers_are_refused_against_the_digest(tmp_path, prepared):
    path = paper_result(tmp_path, prepared, fabricated)
    problems = check_result_file(path, submissions_dir=ROOT / "submissions")
    assert any(p.startswith(f"{path}: field 'predictions/") and "/answers'" in p and "gold answers" in p
               for p in problems), problems


@pytest.mark.parametrize("change, field", [
    (lambda p: p.update(question="An easier question?"), "question"),
    (lambda p: p.update(question_id=p["question_id"] + "x"), "question_id"),
], ids=["question-text", "question-id"])
def test_questions_are_checked_against_the_digest(tmp_path, prepared, change, field):
    path = paper_result(tmp_path, prepared)
    data = json.loads(path.read_text())
    change(data["predictions"][0])
    path.write_text(json.dumps(data))
    problems = check_result_file(path, submissions_dir=ROOT / "submissions")
    assert any(f"field 'predictions/0/{field}'" in p for p in problems), problems


def test_unanswered_questions_are_refused_against_the_digest(tmp_path, prepared):
    path = paper_result(tmp_path, prepared, skip=1)
    problems = check_result_file(path, submissions_dir=ROOT / "submissions")
    assert any("field 'predictions'" in p and "1 of the split's 7 questions unanswered" in p
               for p in problems), problems


def test_digest_follows_the_metric_normalisation(tmp_path, answers_dir, prepared):
    """Answers that normalise alike share a digest (they score alike); others do not. The fixture's
    golds "the Gull" / "The Gull" are one answer to the paper's metric."""
    digest = paper_data.load_answer_digest(paper_data.answer_digest_path("narrativeqa", "test"))
    assert digest["normalization"] == load_spec("paper").metric.normalization
    assert len(digest["questions"]) == sum(len(d.questions) for d in prepared) == 7
    gull = next(q for d in prepared for q in d.questions if "the Gull" in q.answers)
    key = f"{prepared[0].doc_id}/{gull.id}"
    assert digest["questions"][key]["answers"] == paper_data.answers_sha256(["gull", "GULL."], "paper")
    assert digest["questions"][key]["answers"] != paper_data.answers_sha256(["gull", "gulls"], "paper")


def test_longhealth_fixture_digest(tmp_path, answers_dir):
    out = tmp_path / "longhealth.jsonl"
    selection = tmp_path / "selection.json"
    selection.write_text(json.dumps({"longhealth": {"patient_ids": ["patient_01", "patient_02", "patient_03"]}}))
    with pytest.warns(UserWarning, match="not checked"):
        paper_data.prepare_data("longhealth", FIXTURES / "longhealth" / "benchmark_v5.json", out,
                                selection=selection, source_sha256=None)
    written = paper_data.write_answer_digest(out, "longhealth", "test", "paper")
    assert written == answers_dir / "longhealth.test.json"
    digest = paper_data.load_answer_digest(written)
    docs = load_documents(out)
    assert set(digest["questions"]) == {f"{d.doc_id}/{q.id}" for d in docs for q in d.questions}
    assert digest["data_sha256"] == paper_data.sha256_file(out)


def test_a_broken_digest_is_a_one_line_problem(tmp_path, answers_dir, prepared):
    path = paper_result(tmp_path, prepared)
    paper_data.answer_digest_path("narrativeqa", "test").write_text('{"format": "something else"}')
    (problem,) = check_result_file(path, submissions_dir=ROOT / "submissions")
    assert "field 'format'" in problem and "\n" not in problem
