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
