"""Superseded specs: an earlier version of a tier's spec is kept verbatim so that results made under
it still validate, verify and show, in sections of their own, until they are re-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.board.leaderboard import _tier_order, group_entries, load_entries, tier_note
from benchmark.paths import sha256_file
from benchmark.protocol.spec import (
    SUPERSEDED_DIR,
    TIERS,
    SpecError,
    current_version,
    known_spec_hashes,
    load_spec,
    spec_name,
    superseded_versions,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "leaderboard" / "results"


@pytest.mark.parametrize("version", superseded_versions())
def test_a_superseded_spec_is_a_whole_earlier_spec(version: str) -> None:
    """Named by its version, of a shipped tier, not the tier's current version, and its data files
    (which it may share with the current spec) are there with the sha256 it pins."""
    spec = load_spec(version)
    assert spec.spec_version == version == (SUPERSEDED_DIR / f"{version}.yaml").stem
    assert spec.tier in TIERS and current_version(spec.tier) != version
    assert known_spec_hashes()[spec.hash] == version
    for ds in spec.datasets:
        for f in (ds.test, ds.dev):
            if f is not None:
                assert sha256_file(f.path) == f.sha256, f.path


def test_spec_name_picks_a_results_spec() -> None:
    for tier in TIERS:
        assert spec_name({"tier": tier, "spec_version": current_version(tier)}) == tier
    for version in superseded_versions():
        assert spec_name({"tier": load_spec(version).tier, "spec_version": version}) == version
    with pytest.raises(SpecError, match="superseded"):
        load_spec("mini-0.1")


def test_results_of_a_superseded_spec_have_their_own_sections() -> None:
    """Every committed result is shown under its spec: the current tier's sections, or a section of
    its superseded version after every tier's, marked so."""
    entries = load_entries(RESULTS)
    for path in RESULTS.rglob("*.json"):
        data = json.loads(path.read_text())
        rel = path.relative_to(RESULTS).as_posix()
        (entry,) = [e for e in entries if e.source == rel]
        assert entry.tier == spec_name(data) and entry.spec_version == data["spec_version"]
    for key, group in group_entries(entries).items():
        assert len({e.spec_version for e in group}) == 1, key
        if key[0] in superseded_versions():
            assert _tier_order(key[0]) > max(_tier_order(t) for t in TIERS)
            assert "Superseded spec" in tier_note(key[0]) and current_version(load_spec(key[0]).tier) in tier_note(
                key[0])
        else:
            assert "Superseded" not in tier_note(key[0])


def _superseded_results() -> list[Path]:
    return sorted(p for p in RESULTS.rglob("*.json") if spec_name(json.loads(p.read_text())) in superseded_versions())


@pytest.mark.skipif(not _superseded_results(), reason="no committed result of a superseded spec")
def test_publish_refuses_a_result_of_a_superseded_spec(tmp_path, capsys) -> None:
    """A result made under a superseded spec is kept where it is, but never added anew: publish names
    the field and the current version, copies nothing and exits 1."""
    from benchmark.cli import main

    src = _superseded_results()[0]
    data = json.loads(src.read_text())
    assert main(["publish", str(src), "--results", str(tmp_path / "out"), "--submissions",
                 str(ROOT / "submissions")]) == 1
    err = capsys.readouterr().err
    assert f"field 'spec_version': '{data['spec_version']}' is superseded" in err
    assert current_version(data["tier"]) in err and not (tmp_path / "out").exists()
