"""The Ray executor: one task per (dataset, document) on a local Ray instance, merged into exactly
the result of a plain in-process run."""

import json
import os
from pathlib import Path

import pytest
from test_runner import make_submission
from tiny_loaders import tiny_loaders

from benchmark.protocol import runner as R

TESTS = Path(__file__).resolve().parent


@pytest.mark.slow
def test_ray_run_merges_to_exactly_the_in_process_result(tmp_path, document, monkeypatch):
    ray = pytest.importorskip("ray")
    from benchmark.integrations.executors import run_on_ray

    rows = [{"doc_id": f"d{i}", "text": document.text + f" Extra fact number {i}.",
             "questions": [{"id": f"d{i}-{q.id}", "question": q.question, "answers": list(q.answers)}
                           for q in document.questions[:2]],
             "train_qa": [{"question": q, "answer": a} for q, a in document.train_qa]} for i in range(3)]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sub = make_submission(tmp_path)
    # the tiny model and spec, here and (pickled) in every Ray task; run_on_ray lists the units with them too
    kw = dict(rhos=[0.0, 0.5, 1.0], conditions=["base", "base_kv_adapter_decode"], loaders=tiny_loaders(data))

    # In process: its own adapter cache.
    monkeypatch.setenv("LORAKV_CACHE", str(tmp_path / "cache-local"))
    [single] = R.evaluate(sub.path, out=tmp_path / "local", progress=False, **kw)

    # On Ray: workers get tests/ on their path, where the loaders' functions live.
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "LORAKV_CACHE": str(tmp_path / "cache-ray")}
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2,
             runtime_env={"env_vars": env}, logging_level="warning")
    try:
        merged = run_on_ray(sub.path, out=tmp_path / "ray", progress=False, **kw)
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
