"""The README's map of the repository is complete: every module and folder a reader may open is named."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
MAP = README[README.index("## Where things are"):README.index("## Common commands")]

FILES = sorted([p.name for p in [*(ROOT / "benchmark").glob("*.py"),
                                 *(ROOT / "benchmark").glob("*/*.py")] if p.name != "__init__.py"]
               + [p.name for p in (ROOT / "scripts").iterdir() if p.suffix in (".py", ".sh")]
               + [p.name for p in (ROOT / "perf").glob("*.py") if p.name != "__init__.py"]
               + [p.name for p in (ROOT / "docs").glob("*.md")])


@pytest.mark.parametrize("name", FILES)
def test_readme_map_names_every_file(name):
    assert name in MAP, f"README's 'Where things are' does not mention {name}"


@pytest.mark.parametrize("link", ["leaderboard/README.md", "CONTRIBUTING.md", "docs/measurements.md"])
def test_readme_links_results_contributing_and_measurements(link):
    assert f"]({link})" in README
