"""CI steps that judge a pull request cannot be changed by the submission code that ran before them.

The attack: a press's import-time code, run by pytest, appended an always-ok ``verify_result`` to
``benchmark/verify.py``; the next step (``lorakv-bench verify``) imported it, and the pull request's
diff showed only ``submissions/<name>/``. ``scripts/ci_guard.py`` is exercised here on real git
repositories in temporary folders.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GUARD = ROOT / "scripts" / "ci_guard.py"

HONEST_VERIFY = "MARK = 'committed'\n\ndef verify_result(path):\n    return False\n"
CLI = ("import sys\nimport benchmark.verify as v\n\nif __name__ == '__main__':\n"
       "    print(f'verify from {v.__file__}: {v.MARK}')\n    sys.exit(3)\n")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def guard(repo: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the guard sets what the trusted run imports
    return subprocess.run([sys.executable, "-I", str(GUARD), "--repo", str(repo), *args], cwd=cwd or repo,
                          capture_output=True, text=True, env=env, timeout=120)


def commit(repo: Path, message: str = "commit") -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


def _prediction(q: int, rouge: float) -> dict:
    return {"doc_id": "d0", "question_id": f"d0-q{q}", "rho": 0.5, "condition": "base", "generation": "Paris",
            "prediction": "Paris", "kv_entries": 100, "rouge_l": rouge, "exact_match": rouge}


def result(sub_hash: str = "aaaa", spec_hash: str = "ssss", scores=(100.0, 0.0)) -> dict:
    return {"submission": {"name": "s", "hash": sub_hash}, "spec_hash": spec_hash,
            "predictions": [_prediction(q, r) for q, r in enumerate(scores)]}


RESULT = "leaderboard/results/s/mini/m/d.json"


@pytest.fixture
def repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    (repo / "benchmark").mkdir(parents=True)
    (repo / "benchmark" / "__init__.py").write_text("")
    (repo / "benchmark" / "verify.py").write_text(HONEST_VERIFY)
    (repo / "benchmark" / "cli.py").write_text(CLI)
    (repo / "submissions" / "s").mkdir(parents=True)
    (repo / "submissions" / "s" / "submission.yaml").write_text("name: s\n")
    (repo / RESULT).parent.mkdir(parents=True)
    (repo / RESULT).write_text(json.dumps(result()))
    (repo / ".gitignore").write_text(".venv/\n__pycache__/\n/.cache-ci/\n")
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "ci@example.org")
    git(repo, "config", "user.name", "ci")
    commit(repo, "base")
    return repo


def tamper(repo: Path) -> None:
    """What the press did while pytest imported it."""
    with open(repo / "benchmark" / "verify.py", "a") as f:
        f.write("\nMARK = 'tampered'\n\ndef verify_result(path):\n    return True\n")


# ------------------------------------------------------------------ clean


def test_clean_passes_on_an_untouched_checkout_with_ignored_outputs(repo):
    rev = git(repo, "rev-parse", "HEAD").strip()
    (repo / ".venv").mkdir()
    (repo / ".venv" / "python").write_text("")
    (repo / ".cache-ci").mkdir()
    (repo / ".cache-ci" / "model.bin").write_bytes(b"\0")
    proc = guard(repo, "clean", "--rev", rev, "--step", "pytest")
    assert proc.returncode == 0, proc.stderr
    assert "unchanged after pytest" in proc.stdout


PRESS = """\
from pathlib import Path

with open(Path(__file__).parents[2] / "benchmark" / "verify.py", "a") as f:
    f.write("\\ndef verify_result(path):\\n    return True\\n")
