"""Leaderboard rendering on synthetic result files: tables, ranking, margins, memory, determinism."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmark import leaderboard
from benchmark.results import ResultFile, result_path

RHOS = [0.0, 0.5, 1.0]
CONDS = ["base", "adapter_all", "base_kv_adapter_decode", "base_score_adapter_prefill"]
DOCS = ["d0", "d1"]
QUESTIONS = ["q0", "q1"]
ADAPTER_BYTES = 2048


def kv_bytes(rho: float) -> int:
    return int(1000 * (1 - rho)) + 100


def write_result(root: Path, name: str, headline: str, scores: dict[str, list[float]], *, dataset="mini-narrative",
                 model="smollm2-135m", updated="2026-03-01T12:00:00+00:00", spec_version="mini-1.0",
                 rhos=RHOS, recipe="qa", lora=None) -> Path:
    """A result file whose cell (rho, condition) has mean ROUGE-L ``scores[condition][i]`` (d0 +5, d1 -5)."""
    adapter = {"recipe": "none"} if headline == "base" else {"recipe": recipe, "lora": lora or {"r": 8}}
    header = {
        "submission": {"name": name, "hash": f"hash-{name}", "compressor": {"press": "KnormPress"}, "adapter": adapter,
                       "headline_condition": headline},
        "tier": "mini", "spec_version": spec_version, "spec_hash": "synthetic",
        "model": {"id": model, "name": f"{model} (synthetic)"}, "dataset": {"id": dataset, "split": "test"},
        "rhos": rhos, "conditions": CONDS, "environment": {"device": "cpu"},
    }
    path = result_path(root, name, "mini", model, dataset)
    rf = ResultFile(path, header)
    for d_i, doc in enumerate(DOCS):
        preds = []
        for q in QUESTIONS:
            for cond, vals in scores.items():
                for rho, v in zip(rhos, vals):
                    preds.append({"doc_id": doc, "question_id": f"{doc}-{q}", "rho": rho, "condition": cond,
                                  "generation": "x", "prediction": "x", "answers": ["y"],
                                  "rouge_l": v + (5 if d_i == 0 else -5), "exact_match": 0.0,
                                  "kv_entries": 10, "kv_bytes": kv_bytes(rho)})
        adapter_rec = None if headline == "base" else {"bytes": ADAPTER_BYTES}
        rf.add_document({"doc_id": doc, "n_prefix_tokens": 5, "n_doc_tokens": 50, "adapter": adapter_rec,
                         "timings": {}}, preds)
    rf.data["created"] = rf.data["updated"] = updated  # fixed dates: the leaderboard shows updated[:10]
    path.write_text(json.dumps(rf.data, indent=1) + "\n")
    return path


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "results"
    # alpha: adapter helps at every rho; adapter_all is its best condition
    write_result(root, "alpha", "base_kv_adapter_decode", {
        "base": [80, 50, 10], "base_kv_adapter_decode": [90, 70, 40], "adapter_all": [95, 75, 45],
        "base_score_adapter_prefill": [85, 65, 40]})
    # beta: no adapter (headline = base)
    write_result(root, "beta", "base", {"base": [85, 60, 5]}, updated="2026-02-15T08:00:00+00:00")
    # gamma: headline adapter_all, the best mean
    write_result(root, "gamma", "adapter_all", {
        "base": [70, 40, 10], "adapter_all": [95, 90, 80], "base_kv_adapter_decode": [60, 50, 30],
        "base_score_adapter_prefill": [60, 50, 30]})
    # another group, and a dev-split file that must not show up
    write_result(root, "alpha", "base_kv_adapter_decode", {"base": [20, 10, 5], "base_kv_adapter_decode": [30, 20, 15]},
                 dataset="mini-health")
    dev = write_result(root, "alpha", "base", {"base": [10, 10, 10]}, dataset="mini-narrative-devcopy")
    data = json.loads(dev.read_text())
    data["dataset"]["split"] = "dev"
    dev.write_text(json.dumps(data))
    return root


@pytest.fixture(scope="module")
def rendered(results, tmp_path_factory) -> tuple[Path, str]:
    """The synthetic results rendered once: (folder with README.md and plots/, the Markdown)."""
    where = tmp_path_factory.mktemp("rendered")
    return where, _render(results, where)


def _render(results: Path, where: Path) -> str:
    return leaderboard.render(results, where / "README.md", where / "plots")


def _table_rows(md: str, section: str, table: str) -> list[list[str]]:
    """Cells of the data rows of the ``### {table}`` table under ``## {section}``."""
    part = md.split(f"## {section}\n", 1)[1]
    part = part.split(f"### {table}", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in part.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[2:]]


