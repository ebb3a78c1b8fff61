"""The Ray executor: one task per (dataset, document) on a local Ray instance, merged into exactly
the result of a plain in-process run."""

import json
import os
from pathlib import Path

import pytest

from benchmark import runner as R
from benchmark.tiny import tiny_model

from test_runner import make_submission
from ray_worker_setup import DATA_ENV, tiny_spec

TESTS = Path(__file__).resolve().parent


@pytest.mark.slow
def test_ray_run_merges_to_exactly_the_in_process_result(tmp_path, document, monkeypatch):
    ray = pytest.importorskip("ray")
    from benchmark.executors import run_on_ray

    rows = [{"doc_id": f"d{i}", "text": document.text + f" Extra fact number {i}.",
             "questions": [{"id": f"d{i}-{q.id}", "question": q.question, "answers": list(q.answers)}
                           for q in document.questions[:2]],
             "train_qa": [{"question": q, "answer": a} for q, a in document.train_qa]} for i in range(3)]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sub = make_submission(tmp_path)
    kw = dict(rhos=[0.0, 0.5, 1.0], conditions=["base", "base_kv_adapter_decode"])

    # In process: the same tiny model and spec, its own adapter cache.
    monkeypatch.setenv("LORAKV_CACHE", str(tmp_path / "cache-local"))
    model, tok = tiny_model("llama")
    monkeypatch.setattr(R, "load_model", lambda *a, **k: (model, tok))
    monkeypatch.setattr(R, "load_spec", lambda tier: tiny_spec(data))  # also lists the units in run_on_ray
    [single] = R.evaluate(sub.path, out=tmp_path / "local", progress=False, **kw)

    # On Ray: workers get tests/ on their path and install the tiny model through the hook.
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "LORAKV_CACHE": str(tmp_path / "cache-ray"), DATA_ENV: str(data)}
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2,
             runtime_env={"env_vars": env}, logging_level="warning")
    try:
        merged = run_on_ray(sub.path, out=tmp_path / "ray", runner_hook="ray_worker_setup:install", progress=False,
                            **kw)
    finally:
        ray.shutdown()

    [path] = merged
    assert path == tmp_path / "ray" / "tsub" / single.relative_to(tmp_path / "local" / "tsub")
    assert not list(path.parent.glob("*.shard-*"))  # shards removed after the merge
    got, want = json.loads(path.read_text()), json.loads(single.read_text())
    for key in ("predictions", "cells"):
        assert got[key] == want[key]
    assert [d["doc_id"] for d in got["documents"]] == ["d0", "d1", "d2"]
    assert all(d["adapter"] and not d["adapter"]["cached"] for d in got["documents"])  # trained in the workers
