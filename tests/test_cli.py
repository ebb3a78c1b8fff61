"""What the command line prints around the work: its version, counts, success lines, Ctrl-C."""

from __future__ import annotations

import json

import pytest

from benchmark import __version__
from benchmark.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"lorakv-bench {__version__}"


def test_one_problem_is_singular(tmp_path, capsys):
    f = tmp_path / "docs.jsonl"
    f.write_text("{not json}\n")
    assert main(["validate-data", str(f)]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == f"INVALID {f}: 1 problem"

    r = tmp_path / "r.json"
    r.write_text(json.dumps({"format": "nope"}))
    assert main(["validate", str(r)]) == 1
    assert capsys.readouterr().out.strip() == f"FAIL {r} (1 problem)"


def test_leaderboard_check_says_so_when_up_to_date(monkeypatch, capsys):
    import benchmark.board.leaderboard as L

    monkeypatch.setattr(L, "stale_files", lambda *a, **k: [])
    assert main(["leaderboard", "--check"]) == 0
    assert "up to date" in capsys.readouterr().out


@pytest.mark.parametrize("argv, target", [
    (["evaluate", "submissions/snapkv", "--docs", "1"], "benchmark.protocol.runner.evaluate"),
    (["verify", "r.json", "--seed", "1"], "benchmark.trust.verify.verify_result"),
], ids=["evaluate", "verify"])
def test_ctrl_c_ends_with_one_line(argv, target, monkeypatch, capsys):
    from pathlib import Path

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    monkeypatch.setattr(target, interrupted)
    assert main(argv) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted; re-run the same command to resume"


def test_validate_verbose_lists_the_checks(tmp_path, capsys):
    from benchmark.trust.conformance import RESULT_CHECKS

    r = tmp_path / "r.json"
    r.write_text(json.dumps({"format": "nope"}))
    assert main(["validate", "-v", str(r)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"FAIL {r} (1 problem)"
    assert out[1:] == [f"  check: {c}" for c in RESULT_CHECKS] and "  check: check_cells" in out


def test_smoke_extracts_and_scores_with_the_spec(capsys):
    """smoke reports the answer its tier's results would hold: the paper spec takes the last line of
    a generation that goes on after the answer, where the mini spec takes the first."""
    from benchmark.cli import smoke_answer
    from benchmark.protocol.datasets import Question
    from benchmark.protocol.spec import load_spec

    q = Question(id="q", question="Where?", answers=("Tollervik",))
    generation = " Tollervik\nIt is named in the first part."
    paper, mini = load_spec("paper"), load_spec("mini")
    assert "A: 'It is named in the first part.'" in smoke_answer(paper, q, generation, paper.prompt.answer_prefix)
    assert "A: 'Tollervik'" in smoke_answer(mini, q, generation, mini.prompt.answer_prefix)
    assert "'rouge_l': 100.0" in smoke_answer(mini, q, generation, mini.prompt.answer_prefix)
