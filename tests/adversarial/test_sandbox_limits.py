"""Submission code that tries to hold or break a run from the sandbox: a plan over budget, a press
that sleeps, a process that exits, a reply without end. Each stops the run with one line."""

from __future__ import annotations

import textwrap
import time

import pytest
from attack_kit import KW, PLAIN_PRESS, submission

from benchmark.protocol import runner as R
from benchmark.trust.worker import WorkerError

NO_EVICTION = """
    import torch
    import benchmark.protocol.plan

    # keep every entry, whatever the budget says
    benchmark.protocol.plan.plan_from_scores = lambda scores, n_doc, rho, budget: torch.ones(
        len(scores.for_rho(rho)), scores.for_rho(rho)[0].shape[0], n_doc, dtype=torch.bool)
    """


def test_a_plan_that_keeps_more_than_the_budget_stops_the_run(tmp_path, data, tiny, capsys):
    from benchmark.cli import main

    folder = submission(tmp_path, "keepall", data_file=data, press="import keepall\n" + textwrap.dedent(PLAIN_PRESS),
                        extra={"keepall.py": NO_EVICTION})
    rc = main(["evaluate", str(folder), "--out", str(tmp_path / "runs"), "--rhos", "0", "0.5", "--conditions", "base"],
              loaders=tiny)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(err) == 1 and "budget is exactly" in err[0], err


def test_a_sleeping_press_is_stopped_with_one_line(tmp_path, data, tiny):
    folder = submission(tmp_path, "sleeper", data_file=data,
                        press="import time\ntime.sleep(600)\n" + textwrap.dedent(PLAIN_PRESS))
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match=r"took longer than 3 s.*--worker-timeout") as info:
        R.evaluate(folder, out=tmp_path / "runs", worker_timeout=3, loaders=tiny, **KW)
    assert "\n" not in str(info.value) and time.monotonic() - t0 < 60


def test_validate_gives_a_sleeping_press_its_time_limit(tmp_path, data):
    from benchmark.trust.conformance import check_submission_isolated

    folder = submission(tmp_path, "sleeper", data_file=data,
                        press="import time\ntime.sleep(600)\n" + textwrap.dedent(PLAIN_PRESS))
    t0 = time.monotonic()
    assert check_submission_isolated(folder, timeout=5) == [
        f"{folder}: the conformance check did not finish within 5 s"]
    assert time.monotonic() - t0 < 30


def test_a_submission_that_exits_in_the_sandbox_is_a_one_line_failure(tmp_path, data, tiny, capsys):
    from benchmark.cli import main

    folder = submission(tmp_path, "quitter", data_file=data, press="import sys\nsys.exit(0)\n")
    rc = main(["evaluate", str(folder), "--out", str(tmp_path / "runs"), "--rhos", "0", "--conditions", "base"],
              loaders=tiny)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(err) == 1 and "sys.exit" in err[0], err


def test_an_endless_reply_is_refused_not_read_into_memory(tmp_path, data, tiny, monkeypatch):
    """A press that writes one enormous line on the protocol's stream: the harness stops reading at
    its limit and fails with one line, instead of holding whatever the sandbox sends."""
    import benchmark.trust.worker as W

    monkeypatch.setattr(W, "MAX_REPLY_CHARS", 1 << 16)
    flood = textwrap.dedent("""
        import os, stat

        for fd in range(3, 20):  # the protocol's stream: a pipe the process may write
            try:
                if stat.S_ISFIFO(os.fstat(fd).st_mode):
                    os.write(fd, b"x" * (1 << 20))
                    break
            except OSError:
                continue
        """)
    folder = submission(tmp_path, "flood", data_file=data, press="import flood\n" + textwrap.dedent(PLAIN_PRESS),
                        extra={"flood.py": flood})
    with pytest.raises(WorkerError, match="longer than 65536 characters"):
        R.evaluate(folder, out=tmp_path / "runs", loaders=tiny, **KW)
