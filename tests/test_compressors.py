"""The compressor section (KV-only gain over random eviction) and the detectable difference, on
small synthetic result files whose expected numbers are computed here by hand."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

import pytest

from benchmark.board import compressors, leaderboard
from benchmark.protocol.metrics import clustered_se, detectable_difference, paired_bootstrap_ci
from benchmark.protocol.results import ResultFile, result_path

DOCS = ["d0", "d1", "d2", "d3"]
QUESTIONS = ["q0", "q1", "q2"]
RHOS = [0.0, 0.5, 0.9, 1.0]
INTERIOR = [0.5, 0.9]
RANDOM = {"press": "RandomPress", "kwargs": {"seed": 0}}
SNAP = {"press": "SnapKVPress", "kwargs": {"window_size": 16}}
KNORM = {"press": "KnormPress"}
STREAM = {"press": "StreamingLLMPress", "kwargs": {"n_sink": 4}}
GROUP = "mini · mini-narrative · smollm2-135m · not recorded"


def noise(d: int, q: int, rho: float) -> float:
    """A fixed, uneven per-question term, so paired differences are not all alike."""
    return float((7 * d + 3 * q + int(rho * 10)) % 11)


def random_base(d: int, q: int, rho: float) -> float:
    return 20.0 + noise(d, q, rho)


def write(root: Path, name: str, compressor: dict, base, *, recipe: str = "none", dataset: str = "mini-narrative",
          extra: dict | None = None) -> None:
    """A result file whose ``base`` ROUGE-L on (doc index, question index, rho) is ``base(d, q, rho)``;
    with ``recipe`` other than none, an adapter and ``extra``: condition -> score function, the first
    of them the headline."""
    extra = extra or {}
    headline = next(iter(extra), "base")
    adapter = {"recipe": "none"} if recipe == "none" else {"recipe": recipe, "lora": {"r": 8}}
    header = {"submission": {"name": name, "hash": f"hash-{name}", "compressor": compressor, "adapter": adapter,
                             "headline_condition": headline},
              "tier": "mini", "spec_version": "mini-1.0", "spec_hash": "synthetic",
              "model": {"id": "smollm2-135m", "name": "synthetic"}, "dataset": {"id": dataset, "split": "test"},
              "rhos": RHOS, "conditions": ["base", *extra], "environment": {"device": "cpu"}}
    path = result_path(root, name, "mini", "smollm2-135m", dataset)
    rf = ResultFile(path, header)
    for d, doc in enumerate(DOCS):
        preds = []
        for q, qid in enumerate(QUESTIONS):
            for cond, fn in {"base": base, **extra}.items():
                for rho in RHOS:
                    preds.append({"doc_id": doc, "question_id": f"{doc}-{qid}", "rho": rho, "condition": cond,
                                  "generation": "x", "prediction": "x", "answers": ["y"], "exact_match": 0.0,
                                  "rouge_l": fn(d, q, rho), "kv_entries": 10, "kv_bytes": 100})
        rf.add_document({"doc_id": doc, "n_prefix_tokens": 5, "n_doc_tokens": 50,
                         "adapter": None if recipe == "none" else {"bytes": 64}, "timings": {}}, preds)
    rf.data["created"] = rf.data["updated"] = "2026-03-01T12:00:00+00:00"
    path.write_text(json.dumps(rf.data, indent=1) + "\n")


def snap_base(d, q, rho):
    return random_base(d, q, rho) + 30.0 + (d % 2)  # +30 or +31 by document


def knorm_base(d, q, rho):
    return random_base(d, q, rho) + 30.0 + (1 - d % 2) - 0.1 * q  # about the same gain as snap, unevenly


def stream_base(d, q, rho):
    return random_base(d, q, rho) - 20.0 + (d % 3)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compressors") / "results"
    write(root, "random-noadapter", RANDOM, random_base)
    write(root, "random", RANDOM, random_base, recipe="qa", extra={"base_kv_adapter_decode": lambda d, q, r: 50.0})
    write(root, "snap", SNAP, snap_base, recipe="qa", extra={"base_kv_adapter_decode": lambda d, q, r: 70.0})
    write(root, "snap-noadapter", SNAP, snap_base)
    write(root, "knorm", KNORM, knorm_base)
    write(root, "stream", STREAM, stream_base)
    # a group without random eviction
    write(root, "snap", SNAP, snap_base, recipe="qa", dataset="mini-health",
          extra={"base_kv_adapter_decode": lambda d, q, r: 70.0})
    write(root, "snap-noadapter", SNAP, snap_base, dataset="mini-health")
    return root


@pytest.fixture(scope="module")
def groups(results):
    return leaderboard.group_entries(leaderboard.load_entries(results))


def narrative(groups):
    return next(g for k, g in groups.items() if k[1] == "mini-narrative")


# ---------------------------------------------------------------- detectable difference


def test_clustered_se_by_hand():
    # mean 3; cluster residual sums a: (1-3)+(3-3) = -2, b: (2-3)+(6-3) = 2; G = 2, N = 4
    # SE² = 2/1 · (4 + 4) / 16 = 1
    assert clustered_se([1, 3, 2, 6], ["a", "a", "b", "b"]) == pytest.approx(1.0)
    # unequal clusters: mean 23/5 = 4.6; residual sums a: -4.6 - 2.6 = -7.2, b: -0.6, c: 5.4 + 2.4 = 7.8
    assert clustered_se([0, 2, 4, 10, 7], ["a", "a", "b", "c", "c"]) == pytest.approx(
        math.sqrt(3 / 2 * (7.2**2 + 0.6**2 + 7.8**2)) / 5)
    # one question per cluster: the ordinary standard error of the mean
    vals = [3.0, 9.0, 4.0, 1.0, 7.5]
    assert clustered_se(vals, list("abcde")) == pytest.approx(statistics.stdev(vals) / math.sqrt(len(vals)))
    assert math.isnan(clustered_se([1.0, 2.0], ["a", "a"]))  # one cluster: undefined
    assert math.isnan(clustered_se([], []))


def test_detectable_difference_by_hand():
    # SE = 1 (above); z(0.975) = 1.959964, z(0.80) = 0.841621
    assert detectable_difference([1, 3, 2, 6], ["a", "a", "b", "b"]) == pytest.approx(1.959964 + 0.841621, abs=1e-6)
    se = math.sqrt(3 / 2 * (7.2**2 + 0.6**2 + 7.8**2)) / 5
    assert detectable_difference([0, 2, 4, 10, 7], ["a", "a", "b", "c", "c"]) == pytest.approx(2.801585 * se, rel=1e-6)
    # a stricter test and more power need a larger difference: alpha 0.01, power 0.9 -> 2.575829 + 1.281552
    assert detectable_difference([1, 3, 2, 6], ["a", "a", "b", "b"], alpha=0.01, power=0.9) == pytest.approx(
        2.575829 + 1.281552, abs=1e-6)


# ---------------------------------------------------------------- the section


def test_configs_deduplicated_and_shared_names(groups):
    cfgs = {c.label: c for c in compressors.configs(narrative(groups))}
    assert set(cfgs) == {"KnormPress", "RandomPress(seed=0)", "SnapKVPress(window_size=16)",
                         "StreamingLLMPress(n_sink=4)"}
    assert cfgs["SnapKVPress(window_size=16)"].names == ("snap", "snap-noadapter")
    assert cfgs["RandomPress(seed=0)"].names == ("random", "random-noadapter")
    assert cfgs["RandomPress(seed=0)"].is_random and not cfgs["KnormPress"].is_random
    assert all(not c.differing for c in cfgs.values())
    # base rows only where the compressor acts
    assert {k[2] for k in cfgs["KnormPress"].scores} == set(INTERIOR)


def _expected_gain(fn, rhos):
    """(mean gain, its paired CI) over every (document, question, rho) at ``rhos``, from the score functions."""
    keys = [(d, q, r) for d in range(len(DOCS)) for q in range(len(QUESTIONS)) for r in rhos]
    a, b = [fn(*k) for k in keys], [random_base(*k) for k in keys]
    return paired_bootstrap_ci(a, b, [DOCS[k[0]] for k in keys])


def test_gains_over_random(groups):
    sec = compressors.section(narrative(groups))
    assert sec.reference.label == "RandomPress(seed=0)" and sec.other_random == []
    by = {g.config.label: g for g in sec.gains}
    assert "RandomPress(seed=0)" not in by
    # snap: +30 on even documents, +31 on odd ones, at every question and rho
    assert by["SnapKVPress(window_size=16)"].pooled.diff == pytest.approx(30.5)
    assert by["SnapKVPress(window_size=16)"].at[0.5].diff == pytest.approx(30.5)
    # knorm: +31 on even documents, +30 on odd ones, minus 0.1 per question index (mean 0.1)
    assert by["KnormPress"].pooled.diff == pytest.approx(30.4)
    # stream: -20 + (d % 3) over d = 0..3: mean of (0, 1, 2, 0) is 0.75
    assert by["StreamingLLMPress(n_sink=4)"].pooled.diff == pytest.approx(-19.25)
    for label, fn in (("KnormPress", knorm_base), ("StreamingLLMPress(n_sink=4)", stream_base)):
        g = by[label]
        assert (g.pooled.diff, g.pooled.lo, g.pooled.hi) == pytest.approx(_expected_gain(fn, INTERIOR))
        assert (g.at[0.9].diff, g.at[0.9].lo, g.at[0.9].hi) == pytest.approx(_expected_gain(fn, [0.9]))
        assert g.pooled.n_questions == len(DOCS) * len(QUESTIONS) * len(INTERIOR)


def test_kv_only_ranking_shares_inseparable_ranks(groups):
    sec = compressors.section(narrative(groups))
    assert [(g.config.label, g.rank) for g in sec.gains] == [
        ("SnapKVPress(window_size=16)", 1), ("KnormPress", 1), ("StreamingLLMPress(n_sink=4)", 3)]


def test_pooled_detectable_difference_by_hand(groups):
    """snap − random is 30 on d0, d2 and 31 on d1, d3 (every question): cluster residual sums are
    ±0.5 · 6 questions = ±3, N = 24, G = 4: SE² = 4/3 · 4 · 9 / 24²."""
    g = next(g for g in compressors.section(narrative(groups)).gains if g.config.press == "SnapKVPress")
    se = math.sqrt(4 / 3 * 4 * 9) / 24
    assert g.pooled.mde == pytest.approx((1.959964 + 0.841621) * se, rel=1e-6)


def test_no_random_reference(groups):
    health = next(g for k, g in groups.items() if k[1] == "mini-health")
    sec = compressors.section(health)
    assert sec.reference is None and sec.gains == []


def test_differing_base_rows_are_named(tmp_path):
    root = tmp_path / "results"
    write(root, "random", RANDOM, random_base)
    write(root, "snap", SNAP, snap_base)
    write(root, "snap-other", SNAP, lambda d, q, r: snap_base(d, q, r) + (1 if d == 0 else 0))
    (group,) = leaderboard.group_entries(leaderboard.load_entries(root)).values()
    snap = next(c for c in compressors.configs(group) if c.press == "SnapKVPress")
    assert snap.source == "snap" and snap.differing == ("snap-other",)
    md = leaderboard.render_markdown(leaderboard.load_entries(root), {}, "CONTRIBUTING.md")
    assert "**Base rows differ** within one configuration: `SnapKVPress(window_size=16)`: snap-other" in md


# ---------------------------------------------------------------- on the page


def _section(md: str, group: str, heading: str) -> str:
    part = md.split(f"## {group}\n", 1)[1].split("\n## ", 1)[0]
    return part.split(f"### {heading}", 1)[1].split("\n### ", 1)[0]


def test_page_section(results, tmp_path):
    md = leaderboard.render(results, tmp_path / "lb" / "README.md", tmp_path / "lb" / "plots")
    part = _section(md, GROUP, "The compressor alone")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in part.splitlines() if line.startswith("|")][2:]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("1", "`SnapKVPress(window_size=16)`", "snap, snap-noadapter"), ("1", "`KnormPress`", "knorm"),
        ("3", "`StreamingLLMPress(n_sink=4)`", "stream")]
    assert rows[0][-1].startswith("**+30.5 [") and rows[2][-1].startswith("**-19.2 [")  # -19.25 shown to .1
    assert "the base rows of random, random-noadapter" in part
    assert re.search(r"_Detectable difference_ \(gain 0<ρ<1\): [0-9.]+(–[0-9.]+)? points", part)
    health = md.split("## mini · mini-health · smollm2-135m · not recorded\n", 1)[1]
    assert "No random-eviction entry (`RandomPress`) in this group" in health.split("\n## ", 1)[0]


def test_every_comparison_table_prints_its_detectable_difference(results, tmp_path):
    md = leaderboard.render(results, tmp_path / "lb" / "README.md", tmp_path / "lb" / "plots")
    group = md.split(f"## {GROUP}\n", 1)[1].split("\n## ", 1)[0]
    for what in ("vs #1", "LoRA margin @ρ=1", "gain 0<ρ<1", "gain at one ρ"):
        assert f"_Detectable difference_ ({what}): " in group, what
    overall = md.split("## overall · ", 1)[1].split("\n## ", 1)[0]
    assert "_Detectable difference_ (vs #1): " in overall


def test_the_overall_section_pools_the_datasets(tmp_path):
    """The overall section's compressor table pairs each question of both datasets with random
    eviction's, a document of each dataset its own cluster: its gain is the mean over both and its
    detectable difference the one of all those pairs (8 documents, not 4)."""
    root = tmp_path / "results"
    for ds, shift in (("mini-narrative", 0.0), ("mini-health", 4.0)):
        write(root, "random-noadapter", RANDOM, random_base, dataset=ds)
        write(root, "snap-noadapter", SNAP, lambda d, q, r, s=shift: snap_base(d, q, r) + s, dataset=ds)
    md = leaderboard.render(root, tmp_path / "lb" / "README.md", tmp_path / "lb" / "plots")
    overall = md.split("## overall · mini · smollm2-135m · not recorded\n", 1)[1].split("\n## ", 1)[0]
    part = overall.split("### The compressor alone (KV-only gain over random eviction, pooled over mini-health, "
                         "mini-narrative)", 1)[1]
    row = next(line for line in part.splitlines() if "SnapKVPress" in line)
    diffs, clusters = [], []
    for ds, shift in (("mini-narrative", 0.0), ("mini-health", 4.0)):
        for d, doc in enumerate(DOCS):
            for q in range(len(QUESTIONS)):
                for rho in INTERIOR:
                    diffs.append(snap_base(d, q, rho) + shift - random_base(d, q, rho))
                    clusters.append(f"{ds}/{doc}")
    assert f"**{statistics.mean(diffs):+.1f} [" in row  # +32.5: both datasets
    mde = detectable_difference(diffs, clusters)
    assert f"_Detectable difference_ (gain 0<ρ<1): {mde:.1f} points" in part
    assert mde != pytest.approx(detectable_difference(diffs[:len(diffs) // 2], clusters[:len(diffs) // 2]))