def test_groups_sorted_and_dev_excluded(rendered):
    md = rendered[1]
    sections = re.findall(r"^## (mini .*)$", md, flags=re.M)
    assert sections == ["mini mini-health smollm2-135m", "mini mini-narrative smollm2-135m"]
    assert "devcopy" not in md


def test_ranking_by_headline_mean(rendered):
    md = rendered[1]
    rows = _table_rows(md, "mini mini-narrative smollm2-135m", "Quality")
    assert [r[1] for r in rows] == ["**gamma**", "**alpha**", "**beta**"]
    assert [r[0] for r in rows] == ["1", "2", "3"]
    header = md.split("## mini mini-narrative smollm2-135m\n")[1].split("### Quality")[1].splitlines()[2]
    cols = [c.strip() for c in header.strip("|").split("|")]
    by = {r[1].strip("*"): dict(zip(cols, r)) for r in rows}
    # headline ROUGE-L at each rho and the mean over the grid
    assert [by["alpha"][f"ρ={r:g}"] for r in RHOS] == ["90.0", "70.0", "40.0"]
    assert by["alpha"]["mean"] == "**66.7**"        # (90 + 70 + 40) / 3
    assert by["gamma"]["mean"] == "**88.3**"        # (95 + 90 + 80) / 3
    assert by["beta"]["mean"] == "**50.0**"         # (85 + 60 + 5) / 3
    assert by["alpha"]["base mean"] == "46.7"       # (80 + 50 + 10) / 3
    assert by["alpha"]["headline condition"] == "base_kv_adapter_decode"
    assert by["beta"]["spec"] == "mini-1.0" and by["beta"]["date"] == "2026-02-15"
    assert by["alpha"]["date"] == "2026-03-01"


def test_margin_best_condition_and_ci(rendered):
    md = rendered[1]
    header = md.split("## mini mini-narrative smollm2-135m\n")[1].split("### Quality")[1].splitlines()[2]
    cols = [c.strip() for c in header.strip("|").split("|")]
    by = {r[1].strip("*"): dict(zip(cols, r)) for r in _table_rows(md, "mini mini-narrative smollm2-135m", "Quality")}
    # LoRA margin at rho = 1: headline - base at rho = 1
    assert by["alpha"]["LoRA margin @ρ=1"] == "+30.0"   # 40 - 10
    assert by["gamma"]["LoRA margin @ρ=1"] == "+70.0"   # 80 - 10
    assert by["beta"]["LoRA margin @ρ=1"] == "–"        # no adapter
    # best condition = highest mean over rho
    assert by["alpha"]["best condition"] == "adapter_all (71.7)"   # (95 + 75 + 45) / 3
    assert by["gamma"]["best condition"] == "adapter_all (88.3)"
    assert by["beta"]["best condition"] == "base (50.0)"
    # CI: document-clustered bootstrap of the headline predictions pooled over rho; d0 is +5, d1 -5
    lo, hi = (float(x) for x in by["alpha"]["95% CI"].strip("[]").split(","))
    assert 61.7 - 1e-9 <= lo < 66.7 < hi <= 71.7 + 1e-9


