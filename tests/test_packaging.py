"""Packaging: ranges in pyproject (a GPU user's torch is kept), exact pins only in the CPU
constraints, optional parts as extras that fail with a one-line message naming the extra."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from benchmark import extras

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _reqs(lines: list[str]) -> dict[str, Requirement]:
    return {(r := Requirement(line)).name.lower(): r for line in lines}


def test_core_dependencies_are_ranges_that_admit_a_newer_torch():
    core = _reqs(PROJECT["dependencies"])
    assert not [r for r in core.values() if any(s.operator in ("==", "===") for s in r.specifier)]
    assert core["torch"].specifier.contains("2.13.0") and core["torch"].specifier.contains("2.14.0")
    assert not core["torch"].specifier.contains("3.0.0")
    for optional in ("lm-eval", "matplotlib", "ray"):  # only the extras pull these
        assert optional not in core


def test_extras_and_dev_pulls_every_extra():
    opt = PROJECT["optional-dependencies"]
    assert set(opt) >= {"lm-eval", "plots", "ray", "dev"}
    assert "lm-eval" in _reqs(opt["lm-eval"]) and "matplotlib" in _reqs(opt["plots"]) and "ray" in _reqs(opt["ray"])
    dev = _reqs(opt["dev"])
    assert "pytest" in dev and dev["lorakv-bench"].extras >= {"lm-eval", "plots", "ray"}
    assert set(extras.EXTRAS.values()) <= set(opt)  # every extra a message names exists


def test_exact_pins_live_in_the_constraints_used_by_setup():
    lines = [line.split("#")[0].strip() for line in (ROOT / "constraints-cpu.txt").read_text().splitlines()]
    pins = _reqs([line for line in lines if line])
    assert str(pins["torch"].specifier) == "==2.13.0" and str(pins["matplotlib"].specifier).startswith("==")
    core = _reqs(PROJECT["dependencies"]) | _reqs(PROJECT["optional-dependencies"]["plots"])
    for name, pin in pins.items():  # every pin lies inside the declared range
        version = str(pin.specifier).removeprefix("==")
        if name in core:
            assert core[name].specifier.contains(version), name
    assert "-c constraints-cpu.txt" in (ROOT / "scripts" / "setup.sh").read_text()


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(extras.MissingExtra, match=r"needs the 'plots' extra: pip install 'lorakv-bench\[plots\]'"):
        extras.require("matplotlib", "the leaderboard's plots")


def test_leaderboard_without_plots_extra_is_one_line_error(monkeypatch, tmp_path, capsys):
    from benchmark.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc = main(["leaderboard", "--results", str(tmp_path / "r"), "--out", str(tmp_path / "lb" / "README.md"),
               "--plots", str(tmp_path / "lb" / "plots")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "'plots' extra" in err


def test_lm_eval_script_without_extra_is_one_line_error(monkeypatch, capsys):
    from benchmark.cli import lm_eval_main

    monkeypatch.setitem(sys.modules, "lm_eval", None)
    monkeypatch.delitem(sys.modules, "benchmark.integrations.lm_eval_model", raising=False)
    assert lm_eval_main() == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'lm-eval' extra" in err


def test_every_data_file_of_the_package_ships_in_the_wheel():
    """Each tracked non-Python file under benchmark/ (specs, schemas, the shipped data, task YAMLs)
    matches a package-data pattern, so an installed wheel has what a checkout has."""
    import subprocess

    import tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["benchmark"]
    tracked = subprocess.run(["git", "ls-files", "benchmark"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    data = {f.removeprefix("benchmark/") for f in tracked if not f.endswith(".py")}
    assert data, "git ls-files found no data files"
    shipped = {q.relative_to(ROOT / "benchmark").as_posix() for p in patterns for q in (ROOT / "benchmark").glob(p)}
    assert sorted(data - shipped) == []
