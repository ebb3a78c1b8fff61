"""Superseded specs: an earlier version of a tier's spec is kept verbatim so that results made under
it still validate, verify and show, in sections of their own, until they are re-run; when none is
left, the superseded spec goes too.

The mechanism is tested on an earlier mini spec built here (``superseded``): the current spec with
another version, ρ grid and data (the same documents with fewer questions, as
``generate_mini --questions`` writes them), in a superseded folder of its own. What is committed is
checked against the rule in :func:`test_a_superseded_spec_ships_while_results_made_under_it_remain`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from benchmark.board.leaderboard import _tier_order, group_entries, load_entries, render_markdown, tier_note
from benchmark.data import generate_mini
from benchmark.paths import sha256_file
from benchmark.protocol import spec as spec_module
from benchmark.protocol.spec import (
    SPEC_DIR,
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
OLD = "mini-0.9"  # the earlier mini spec the tests build (a made-up version)
OLD_RHOS = [0.0, 0.5, 0.9, 1.0]
OLD_QUESTIONS = (6, 4)  # evaluation questions per document, (covered, uncovered)


@pytest.fixture()
def superseded(tmp_path, monkeypatch) -> Path:
    """``OLD`` in a superseded folder of its own, on data of its own; returns that data folder."""
    data = tmp_path / "old-data"
    generate_mini.write_all(data, OLD_QUESTIONS)
    raw = yaml.safe_load((SPEC_DIR / "mini.yaml").read_text())
    for ds in raw["datasets"]:
        for split in ("test", "dev"):
            path = data / f"{ds['id']}.{split}.jsonl"
            ds[split] = {"path": str(path), "sha256": sha256_file(path)}
    folder = tmp_path / "superseded"
    folder.mkdir()
    (folder / f"{OLD}.yaml").write_text(yaml.safe_dump(raw | {"spec_version": OLD, "rhos": OLD_RHOS}, sort_keys=False))
    monkeypatch.setattr(spec_module, "SUPERSEDED_DIR", folder)
    return data


def _assert_whole_earlier_spec(version: str) -> None:
    """Named by its version, of a shipped tier, not the tier's current version, known by its hash, and
    its data files (which it may share with the current spec) are there with the sha256 it pins."""
    spec = load_spec(version)
    assert spec.spec_version == version == (spec_module.SUPERSEDED_DIR / f"{version}.yaml").stem
    assert spec.tier in TIERS and current_version(spec.tier) != version
    assert known_spec_hashes()[spec.hash] == version
    assert known_spec_hashes()[load_spec(spec.tier).hash] == current_version(spec.tier)
    for ds in spec.datasets:
        for f in (ds.test, ds.dev):
            if f is not None:
                assert sha256_file(f.path) == f.sha256, f.path


def test_a_superseded_spec_is_a_whole_earlier_spec(superseded) -> None:
    assert superseded_versions() == (OLD,)
    _assert_whole_earlier_spec(OLD)
    old, current = load_spec(OLD), load_spec("mini")
    assert list(old.rhos) == OLD_RHOS != list(current.rhos) and old.hash != current.hash
    assert {f.path.parent for ds in old.datasets for f in (ds.test, ds.dev)} == {superseded}


def test_a_superseded_spec_ships_while_results_made_under_it_remain() -> None:
    """What is committed follows the rule: every result is of its tier's current spec or of a shipped
    superseded one, and a superseded spec ships only while some result was made under it."""
    results = [json.loads(p.read_text()) for p in sorted(RESULTS.rglob("*.json"))]
    assert results
    for data in results:
        assert load_spec(spec_name(data)).spec_version == data["spec_version"], (data["tier"], data["spec_version"])
    assert set(superseded_versions()) == {spec_name(data) for data in results} - set(TIERS)
    for version in superseded_versions():
        _assert_whole_earlier_spec(version)


def test_without_a_superseded_spec_only_the_current_ones_are_known(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(spec_module, "SUPERSEDED_DIR", tmp_path / "absent")
    assert superseded_versions() == ()
    assert sorted(known_spec_hashes().values()) == sorted(current_version(t) for t in TIERS)
    assert all(spec_name({"tier": t, "spec_version": current_version(t)}) == t for t in TIERS)
    assert not any("Superseded" in tier_note(t) for t in TIERS)
    with pytest.raises(SpecError, match="superseded: none"):
        load_spec("mini-0.1")


def test_spec_name_picks_a_results_spec(superseded) -> None:
    for tier in TIERS:
        assert spec_name({"tier": tier, "spec_version": current_version(tier)}) == tier
    assert spec_name({"tier": "mini", "spec_version": OLD}) == OLD
    assert spec_name({"tier": "mini", "spec_version": "mini-0.1"}) == "mini"  # unknown: spec_hash then refuses it
    with pytest.raises(SpecError, match=f"superseded: {OLD}"):
        load_spec("mini-0.1")


def _result(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A conformant result of spec ``name``: ``mini`` (the current one) on mini-narrative, ``OLD`` on
    mini-health. Returns (path, submissions dir)."""
    from test_conformance import write_valid_result

    dataset = "mini-narrative" if name == "mini" else "mini-health"
    return write_valid_result(tmp_path / name, dataset, spec_name=name)