"""


def test_clean_names_a_tracked_file_changed_by_submission_code(repo):
    """A press whose import-time code rewrites verify.py, imported in a child as pytest's check does."""
    (repo / "submissions" / "s" / "press.py").write_text(PRESS)
    commit(repo, "the pull request: submissions/s only")
    rev = git(repo, "rev-parse", "HEAD").strip()
    subprocess.run([sys.executable, "-c", "import runpy, sys; runpy.run_path(sys.argv[1])",
                    str(repo / "submissions" / "s" / "press.py")], check=True)
    proc = guard(repo, "clean", "--rev", rev, "--step", "pytest")
    assert proc.returncode == 1
    assert "after pytest, 1 path(s) differ" in proc.stderr
    assert "modified benchmark/verify.py" in " ".join(proc.stderr.split())


def test_clean_is_not_fooled_by_the_index(repo):
    """skip-worktree hides a change from git status; the guard reads the commit, not the index."""
    rev = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "update-index", "--skip-worktree", "benchmark/verify.py")
    tamper(repo)
    assert git(repo, "status", "--porcelain") == ""
    proc = guard(repo, "clean", "--rev", rev)
    assert proc.returncode == 1 and "benchmark/verify.py" in proc.stderr


def test_clean_is_not_fooled_by_a_moved_head(repo):
    """Committing the change moves HEAD; the guard compares with the commit id recorded before."""
    rev = git(repo, "rev-parse", "HEAD").strip()
    tamper(repo)
    commit(repo, "looks fine")
    proc = guard(repo, "clean", "--rev", rev)
    assert proc.returncode == 1 and "modified benchmark/verify.py" in " ".join(proc.stderr.split())


def test_clean_names_new_and_removed_files_despite_info_exclude(repo):
    rev = git(repo, "rev-parse", "HEAD").strip()
    (repo / "benchmark" / "sitecustomize.py").write_text("print('hi')\n")
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "exclude").write_text("sitecustomize.py\n")  # not part of the commit: does not count
    (repo / "submissions" / "s" / "submission.yaml").unlink()
    proc = guard(repo, "clean", "--rev", rev)
    assert proc.returncode == 1
    words = " ".join(proc.stderr.split())
    assert "new benchmark/sitecustomize.py" in words and "removed submissions/s/submission.yaml" in words


def test_clean_refuses_an_unknown_commit_in_one_line(repo):
    proc = guard(repo, "clean", "--rev", "no-such-branch")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"ci_guard: error: no-such-branch: not a commit of the repository at {repo.resolve()}"


# ------------------------------------------------------------------ trusted


def test_trusted_runs_the_committed_benchmark_not_the_tampered_checkout(repo):
    rev = git(repo, "rev-parse", "HEAD").strip()
    tamper(repo)
    # `python -m` from the checkout would import the tampered file (the working directory comes first)
    plain = subprocess.run([sys.executable, "-m", "benchmark.cli"], cwd=repo, capture_output=True, text=True)
    assert "tampered" in plain.stdout
    proc = guard(repo, "trusted", "--rev", rev, "--python", sys.executable, "--", "verify", "x.json")
    assert proc.returncode == 3, proc.stderr  # the command's own exit code
    assert ": committed" in proc.stdout and "lorakv-trusted-" in proc.stdout
    copy = Path(proc.stdout.split("verify from ")[1].split(":")[0]).parents[1]
    assert copy.name.startswith("lorakv-trusted-") and not copy.exists()  # removed afterwards


def test_trusted_fails_when_the_commit_has_no_benchmark(tmp_path):
    repo = tmp_path / "empty"
    repo.mkdir()
    (repo / "README").write_text("x\n")
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "ci@example.org")
    git(repo, "config", "user.name", "ci")
    rev = commit(repo)
    proc = guard(repo, "trusted", "--rev", rev, "--", "validate")
    assert proc.returncode == 2 and "has no benchmark/" in proc.stderr


# ------------------------------------------------------------------ results-unchanged


def _rewrite(repo: Path, data: dict) -> None:
    (repo / RESULT).write_text(json.dumps(data))


