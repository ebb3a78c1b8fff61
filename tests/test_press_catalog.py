"""The press catalog: every kvpress press is listed as runs / runs with a note / refused, the
CONTRIBUTING table is generated from it, refused presses fail with their reason (never run as
something else), and nested presses can be written in YAML."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmark.protocol.compression import build_compressor, evict, prefill
from benchmark.protocol.press_catalog import (
    CATALOG,
    MODES,
    NOTE,
    REFUSED,
    RUNS,
    SCORE,
    PressRefused,
    check_supported,
    contributing_table,
    kvpress_presses,
    markdown_table,
    scoring_mode,
    write_contributing,
)
from benchmark.protocol.tiny import tiny_model

ROOT = Path(__file__).resolve().parent.parent
SPAN = (6, 86)
IDS = list(range(5, 100))


def test_catalog_lists_exactly_kvpress_exports():
    assert sorted(CATALOG) == kvpress_presses()
    assert all(s.status in (RUNS, NOTE, REFUSED) for s in CATALOG.values())
    assert all(s.note for s in CATALOG.values() if s.status != RUNS)  # every refusal and caveat says why


def test_contributing_table_is_the_catalog():
    text = (ROOT / "CONTRIBUTING.md").read_text()
    assert contributing_table(text) == markdown_table(), (
        "regenerate the table: python -m benchmark.protocol.press_catalog"
    )


def test_the_generator_rewrites_only_the_table(tmp_path):
    f = tmp_path / "CONTRIBUTING.md"
    f.write_text("before\n<!-- press table: x -->\n| old |\n<!-- end press table -->\nafter\n")
    assert write_contributing(f) is True
    assert f.read_text() == f"before\n<!-- press table: x -->\n{markdown_table()}\n<!-- end press table -->\nafter\n"
    assert write_contributing(f) is False


def test_press_behaviour_is_keyed_only_by_the_catalog():
    """compression and replay dispatch on the catalog's modes: no press class is named in their code,
    so a press of a new kvpress release is one catalog entry."""
    sources = {m: (ROOT / "benchmark" / "protocol" / f"{m}.py").read_text()
               for m in ("compression", "replay", "runner", "plan")}
    named = [(m, n) for m, text in sources.items() for n in CATALOG if f'"{n}"' in text or f"'{n}'" in text]
    assert named == []
    assert all(s.mode in MODES for s in CATALOG.values())


@pytest.mark.parametrize("name, mode", [("SnapKVPress", SCORE), ("AdaKVPress", "head-wise"), ("KVzipPress", "replay")])
def test_scoring_mode_of_a_built_press_is_its_entry(name, mode):
    kwargs = {"press": {"press": "SnapKVPress"}} if name == "AdaKVPress" else None
    press = build_compressor(name, kwargs)
    assert scoring_mode(press) == mode == CATALOG[name].mode


@pytest.mark.parametrize("name", sorted(n for n, s in CATALOG.items() if s.status == RUNS))
def test_every_press_marked_runs_runs_on_the_document(name):
    model, _ = tiny_model("llama")
    press = build_compressor(name)
    kv, scores = prefill(model, IDS, SPAN, press, [0.0, 0.5, 1.0])
    n_doc = SPAN[1] - SPAN[0]
    for s in scores.for_rho(0.5):
        assert s.shape == (model.config.num_key_value_heads, n_doc)
    pruned, n_keep = evict(kv, scores, SPAN, 0.5)
    assert n_keep == n_doc // 2 and pruned[0][0].shape[2] == SPAN[0] + n_keep


@pytest.mark.parametrize("name", sorted(n for n, s in CATALOG.items() if s.status == REFUSED))
def test_every_refused_press_is_refused_with_its_reason(name):
    import kvpress

    cls = getattr(kvpress, name)
    press = cls.__new__(cls)  # no constructor: some need hub downloads or nested presses
    with pytest.raises(PressRefused, match=re.escape(f"compressor {name}: refused: {CATALOG[name].note}")):
        check_supported(press, name)


def test_pyramidkv_no_longer_runs_as_snapkv():
    with pytest.raises(PressRefused, match="per-layer budgets"):
        build_compressor("PyramidKVPress")


def test_nested_press_from_yaml(tmp_path):
    from benchmark.protocol.submission import load_submission

    d = tmp_path / "submissions" / "critical"
    d.mkdir(parents=True)
    (d / "submission.yaml").write_text(
        "name: critical\nauthors: [t]\ndescription: nested press\n"
        "compressor: {press: CriticalKVPress, kwargs: {press: {press: SnapKVPress, kwargs: {window_size: 8}}}}\n"
        "adapter: {recipe: none}\n")
    press = load_submission(d).make_compressor()
    assert type(press).__name__ == "CriticalKVPress" and type(press.press).__name__ == "SnapKVPress"
    assert press.press.window_size == 8
    model, _ = tiny_model("llama")
    _, scores = prefill(model, IDS, SPAN, press, [0.5])
    _, plain = prefill(model, IDS, SPAN, build_compressor("SnapKVPress", {"window_size": 8}), [0.5])
    assert scores.for_rho(0.5)[0].shape == plain.for_rho(0.5)[0].shape
    assert not all(a.equal(b) for a, b in zip(scores.for_rho(0.5), plain.for_rho(0.5)))  # the wrapper rescores
    # a refused press inside a wrapper is refused too, naming the path
    with pytest.raises(PressRefused, match="CriticalKVPress > PyramidKVPress: refused"):
        build_compressor("CriticalKVPress", {"press": {"press": "PyramidKVPress"}})
    # the example: a head-wise press around a scorer, both built from YAML
    ada = build_compressor("AdaKVPress", {"press": {"press": "ExpectedAttentionPress"}})
    assert type(ada.press).__name__ == "ExpectedAttentionPress"
    with pytest.raises(PressRefused, match="AdaKVPress > ObservedAttentionPress: refused"):
        build_compressor("AdaKVPress", {"press": {"press": "ObservedAttentionPress"}})


def test_own_press_that_overrides_compress_is_refused(tmp_path, monkeypatch):
    from benchmark.paths import SUBMISSION_PROCESS_ENV

    monkeypatch.setenv(SUBMISSION_PROCESS_ENV, "1")  # as in the sandbox, where submission code is built
    (tmp_path / "mypress.py").write_text(
        "from dataclasses import dataclass\nfrom kvpress import ScorerPress\n\n"
        "@dataclass\nclass Scores(ScorerPress):\n"
        "    def score(self, module, hidden_states, keys, values, attentions, kw):\n"
        "        return keys.norm(dim=-1)\n\n"
        "@dataclass\nclass Budgets(Scores):\n    def compress(self, *a, **k):\n        return a[2], a[3]\n")
    assert type(build_compressor("mypress:Scores", code_dir=tmp_path)).__name__ == "Scores"
    with pytest.raises(PressRefused, match=r"mypress:Budgets: refused: it overrides compress\(\)"):
        build_compressor("mypress:Budgets", code_dir=tmp_path)
