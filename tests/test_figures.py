"""The paper's figures drawn from synthetic result files: what each curve plots is checked against
means computed here from the score functions that wrote the files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_compressors import DOCS, KNORM, QUESTIONS, RANDOM, RHOS, SNAP, random_base, snap_base, write

from benchmark.board import figures, leaderboard

GROUP_TITLE = "mini · mini-narrative · smollm2-135m · not recorded"


def qa_decode(d, q, rho):
    return 80.0 - 40 * rho + d


def qa_all(d, q, rho):
    return 75.0 - 30 * rho + q


def ntp_all(d, q, rho):
    return 60.0 - 50 * rho + (d + q) % 3


def prefill(d, q, rho):
    return 70.0 - 35 * rho


def expected(fn, rho: float) -> float:
    vals = [fn(d, q, rho) for d in range(len(DOCS)) for q in range(len(QUESTIONS))]
    return sum(vals) / len(vals)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("figures") / "results"
    write(root, "qa", SNAP, snap_base, recipe="qa",
          extra={"base_kv_adapter_decode": qa_decode, "adapter_all": qa_all, "base_score_adapter_prefill": prefill})
    write(root, "ntp", SNAP, snap_base, recipe="ntp",
          extra={"base_kv_adapter_decode": lambda d, q, r: 50.0 - 40 * r, "adapter_all": ntp_all})
    write(root, "rand", RANDOM, random_base, recipe="qa", extra={"base_kv_adapter_decode": lambda d, q, r: 40.0})
    write(root, "kvonly", KNORM, random_base)
    write(root, "kvonly", KNORM, random_base, dataset="mini-health")  # a group without an adapter
    return root


@pytest.fixture(scope="module")
def group(results):
    groups = leaderboard.group_entries(leaderboard.load_entries(results))
    return next(g for k, g in groups.items() if k[1] == "mini-narrative")


def _lines(ax) -> dict[str, list[tuple[float, float]]]:
    return {line.get_label(): list(zip(line.get_xdata(), line.get_ydata())) for line in ax.lines}


def _curve(fn) -> list[tuple[float, float]]:
    return [(r, pytest.approx(expected(fn, r))) for r in RHOS]


def test_kv_vs_lora_panels(group):
    with figures.plot_style():
        fig = figures.kv_vs_lora_figure(group, "t")
    axes = fig.axes
    titles = [ax.get_title().replace("\n", " ") for ax in axes]
    assert titles == ["SnapKVPress(window_size=16)", "RandomPress(seed=0)"]  # the KV-only knorm has no panel
    snap = _lines(axes[0])
    assert snap["KV-only (base)"] == _curve(snap_base)
    assert snap["+LoRA: qa"] == _curve(qa_decode)
    assert snap["+LoRA: ntp"] == [(r, pytest.approx(50.0 - 40 * r)) for r in RHOS]
    assert _lines(axes[1])["KV-only (base)"] == _curve(random_base)
    assert "top" not in fig.get_suptitle()


def test_conditions_panels(group):
    with figures.plot_style():
        fig = figures.conditions_figure(group, "t")
    by_title = {ax.get_title().split(" (")[0]: ax for ax in fig.axes}
    assert set(by_title) == {"qa", "ntp", "rand"}
    qa = _lines(by_title["qa"])
    assert list(qa) == ["base", "adapter_all", "base_kv_adapter_decode", "base_score_adapter_prefill"]
    assert qa["adapter_all"] == _curve(qa_all) and qa["base_score_adapter_prefill"] == _curve(prefill)
    assert qa["base"] == _curve(snap_base)
    assert list(_lines(by_title["ntp"])) == ["base", "adapter_all", "base_kv_adapter_decode"]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["base", "adapter_all", "base_kv_adapter_decode", "base_score_adapter_prefill"]


def test_format_pairs_from_findings(group):
    pairs = leaderboard.qa_ntp_pairs(group)
    assert [(qa.name, ntp.name) for qa, ntp in pairs] == [("qa", "ntp")]
    with figures.plot_style():
        fig = figures.format_figure(pairs, "t")
    lines = _lines(fig.axes[0])
    assert lines == {"QA: qa": _curve(qa_all), "NTP: ntp": _curve(ntp_all)}
    assert figures.format_figure([], "t") is None


def test_panels_capped(tmp_path):
    root = tmp_path / "results"
    for i in range(figures.MAX_PANELS + 1):
        write(root, f"e{i}", {"press": "KnormPress", "kwargs": {"i": i}}, random_base, recipe="qa",
              extra={"base_kv_adapter_decode": lambda d, q, r, i=i: 30.0 + i})
    (group,) = leaderboard.group_entries(leaderboard.load_entries(root)).values()
    with figures.plot_style():
        fig2, fig3 = figures.kv_vs_lora_figure(group, "t"), figures.conditions_figure(group, "t")
    for fig in (fig2, fig3):
        assert len([ax for ax in fig.axes if ax.get_title()]) == figures.MAX_PANELS
        assert f"top {figures.MAX_PANELS} of {figures.MAX_PANELS + 1}" in fig.get_suptitle()
    # the group is sorted best first: the panels are the best entries
    assert fig3.axes[0].get_title().startswith(f"e{figures.MAX_PANELS} ")


def _svg_texts(svg: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", t) for t in re.findall(r"<text\b[^>]*>(.*?)</text>", svg, flags=re.S)]


def test_written_linked_and_text(results, tmp_path):
    where = tmp_path / "lb"
    md = leaderboard.render(results, where / "README.md", where / "plots")
    stem = "mini__{}__smollm2-135m__not_recorded__{}"
    narr = md.split(f"## {GROUP_TITLE}\n", 1)[1].split("\n## ", 1)[0]
    for kind, (suffix, what) in figures.FIGURES.items():
        name = stem.format("mini-narrative", suffix)
        assert (where / "plots" / name).exists(), kind
        assert f"![{what}, {GROUP_TITLE}](plots/{name})" in narr
    texts = _svg_texts((where / "plots" / stem.format("mini-narrative", "fig2_kv_vs_lora.svg")).read_text())
    assert {"KV-only (base)", "+LoRA: qa", "+LoRA: ntp", "SnapKVPress(window_size=16)"} <= set(texts)
    assert "<title>KV-only vs +LoRA over ρ (Fig. 2), mini-narrative" in \
        (where / "plots" / stem.format("mini-narrative", "fig2_kv_vs_lora.svg")).read_text()
    # no adapter in the group: no figure, and no figure section
    health = md.split("## mini · mini-health · smollm2-135m · not recorded\n", 1)[1].split("\n## ", 1)[0]
    assert not list((where / "plots").glob("*mini-health*fig*")) and "The paper's figures" not in health
    # rendering again writes the same bytes
    before = {p.name: p.read_bytes() for p in (where / "plots").glob("*.svg")}
    leaderboard.render(results, where / "README.md", where / "plots")
    assert {p.name: p.read_bytes() for p in (where / "plots").glob("*.svg")} == before
