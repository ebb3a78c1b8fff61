"""Slow end-to-end run on the real SmolLM2-135M: one document, two questions, the whole grid."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_evaluate_smollm2_one_document(tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "benchmark.cli", "evaluate", str(ROOT / "submissions/snapkv"),
           "--model", "smollm2-135m", "--dataset", "mini-narrative", "--docs", "1", "--questions", "2",
           "--out", str(out)]
    env = {**os.environ, "LORAKV_CACHE": os.environ.get("LORAKV_CACHE", str(tmp_path / "cache"))}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "base_kv_adapter_decode" in proc.stdout  # the table was printed
    data = json.loads((out / "snapkv/mini/smollm2-135m/mini-narrative.json").read_text())
    from benchmark.protocol.spec import load_spec

    spec = load_spec("mini")
    assert len(data["predictions"]) == 2 * len(spec.rhos) * len(spec.conditions)  # questions x rhos x conditions
    assert data["documents"][0]["adapter"]["steps"] > 0
    from benchmark.trust.conformance import check_result_file

    problems = check_result_file(out / "snapkv/mini/smollm2-135m/mini-narrative.json",
                                 submissions_dir=ROOT / "submissions", full_protocol=False)
    assert problems == []
    # Re-running resumes: nothing is recomputed, the adapter comes from the cache.
    proc2 = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc2.returncode == 0
    assert (json.loads((out / "snapkv/mini/smollm2-135m/mini-narrative.json").read_text())["predictions"]
            == data["predictions"])