def test_a_result_of_a_superseded_spec_validates_while_the_spec_ships(superseded, tmp_path, monkeypatch) -> None:
    from benchmark.trust.conformance import check_result_file

    path, subs = _result(tmp_path, OLD)
    data = json.loads(path.read_text())
    assert (data["tier"], data["spec_version"], spec_name(data)) == ("mini", OLD, OLD)
    assert {p["rho"] for p in data["predictions"]} == set(OLD_RHOS)
    assert check_result_file(path, submissions_dir=subs) == []
    monkeypatch.setattr(spec_module, "SUPERSEDED_DIR", tmp_path / "absent")  # the spec gone, the result with it
    assert any("field 'spec_hash'" in p for p in check_result_file(path, submissions_dir=subs))


def test_results_of_a_superseded_spec_have_their_own_sections(superseded, tmp_path) -> None:
    """Each result is shown under its spec: the current tier's sections, or a section of its
    superseded version after every tier's, marked so."""
    root = tmp_path / "board" / "results"
    for path, _ in (_result(tmp_path, "mini"), _result(tmp_path, OLD)):
        rel = path.relative_to(path.parents[3])  # <submission>/<tier>/<model>/<dataset>.json
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / rel)
    entries = load_entries(root)
    assert sorted((e.tier, e.dataset, e.spec_version) for e in entries) == [
        ("mini", "mini-narrative", current_version("mini")), (OLD, "mini-health", OLD)]
    groups = list(group_entries(entries))
    assert [key[0] for key in groups] == ["mini", OLD]
    assert _tier_order(OLD) > max(_tier_order(t) for t in TIERS)
    assert "Superseded spec" in tier_note(OLD) and current_version("mini") in tier_note(OLD)
    assert "Superseded" not in tier_note("mini")
    md = render_markdown(entries, {}, "CONTRIBUTING.md")
    old_section = md[md.index(f"\n## {OLD} · mini-health"):]
    assert f"**Superseded spec {OLD}**" in old_section and "**Superseded" not in md[:md.index(f"\n## {OLD} ·")]


def test_publish_refuses_a_result_of_a_superseded_spec(superseded, tmp_path, capsys) -> None:
    """A result made under a superseded spec is kept where it is, but never added anew: publish names
    the field and the current version, copies nothing and exits 1; a current one is published."""
    from benchmark.cli import main

    path, subs = _result(tmp_path, OLD)
    assert main(["publish", str(path), "--results", str(tmp_path / "out"), "--submissions", str(subs)]) == 1
    err = capsys.readouterr().err
    assert f"field 'spec_version': '{OLD}' is superseded" in err
    assert current_version("mini") in err and not (tmp_path / "out").exists()
    path, subs = _result(tmp_path, "mini")
    assert main(["publish", str(path), "--results", str(tmp_path / "out"), "--submissions", str(subs)]) == 0
    assert [p.name for p in (tmp_path / "out").rglob("*.json")] == [path.name]


def test_verify_re_runs_a_result_under_its_own_spec(superseded, tmp_path) -> None:
    """verify loads the spec the result was made under (the superseded one, with its own data) and
    gets as far as loading the model to re-run it."""
    from benchmark.protocol.evaluator import Loaders
    from benchmark.trust.verify import verify_result

    class ModelLoaded(Exception):
        pass

    asked = []

    def load_spec_recorded(name):
        asked.append(name)
        return load_spec(name)

    def load_model(model_spec, device, dtype):
        raise ModelLoaded(model_spec.id)

    path, subs = _result(tmp_path, OLD)
    with pytest.raises(ModelLoaded):
        verify_result(path, seed="0" * 16, submissions_dir=subs,
                      loaders=Loaders(load_spec=load_spec_recorded, load_model=load_model))
    assert asked == [OLD]
