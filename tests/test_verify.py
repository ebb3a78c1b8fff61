"""verify re-runs a seeded sample of a result file: an honest tiny-model result passes, a result
whose generations were replaced by the gold answers (scores and cells recomputed, so conformance
cannot tell) fails."""

from __future__ import annotations

import dataclasses
import json

import pytest

from benchmark import runner as R
from benchmark.tiny import tiny_model
from benchmark.verify import sample_pairs, verify_result


@pytest.fixture()
def tiny_result(tmp_path, monkeypatch, document):
    from benchmark.spec import DataFile, load_spec

    data = tmp_path / "docs.jsonl"
    rows = [{"doc_id": f"d{i}", "text": document.text + f" Extra fact number {i}.",
             "questions": [{"id": f"d{i}-{q.id}", "question": q.question, "answers": list(q.answers)}
                           for q in document.questions[:2]],
             "train_qa": [{"question": q, "answer": a} for q, a in document.train_qa]} for i in range(2)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = load_spec("mini")
    spec = dataclasses.replace(spec, datasets=(dataclasses.replace(spec.datasets[0], test=DataFile(data, None)),))
    monkeypatch.setattr(R, "load_spec", lambda tier: spec)
    model, tok = tiny_model("llama")
    monkeypatch.setattr(R, "load_model", lambda *a, **k: (model, tok))
    folder = tmp_path / "submissions" / "tsub"
    folder.mkdir(parents=True)
    (folder / "submission.yaml").write_text(
        "name: tsub\nauthors: [t]\ndescription: t\ncompressor: {press: KnormPress}\n"
        "adapter: {recipe: qa, lora: {r: 2, alpha: 4}, train: {lr: 5.0e-2, epochs: 1, batch_size: 4}}\n")
    [path] = R.evaluate(folder, out=tmp_path / "runs", rhos=[0.0, 0.5, 1.0],
                        conditions=["base", "base_kv_adapter_decode"], progress=False, isolation="inline")
    return path, tmp_path / "submissions"


def test_verify_passes_on_an_honest_result(tiny_result):
    path, subs = tiny_result
    v = verify_result(path, 2, submissions_dir=subs, isolation="inline")
    assert v.ok, v.mismatches
    assert len(v.pairs) == 2 and v.compared == 2 * 2 * 2  # pairs x questions x conditions


def test_verify_detects_gold_generations(tiny_result):
    from benchmark.metrics import score_prediction
    from benchmark.results import aggregate

    path, subs = tiny_result
    data = json.loads(path.read_text())
    for p in data["predictions"]:
        p["generation"], p["prediction"] = " " + p["answers"][0], p["answers"][0]
        s = score_prediction(p["prediction"], p["answers"])
        p["rouge_l"], p["exact_match"] = 100 * s["rouge_l"], 100 * s["exact_match"]
    data["cells"] = aggregate(data["predictions"], data["documents"])
    path.write_text(json.dumps(data, indent=1))
    v = verify_result(path, 1, submissions_dir=subs, isolation="inline")
    assert not v.ok and v.mismatches and all("stored generation" in m for m in v.mismatches)


def test_the_sample_is_seeded_by_the_file(tiny_result, tmp_path):
    path, _ = tiny_result
    data = json.loads(path.read_text())
    assert sample_pairs(path, data, 2) == sample_pairs(path, data, 2)
    draws = set()
    for i in range(8):  # another file content, another draw (the seed is its sha256)
        other = tmp_path / f"copy{i}.json"
        other.write_text(path.read_text() + " " * i)
        draws.add(tuple(sample_pairs(other, data, 2)))
    assert len(draws) > 1


def test_verify_through_the_worker(tiny_result, monkeypatch):
    import os
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tests)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    path, subs = tiny_result
    v = verify_result(path, 1, submissions_dir=subs, worker_setup="worker_setup:install")
    assert v.ok, v.mismatches
