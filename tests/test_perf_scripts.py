"""Each speed script in perf/ runs end to end on the tiny random model (``--tiny``) with its smallest
arguments and prints its figures: the tables' headers and rows, every figure finite. A script
that calls something the package no longer has fails here, not at its next real run."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest
import torch

from benchmark.paths import OFFLINE_ENV, TOKENIZERS_ENV

PERF = Path(__file__).resolve().parents[1] / "perf"


@pytest.fixture
def run_script(monkeypatch, capsys):
    """``run_script(name, *argv)``: perf/<name>.py's ``main(argv)`` in this process; its stdout."""
    for var, value in (OFFLINE_ENV | TOKENIZERS_ENV).items():  # what the script's set_offline() would set
        monkeypatch.setenv(var, value)

    def run(name: str, *argv: str) -> str:
        module_name = f"perf_{name}"
        spec = importlib.util.spec_from_file_location(module_name, PERF / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, module_name, module)
        spec.loader.exec_module(module)
        capsys.readouterr()
        module.main(["--tiny", *argv])
        return capsys.readouterr().out

    return run


def table(out: str, headers: list[str]) -> dict[str, list[str]]:
    """The rows of the GitHub-style table with these ``headers`` in ``out``, by first cell."""
    lines = out.splitlines()
    start = next((i for i, line in enumerate(lines) if _cells(line) == headers), None)
    assert start is not None, f"no table with headers {headers} in:\n{out}"
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = _cells(line)
        assert len(cells) == len(headers), line
        rows[cells[0]] = cells[1:]
    return rows


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def finite(cell: str) -> float:
    value = float(cell.rstrip("%x"))
    assert math.isfinite(value), cell
    return value


def test_all_scripts_have_a_test():
    tested = {name.removeprefix("test_") for name in globals() if name.startswith("test_")}
    assert {p.stem for p in PERF.glob("*.py")} <= tested


def test_stages(run_script):
    out = run_script("stages", "--questions", "1", "--rhos", "0.5", "1", "--max-steps", "1",
                     "--threads", str(torch.get_num_threads()))
    rows = table(out, ["stage", "seconds", "tokens", "tokens/s", "GFLOP/s", "of float32 peak", "floor s"])
    assert list(rows) == ["training", "prefill", "scoring", "eviction", "decoding", "total"]
    for stage, (seconds, tokens, *_rest) in rows.items():
        assert finite(seconds) > 0, stage
    for stage in ("training", "prefill", "decoding"):  # the stages the model runs: tokens and FLOPs counted
        seconds, tokens, rate, gflops, of_peak, floor = rows[stage]
        assert int(tokens) > 0 and finite(gflops) > 0 and 0 < finite(of_peak) and finite(floor) > 0, stage
    assert "8 decode rows (questions x rhos [0.5, 1.0] x 4 conditions)" in out


def test_decode_ab(run_script):
    out = run_script("decode_ab", "--modes", "plain", "copy", "shared", "--questions", "1", "--rhos", "0.5", "1",
                     "--repeats", "1", "--steps", "1")
    assert "1 questions x rhos [0.5, 1.0] x 4 conditions = 8 rows" in out
    for other in ("copy", "shared"):
        m = re.search(rf"plain/{other} decode-time ratio per repeat: \[(.+)\]; generations identical: 8/8", out)
        assert m, out
        assert finite(m.group(1)) > 0


def test_dtype_ab(run_script):
    out = run_script("dtype_ab", "--questions", "1", "--rhos", "0", "0.9", "--train-steps", "1")
    assert re.search(r"F\.linear 48x64 -> 128, \d+ threads: float32 [\d.]+ GFLOP/s, bfloat16 [\d.]+ GFLOP/s", out)
    rows = table(out, ["stage", "float32 s", "bfloat16 s", "float32/bfloat16"])
    assert list(rows) == ["prefill_s", "evict_s", "decode_s", "train_step_s"]
    assert all(finite(cell) > 0 for cells in rows.values() for cell in cells)
    assert re.search(r"generations identical: \d/2", out)
    assert re.search(r"rho 0\.9: mean ROUGE-L float32 [\d.]+, bfloat16 [\d.]+; identical \d/1", out)


def test_throughput(run_script):
    out = run_script("throughput", "--in-process", "--docs", "1", "--questions", "1", "--rhos", "0.5",
                     "--max-new-tokens", "2")
    rows = table(out, ["method", "wall s", "prefills", "decoded tokens", "tokens/s", "peak RSS MB"])
    assert list(rows) == ["kvpress", "naive", "ours"]
    assert all(finite(cell) > 0 for cells in rows.values() for cell in cells)
    assert rows["ours"][1] == "2" and rows["naive"][1] == "2"  # one document of each mini dataset
    assert "answers identical to kvpress's pipeline: 2/2" in out
    assert re.search(r"\(naive\)/\(ours\) wall-time ratio: [\d.]+", out)


def test_dora_step(run_script):
    out = run_script("dora_step", "--steps", "1", "--rounds", "1")
    m = re.search(r"peft ([\d.]+), direct ([\d.]+), ratio ([\d.]+)x; largest loss difference (\S+)", out)
    assert m, out
    peft, direct, ratio, diff = map(finite, m.groups())
    assert peft > 0 and direct > 0 and ratio > 0
    assert diff < 1e-4  # the direct DoRA weight is the same update


def test_training(run_script):
    out = run_script("training", "--epochs", "1", "--max-steps", "1")
    headers = ["document", "batching", "examples", "steps", "example tokens", "forward tokens", "seconds",
               "example tokens/s", "final loss"]
    lines = [_cells(line) for line in out.splitlines() if line.startswith("| mini-")]
    assert len(lines) == 4, out  # 1 document of each mini dataset, padded and with the prefix shared
    table(out, headers)  # the header is there
    for doc in {cells[0] for cells in lines}:
        plain, shared = (next(c for c in lines if c[0] == doc and c[1] == way) for way in ("plain padded",
                                                                                           "shared prefix"))
        assert all(finite(cell) > 0 for cell in plain[2:] + shared[2:])
        assert int(shared[5]) < int(plain[5])  # fewer forward tokens with the prefix shared
        assert abs(finite(plain[8]) - finite(shared[8])) < 1e-3  # the same loss