def test_margin_matches_entries(results):
    entries = {(e.name, e.dataset): e for e in leaderboard.load_entries(results)}
    alpha = entries[("alpha", "mini-narrative")]
    assert alpha.margin_at_1() == pytest.approx(30.0)
    assert alpha.mean() == pytest.approx(200 / 3)
    assert alpha.mean("base") == pytest.approx(140 / 3)
    assert entries[("beta", "mini-narrative")].margin_at_1() is None
    assert entries[("alpha", "mini-health")].margin_at_1() == pytest.approx(10.0)


def test_memory_table(rendered):
    md = rendered[1]
    rows = {r[1]: r for r in _table_rows(md, "mini mini-narrative smollm2-135m", "Memory")}
    # alpha at rho=0: 1100 B of KV + 2048 B adapter = 3148 B; rho=1: 100 + 2048
    assert rows["alpha"][2] == "2.0 KiB"
    assert rows["alpha"][3:6] == [leaderboard.fmt_bytes(1100 + 2048), leaderboard.fmt_bytes(600 + 2048),
                                  leaderboard.fmt_bytes(100 + 2048)]
    assert rows["alpha"][3] == "3.1 KiB"
    assert rows["beta"][2] == "–" and rows["beta"][3] == "1.1 KiB" and rows["beta"][5] == "100 B"
    assert rows["alpha"][6:] == ["2", "4"]  # documents, questions


def test_findings(tmp_path):
    root = tmp_path / "results"
    write_result(root, "qa-sub", "base_kv_adapter_decode", {
        "base": [80, 50, 10], "base_kv_adapter_decode": [85, 70, 40], "adapter_all": [84, 72, 35]})
    write_result(root, "ntp-sub", "base_kv_adapter_decode", {
        "base": [80, 50, 10], "base_kv_adapter_decode": [81, 52, 12], "adapter_all": [80, 55, 12]}, recipe="ntp")
    write_result(root, "kv-only", "base", {"base": [85, 60, 5]})
    write_result(root, "kv-only", "base", {"base": [85, 60, 5]}, dataset="mini-health")
    # a qa and an ntp entry whose adapters differ in more than the recipe (alpha, which the label omits)
    # are not compared
    write_result(root, "qa-sub", "base_kv_adapter_decode", {"base": [80, 50, 10], "base_kv_adapter_decode": [85, 70, 40]},
                 dataset="mini-other")
    write_result(root, "ntp-alpha4", "base_kv_adapter_decode", {"base": [80, 50, 10], "base_kv_adapter_decode": [81, 52, 12]},
                 dataset="mini-other", recipe="ntp", lora={"r": 8, "alpha": 4})
    groups = leaderboard.group_entries(leaderboard.load_entries(root))
    margin, decode, versus = leaderboard.findings(groups[("mini", "mini-narrative", "smollm2-135m")])
    # 1: headline - base at rho = 0 and at rho = 1
    assert "ntp-sub +1.0 (ρ=0) → +2.0" in margin and "qa-sub +5.0 (ρ=0) → +30.0" in margin
    assert "Larger at ρ = 1 for 2 of 2" in margin
    # 2: 85>=84, 70<72, 40>=35, 81>=80, 52<55, 12>=12; mean difference (1 - 2 + 5 + 1 - 3 + 0) / 6
    assert "at 4 of 6 (submission, ρ) points, +0.3 ROUGE-L on average" in decode
    # 3: the qa and ntp entries share compressor, headline and adapter settings: 65.0 vs 48.3
    assert "qa-sub 65.0 vs ntp-sub 48.3" in versus and "QA higher in 1 of 1" in versus
    # a group without adapters has nothing to say, and the section is then left out
    assert leaderboard.findings(groups[("mini", "mini-health", "smollm2-135m")]) == []
    assert [line.split("**")[1] for line in leaderboard.findings(groups[("mini", "mini-other", "smollm2-135m")])] == [
        "LoRA margin"]
    md = leaderboard.render(root, tmp_path / "README.md", tmp_path / "plots")
    assert md.count("### The paper's findings") == 2


