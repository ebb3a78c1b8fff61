"""``--dataset my_docs.jsonl`` (any file validate-data accepts) and ``--dtype``: end to end through
the CLI on a tiny model; the result is named after the file and records its sha256 and the dtype."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from benchmark.cli import main
from benchmark.paths import sha256_file
from benchmark.protocol.evaluator import Loaders
from benchmark.protocol.tiny import tiny_model

SUB = """name: usersub
authors: [test]
description: test submission
compressor: {press: SnapKVPress, kwargs: {window_size: 8}}
adapter: {recipe: none}
"""


@pytest.fixture
def user_file(tmp_path, document):
    row = {"doc_id": "mine-0", "text": document.text,
           "questions": [{"id": q.id, "question": q.question, "answers": list(q.answers)} for q in document.questions],
           "train_qa": [{"question": q, "answer": a} for q, a in document.train_qa]}
    path = tmp_path / "my docs" / "my_docs.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps(row) + "\n")
    return path


@pytest.fixture
def submission(tmp_path):
    d = tmp_path / "submissions" / "usersub"
    d.mkdir(parents=True)
    (d / "submission.yaml").write_text(SUB)
    return d


@pytest.fixture
def tiny():
    """Loaders of the tiny model in whatever dtype was asked for (``.loaders``), and the dtype each
    load was given (``.asked``)."""
    model, tok = tiny_model("llama")
    asked = []

    def load(model_spec, device=None, dtype=None):
        asked.append(dtype)
        return (model.to(torch.bfloat16) if dtype == "bfloat16" else model), tok

    return SimpleNamespace(loaders=Loaders(load_model=load), asked=asked)


def _evaluate(tiny, submission, out, *extra):
    return main(["evaluate", str(submission), "--rhos", "0", "0.5", "1", "--conditions", "base", "--out", str(out),
                 *extra], loaders=tiny.loaders)


def test_jsonl_path_evaluates_end_to_end(tmp_path, user_file, submission, tiny, capsys):
    assert main(["validate-data", str(user_file)]) == 0
    assert _evaluate(tiny, submission, tmp_path / "out", "--dataset", str(user_file)) == 0
    [path] = (tmp_path / "out").rglob("*.json")
    assert path.name == "my_docs.json"
    data = json.loads(path.read_text())
    assert data["dataset"] == {"id": "my_docs", "split": "test", "sha256": sha256_file(user_file)}
    assert {p["doc_id"] for p in data["predictions"]} == {"mine-0"} and len(data["predictions"]) == 3 * 3
    assert data["environment"]["dtype"] == "float32" and tiny.asked == [None]


def test_resumed_run_says_how_many_documents_it_skips(tmp_path, user_file, submission, tiny, capsys):
    assert _evaluate(tiny, submission, tmp_path / "out", "--dataset", str(user_file)) == 0
    assert "skipping" not in capsys.readouterr().err
    assert _evaluate(tiny, submission, tmp_path / "out", "--dataset", str(user_file)) == 0
    [path] = (tmp_path / "out").rglob("*.json")
    assert f"my_docs: skipping 1 of 1 documents, already done in {path}" in capsys.readouterr().err


def test_dtype_is_passed_and_recorded(tmp_path, user_file, submission, tiny):
    assert _evaluate(tiny, submission, tmp_path / "out", "--dataset", str(user_file), "--dtype", "bfloat16") == 0
    [path] = (tmp_path / "out").rglob("*.json")
    assert tiny.asked == ["bfloat16"]
    assert json.loads(path.read_text())["environment"]["dtype"] == "bfloat16"


def test_unknown_dtype_is_refused(submission, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(submission), "--dtype", "float16"])
    assert exc.value.code == 2 and "--dtype" in capsys.readouterr().err


def test_bad_or_missing_file_fails_naming_it(tmp_path, submission, tiny, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"doc_id": "a", "text": "t", "questions": [{"id": "q", "question": "?", "answers": []}]}\n')
    assert _evaluate(tiny, submission, tmp_path / "out", "--dataset", str(bad)) == 2
    assert "bad.jsonl:1: field 'questions/0/answers'" in capsys.readouterr().err  # the schema's own message
    assert _evaluate(tiny, submission, tmp_path / "out", "--dataset", str(tmp_path / "nope.jsonl")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--dataset" in err and "nope.jsonl: no such file" in err


def test_file_named_like_a_spec_dataset_is_refused(tmp_path, user_file, submission, tiny, capsys):
    clash = tmp_path / "mini-narrative.jsonl"
    clash.write_text(user_file.read_text())
    from benchmark.protocol.spec import load_spec

    if "mini-narrative" not in {d.id for d in load_spec("mini").datasets}:
        pytest.skip("the spec has no dataset of that name")
    assert _evaluate(tiny, submission, tmp_path / "out", "--dataset", str(clash)) == 2
    assert "rename it" in capsys.readouterr().err


def test_dry_run_lists_a_jsonl_dataset(user_file, submission, capsys):
    assert main(["evaluate", str(submission), "--dataset", str(user_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "my_docs" in out and "mini-narrative" not in out
