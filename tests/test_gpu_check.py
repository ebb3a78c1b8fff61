"""scripts/gpu_check.sh, the GPU checks, run end to end on CPU (DEVICE=cpu) so it works the day a
GPU is at hand: every step exits 0 and the own-code press matches the same press by name."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_on_cpu(tmp_path):
    out = tmp_path / "check.txt"
    env = dict(os.environ, DEVICE="cpu", MODEL="smollm2-135m", DOCS="1", QUESTIONS="1",
               PYTHON=str(ROOT / ".venv" / "bin" / "python"), LORAKV_BENCH=str(ROOT / ".venv" / "bin" / "lorakv-bench"))
    subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out)], env=env, check=True, timeout=1500)
    text = out.read_text()
    steps = re.findall(r"^== (\S+): exit (\d+)", text, re.M)
    assert [s for s, _ in steps] == ["machine", "snapkv-bfloat16", "snapkv-float32", "agreement", "verify-bf16",
                                     "knorm-yaml", "knorm-code", "knorm-identical", "throughput"], text
    assert all(rc == "0" for _, rc in steps), text
    [(same, total)] = re.findall(r"knorm by name vs own code: (\d+)/(\d+)", text)
    assert same == total != "0", text
    assert "identical generations, float32 vs committed cpu float32" in text and text.rstrip().endswith(str(out))
