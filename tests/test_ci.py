"""The CI workflow runs the README's test command (.ci/run) and verifies changed result files."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _steps():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    return [s for job in workflow["jobs"].values() for s in job["steps"]]


def test_workflow_runs_the_same_command_as_ci_run():
    runs = [s.get("run", "").strip() for s in _steps()]
    assert "bash .ci/run" in runs
    assert "pytest" in (ROOT / ".ci" / "run").read_text()


def test_workflow_verifies_changed_result_files():
    verify = [s for s in _steps() if "-- verify --seed" in s.get("run", "")]
    assert verify and "leaderboard/results" in verify[0]["run"] and '--seed "$BASE_SHA"' in verify[0]["run"]
    assert "LORAKV_REQUIRE_SANDBOX=1" in verify[0]["run"]
    assert verify[0].get("if") == "github.event_name == 'pull_request'"


def test_pull_request_template_exists():
    text = (ROOT / ".github" / "PULL_REQUEST_TEMPLATE.md").read_text()
    assert "lorakv-bench publish" in text and "lorakv-bench verify" in text


def test_workflow_writes_the_leaderboard_changes_to_the_job_summary():
    """On a pull request that changes result files, `leaderboard --summary` (tests/test_page.py), run
    with the base commit's code, writes the new or changed entries to the job summary."""
    (step,) = [s for s in _steps() if "--summary" in s.get("run", "")]
    assert step.get("if") == "github.event_name == 'pull_request'"
    run = " ".join(step["run"].replace("\\\n", " ").split())  # one line per command
    assert 'git diff --quiet "$BASE_SHA" "$HEAD_SHA" -- leaderboard/results' in run
    assert 'trusted --rev "$BASE_SHA" --python .venv/bin/python -- leaderboard --results' in run
    assert '"$BASE_SHA:leaderboard/leaderboard.json"' in run and '>> "$GITHUB_STEP_SUMMARY"' in run


def test_ci_run_installs_chromium_for_the_page_tests():
    text = (ROOT / ".ci" / "run").read_text()
    assert "command -v chromium" in text and "apt-get install -y -qq chromium" in text
