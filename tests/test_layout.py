"""The package's layout: a subpackage per role, the import paths the docs name still work."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "benchmark"
TOP_LEVEL = {"__init__", "cli", "config", "extras", "paths"}
SUBPACKAGES = ["protocol", "trust", "board", "integrations", "paper"]
ALIASES = {
    "benchmark.lm_eval_model": "benchmark.integrations.lm_eval_model",
    "benchmark.lm_eval_tasks": "benchmark.integrations.lm_eval_tasks",
    "benchmark.press_catalog": "benchmark.protocol.press_catalog",
}


def test_the_top_level_holds_only_the_cli_the_rules_the_paths_and_the_aliases():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    aliases = {old.rpartition(".")[2] for old in ALIASES}
    assert modules == TOP_LEVEL | aliases, "a new module belongs in one of " + ", ".join(SUBPACKAGES)
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} == set(SUBPACKAGES) | {"data"}


@pytest.mark.parametrize("old, new", sorted(ALIASES.items()))
def test_an_alias_is_the_moved_module_itself(old, new):
    if old.startswith("benchmark.lm_eval"):
        pytest.importorskip("lm_eval")
    assert importlib.import_module(old) is importlib.import_module(new)


def test_python_m_of_the_old_catalog_path_regenerates_the_table(tmp_path):
    from benchmark.protocol.press_catalog import markdown_table

    f = tmp_path / "CONTRIBUTING.md"
    f.write_text("<!-- press table: x -->\n| old |\n<!-- end press table -->\n")
    out = subprocess.run([sys.executable, "-m", "benchmark.press_catalog", str(f)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{f}: table regenerated\n" and markdown_table() in f.read_text()