def test_frontier():
    pts = [(100, 10.0, "a"), (200, 5.0, "b"), (200, 30.0, "c"), (300, 30.0, "d"), (400, 40.0, "e")]
    assert [p[2] for p in leaderboard.frontier(pts)] == ["a", "c", "e"]


def test_fmt_bytes():
    assert leaderboard.fmt_bytes(512) == "512 B"
    assert leaderboard.fmt_bytes(1536) == "1.5 KiB"
    assert leaderboard.fmt_bytes(3 * 1024**2) == "3.00 MiB"
    assert leaderboard.fmt_bytes(5 * 1024**3) == "5.00 GiB"


def test_plots_linked_and_written(rendered):
    where, md = rendered
    plots = sorted(p.name for p in (where / "plots").iterdir())
    assert plots == ["mini__mini-health__smollm2-135m__memory.svg", "mini__mini-health__smollm2-135m__rho.svg",
                     "mini__mini-narrative__smollm2-135m__memory.svg", "mini__mini-narrative__smollm2-135m__rho.svg"]
    for name in plots:
        assert f"(plots/{name})" in md
        svg = (where / "plots" / name).read_text()
        assert svg.startswith("<?xml") and "<dc:date>" not in svg
    rho_svg = (where / "plots" / "mini__mini-narrative__smollm2-135m__rho.svg").read_text()
    for label in ("gamma: adapter_all", "gamma: base (no adapter)", "alpha: base_kv_adapter_decode",
                  "alpha: base (no adapter)", "beta: base"):
        assert f"<!-- {label} -->" in rho_svg  # headline and base curve per submission (Figure 2 style)
    assert "<!-- beta: base (no adapter) -->" not in rho_svg  # no adapter: one curve
    mem_svg = (where / "plots" / "mini__mini-narrative__smollm2-135m__memory.svg").read_text()
    assert "<!-- frontier -->" in mem_svg


def test_deterministic(results, rendered, tmp_path):
    a, b = rendered[0], tmp_path / "b"
    first = {p.relative_to(a): p.read_bytes() for p in sorted(a.rglob("*")) if p.is_file()}
    _render(results, a)  # again in place
    _render(results, b)  # and elsewhere
    again = {p.relative_to(a): p.read_bytes() for p in sorted(a.rglob("*")) if p.is_file()}
    other = {p.relative_to(b): p.read_bytes() for p in sorted(b.rglob("*")) if p.is_file()}
    assert first == again == other
    assert len(first) == 5  # README + 4 plots


def test_check_up_to_date(tmp_path):
    results = tmp_path / "results"
    write_result(results, "alpha", "base_kv_adapter_decode", {"base": [80, 50, 10], "base_kv_adapter_decode": [90, 70, 40]})
    where = tmp_path / "lb"
    md_path, plots = where / "README.md", where / "plots"
    assert not leaderboard.check_up_to_date(results, md_path, plots)  # nothing rendered yet
    leaderboard.render(results, md_path, plots)
    assert leaderboard.check_up_to_date(results, md_path, plots)
    # a new result makes it stale
    write_result(results, "delta", "base", {"base": [95, 95, 95]})
    stale = leaderboard.stale_files(results, md_path, plots)
    assert str(md_path) in stale
    leaderboard.render(results, md_path, plots)
    assert leaderboard.check_up_to_date(results, md_path, plots)
    # a hand edit or a stray plot makes it stale
    (plots / "extra.svg").write_text("<svg/>")
    assert leaderboard.stale_files(results, md_path, plots) == [str(plots / "extra.svg")]
    leaderboard.render(results, md_path, plots)  # removes plots nobody renders
    assert not (plots / "extra.svg").exists()
    md_path.write_text(md_path.read_text() + "edited\n")
    assert leaderboard.stale_files(results, md_path, plots) == [str(md_path)]


def test_no_results(tmp_path):
    md = leaderboard.render(tmp_path / "none", tmp_path / "lb" / "README.md", tmp_path / "lb" / "plots")
    assert "No results yet" in md and "rho" in md
    assert list((tmp_path / "lb" / "plots").iterdir()) == []