def test_results_unchanged_passes_when_scores_are_kept(repo):
    base = git(repo, "rev-parse", "HEAD").strip()
    data = result()
    data["created"] = "reformatted"  # not a score
    _rewrite(repo, data)
    proc = guard(repo, "results-unchanged", "--base", base)
    assert proc.returncode == 0, proc.stderr


def test_results_unchanged_names_a_changed_score_under_the_same_hashes(repo):
    base = git(repo, "rev-parse", "HEAD").strip()
    _rewrite(repo, result(scores=(100.0, 100.0)))
    commit(repo, "better numbers")
    proc = guard(repo, "results-unchanged", "--base", base)
    assert proc.returncode == 1
    fail = proc.stderr.strip().splitlines()
    assert len(fail) == 1 and fail[0].startswith(f"FAIL {RESULT}: prediction (doc d0, question d0-q1, rho 0.5, base): "
                                                 "rouge_l 0.0 -> 100.0, with the same submission hash")


@pytest.mark.parametrize("change, words", [
    (lambda d: d["predictions"].pop(), "question d0-q1, rho 0.5, base) was removed"),
    (lambda d: d["predictions"].append(_prediction(2, 100.0)), "question d0-q2, rho 0.5, base) was added"),
    (lambda d: d["predictions"][0].update(generation="London"), "generation 'Paris' -> 'London'"),
])
def test_results_unchanged_names_the_changed_prediction(repo, change, words):
    base = git(repo, "rev-parse", "HEAD").strip()
    data = result()
    change(data)
    _rewrite(repo, data)
    proc = guard(repo, "results-unchanged", "--base", base)
    assert proc.returncode == 1 and words in proc.stderr


def test_results_may_change_with_a_new_submission_or_spec_hash(repo):
    base = git(repo, "rev-parse", "HEAD").strip()
    _rewrite(repo, result(sub_hash="bbbb", scores=(0.0, 0.0)))
    assert guard(repo, "results-unchanged", "--base", base).returncode == 0
    _rewrite(repo, result(spec_hash="tttt", scores=(0.0, 0.0)))
    assert guard(repo, "results-unchanged", "--base", base).returncode == 0


def test_removing_a_result_file_is_flagged(repo):
    base = git(repo, "rev-parse", "HEAD").strip()
    (repo / RESULT).unlink()
    proc = guard(repo, "results-unchanged", "--base", base)
    assert proc.returncode == 1 and f"FAIL {RESULT}: removed" in proc.stderr


# ------------------------------------------------------------------ where CI uses them


def _steps() -> list[dict]:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    return [s for job in workflow["jobs"].values() for s in job["steps"]]


def test_ci_run_checks_the_tree_after_each_pytest_and_judges_results_with_committed_code():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    body = [line for line in lines if line and not line.startswith("#")]
    for i, line in enumerate(body):
        if "-m pytest" in line:
            assert body[i + 1].startswith('"${guard[@]}" clean --rev "$rev"'), f"no clean check after: {line}"
    assert any("git cat-file blob \"$rev:scripts/ci_guard.py\"" in line for line in body)
    assert any('trusted --rev "$rev"' in line and "validate" in line for line in body)
    assert any("results-unchanged" in line for line in body)
    # bash reads a script as it runs it: a press could rewrite the rest of .ci/run during pytest
    # unless the whole body is parsed first (one function, called by the last line, then exit)
    assert body[-1] == 'main "$@"; exit $?'


def test_workflow_judges_the_pull_request_with_the_base_commits_code():
    steps = {s.get("name", ""): s.get("run", "") for s in _steps()}
    verify = next(run for run in steps.values() if " verify " in run)
    assert "trusted --rev" in verify and "github.event.pull_request.base.sha" in verify
    assert "clean" in verify  # after the verify command itself, which runs submission code
    assert any("results-unchanged --base" in run and "pull_request.base.sha" in run for run in steps.values())
    assert any("trusted --rev" in run and "validate" in run for run in steps.values())
