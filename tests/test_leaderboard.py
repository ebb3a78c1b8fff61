"""Leaderboard rendering on synthetic result files: tables, ranking, margins, memory, determinism."""

from __future__ import annotations

import csv
import html
import json
import re
from pathlib import Path

import pytest

from benchmark.board import leaderboard, strata
from benchmark.protocol.results import ResultFile, result_path

RHOS = [0.0, 0.5, 1.0]
CONDS = ["base", "adapter_all", "base_kv_adapter_decode", "base_score_adapter_prefill"]
DOCS = ["d0", "d1"]
QUESTIONS = ["q0", "q1"]
ADAPTER_BYTES = 2048


def kv_bytes(rho: float) -> int:
    return int(1000 * (1 - rho)) + 100


def write_result(root: Path, name: str, headline: str, scores: dict[str, list[float]], *, dataset="mini-narrative",
                 model="smollm2-135m", updated="2026-03-01T12:00:00+00:00", spec_version="mini-1.0",
                 rhos=RHOS, recipe="qa", lora=None, docs=DOCS, doc_offsets=(5, -5), env=None, losses=None,
                 tags=None) -> Path:
    """A result file whose cell (rho, condition) has mean ROUGE-L ``scores[condition][i]`` plus
    ``doc_offsets[i]`` on document i (by default d0 +5, d1 -5). ``losses``: doc -> (first, final)
    recorded with its adapter; ``tags``: question -> stratum; ``env``: the result's environment."""
    adapter = {"recipe": "none"} if headline == "base" else {"recipe": recipe, "lora": lora or {"r": 8}}
    header = {
        "submission": {"name": name, "hash": f"hash-{name}", "compressor": {"press": "KnormPress"}, "adapter": adapter,
                       "headline_condition": headline},
        "tier": "mini", "spec_version": spec_version, "spec_hash": "synthetic",
        "model": {"id": model, "name": f"{model} (synthetic)"}, "dataset": {"id": dataset, "split": "test"},
        "rhos": rhos, "conditions": CONDS, "environment": env or {"device": "cpu"},
    }
    path = result_path(root, name, "mini", model, dataset)
    rf = ResultFile(path, header)
    for d_i, doc in enumerate(docs):
        preds = []
        for q in QUESTIONS:
            for cond, vals in scores.items():
                for rho, v in zip(rhos, vals):
                    pred = {"doc_id": doc, "question_id": f"{doc}-{q}", "rho": rho, "condition": cond,
                            "generation": "x", "prediction": "x", "answers": ["y"],
                            "rouge_l": min(100, max(0, v + doc_offsets[d_i])), "exact_match": 0.0,
                            "kv_entries": 10, "kv_bytes": kv_bytes(rho)}
                    if tags:
                        pred["tags"] = [tags[q]]
                    preds.append(pred)
        adapter_rec = None if headline == "base" else {"bytes": ADAPTER_BYTES}
        if adapter_rec is not None and losses and doc in losses:
            adapter_rec["first_loss"], adapter_rec["final_loss"] = losses[doc]
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


NARR = "mini · mini-narrative · smollm2-135m · not recorded"


def _table_rows(md: str, section: str, table: str) -> list[list[str]]:
    """Cells of the data rows of the first table under ``### {table}`` (or the first table) of ``## {section}``."""
    part = md.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    if table:
        part = part.split(f"### {table}", 1)[1]
    lines = part.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[2:]]


def _table(md: str, section: str, table: str) -> dict[str, dict[str, str]]:
    """{submission name: {column: cell}} of a table whose rows name a submission (link or plain)."""
    part = md.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    if table:
        part = part.split(f"### {table}", 1)[1]
    header = next(line for line in part.splitlines() if line.startswith("|"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    out = {}
    for row in _table_rows(md, section, table):
        cells = dict(zip(cols, row))
        name = re.sub(r"[*\[]|\]\(.*\)", "", cells.get("submission", cells.get("submissions", "")))
        out[name] = cells
    return out


def test_groups_sorted_and_dev_excluded(rendered):
    md = rendered[1]
    sections = re.findall(r"^## (mini .*)$", md, flags=re.M)
    assert sections == ["mini · mini-health · smollm2-135m · not recorded", NARR]
    assert "devcopy" not in md


def test_ranking_on_compressed_rhos(rendered):
    """The ranking key is the headline mean over 0 < rho < 1; rho = 0 and rho = 1 are shown apart."""
    md = rendered[1]
    rows = _table_rows(md, NARR, "Ranking")
    assert [re.sub(r"[*\[]|\]\(.*\)", "", r[1]) for r in rows] == ["gamma", "alpha", "beta"]
    # the document offsets cancel in paired differences, so every gap is separable: distinct ranks
    assert [r[0] for r in rows] == ["1", "2", "3"]
    by = _table(md, NARR, "Ranking")
    assert by["gamma"]["mean 0<ρ<1"] == "**90.0**" and by["alpha"]["mean 0<ρ<1"] == "**70.0**"
    assert by["beta"]["mean 0<ρ<1"] == "**60.0**"
    assert (by["alpha"]["ρ=0"], by["alpha"]["ρ=1"]) == ("90.0", "40.0")
    assert by["gamma"]["vs #1 (95% CI)"] == "–"
    assert by["alpha"]["vs #1 (95% CI)"] == "-20.0 [-20.0, -20.0]"
    assert by["alpha"]["dtype · hardware"] == "not recorded · cpu"
    details = _table(md, NARR, "Details")
    assert [details["alpha"][f"ρ={r:g}"] for r in RHOS] == ["90.0", "70.0", "40.0"]
    assert details["alpha"]["base mean 0<ρ<1"] == "50.0"
    assert details["alpha"]["headline condition"] == "base_kv_adapter_decode"
    assert details["beta"]["spec"] == "mini-1.0" and details["beta"]["date"] == "2026-02-15"
    assert details["alpha"]["date"] == "2026-03-01"


def test_rho_0_and_1_do_not_rank(tmp_path):
    """An entry that is best at rho = 0 and rho = 1 but worse where the compressor acts ranks lower."""
    root = tmp_path / "results"
    write_result(root, "ends", "base", {"base": [100, 40, 100]})
    write_result(root, "middle", "base", {"base": [0, 60, 0]})
    e = {x.name: x for x in leaderboard.load_entries(root)}
    assert e["ends"].mean() > e["middle"].mean()  # a key over the whole grid would rank "ends" first
    md = leaderboard.render(root, tmp_path / "lb" / "README.md", tmp_path / "lb" / "plots")
    assert list(_table(md, NARR, "Ranking")) == ["middle", "ends"]


def test_inseparable_entries_share_a_rank(tmp_path):
    """Entries the paired bootstrap cannot tell from the top share its rank; a clear gap does not."""
    root = tmp_path / "results"
    docs = ["d0", "d1", "d2", "d3"]
    write_result(root, "top", "base", {"base": [50, 60, 50]}, docs=docs, doc_offsets=(0, 0, 0, 0))
    # 0.5 lower on average, but above the top on two of four documents: not separable
    write_result(root, "close", "base", {"base": [50, 59.5, 50]}, docs=docs, doc_offsets=(3, -2, 2, -3))
    write_result(root, "far", "base", {"base": [50, 30, 50]}, docs=docs, doc_offsets=(1, -1, 2, -2))
    md = leaderboard.render(root, tmp_path / "lb" / "README.md", tmp_path / "lb" / "plots")
    by = _table(md, NARR, "Ranking")
    assert [by[n]["#"] for n in ("top", "close", "far")] == ["1", "1", "3"]
    diff, lo, hi = (float(x) for x in re.findall(r"[-+][0-9.]+", by["close"]["vs #1 (95% CI)"]))
    assert diff == pytest.approx(-0.5) and lo < 0 < hi
    assert by["far"]["vs #1 (95% CI)"].startswith("-30.0")


def test_diverged_adapter_listed_apart(tmp_path):
    root = tmp_path / "results"
    write_result(root, "good", "base_kv_adapter_decode", {"base": [80, 20, 0], "base_kv_adapter_decode": [80, 30, 10]},
                 losses={"d0": (3.0, 0.1), "d1": (2.5, 0.2)})
    write_result(root, "blown", "base_kv_adapter_decode", {"base": [80, 20, 0], "base_kv_adapter_decode": [90, 90, 90]},
                 losses={"d0": (3.0, 0.1), "d1": (2.0, 9.4)})
    write_result(root, "nan", "base_kv_adapter_decode", {"base": [80, 20, 0], "base_kv_adapter_decode": [90, 90, 90]},
                 losses={"d0": (3.0, float("nan")), "d1": (2.0, 0.1)})
    md = leaderboard.render(root, tmp_path / "lb" / "README.md", tmp_path / "lb" / "plots")
    assert list(_table(md, NARR, "Ranking")) == ["good"]  # the higher-scoring diverged ones are not ranked
    apart = md.split("**Not ranked:**", 1)[1].split("###", 1)[0]
    assert "[blown](../submissions/blown/)" in apart and "d1: final loss 9.40 ≥ first 2.00" in apart
    assert "diverged on 1 of 2 documents" in apart
    assert "[nan](../submissions/nan/)" in apart and "d0: loss not finite" in apart
    rows = {r["submission"]: r for r in _data(tmp_path / "lb")}
    assert rows["good"]["rank"] == 1 and rows["good"]["unranked_reason"] is None
    assert rows["blown"]["rank"] is None and "d1: final loss 9.40 ≥ first 2.00" in rows["blown"]["unranked_reason"]
    assert rows["blown"]["mean"] == 90.0 and rows["blown"]["vs_top"] is None


def test_dtypes_ranked_apart_and_hardware_shown(tmp_path):
    root = tmp_path / "results"
    write_result(root, "fp32", "base", {"base": [80, 50, 10]}, env={"device": "cpu", "dtype": "float32"})
    write_result(root, "bf16", "base", {"base": [80, 60, 10]},
                 env={"device": "cuda", "dtype": "bfloat16", "gpu_name": "NVIDIA H200"})
    md = leaderboard.render(root, tmp_path / "lb" / "README.md", tmp_path / "lb" / "plots")
    bf = _table(md, "mini · mini-narrative · smollm2-135m · bfloat16", "Ranking")
    fp = _table(md, "mini · mini-narrative · smollm2-135m · float32", "Ranking")
    assert list(bf) == ["bf16"] and list(fp) == ["fp32"]
    assert bf["bf16"]["#"] == fp["fp32"]["#"] == "1"
    assert bf["bf16"]["dtype · hardware"] == "bfloat16 · NVIDIA H200"
    assert fp["fp32"]["dtype · hardware"] == "float32 · cpu"


def test_overall_table_across_datasets(rendered):
    md = rendered[1]
    section = "overall · mini · smollm2-135m · not recorded"
    by = _table(md, section, "")
    # only alpha has both datasets: its questions at 0 < rho < 1 pooled, (70 + 70 + 20 + 20) / 4
    assert list(by) == ["alpha"]
    assert by["alpha"]["mean 0<ρ<1, all questions"] == "**45.0**"
    assert by["alpha"]["mini-health"] == "20.0" and by["alpha"]["mini-narrative"] == "70.0"
    apart = md.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    assert "[beta](../submissions/beta/)**: no result on mini-health" in apart


def test_entries_link_to_their_submission(rendered):
    md = rendered[1]
    for name in ("alpha", "beta", "gamma"):
        assert f"[{name}](../submissions/{name}/)" in md


def test_margin_best_condition_and_ci(rendered):
    md = rendered[1]
    by = _table(md, NARR, "Details")
    # LoRA margin at rho = 1: headline - base at rho = 1
    assert by["alpha"]["LoRA margin @ρ=1"] == "+30.0"   # 40 - 10
    assert by["gamma"]["LoRA margin @ρ=1"] == "+70.0"   # 80 - 10
    assert by["beta"]["LoRA margin @ρ=1"] == "–"        # no adapter
    # best condition = highest mean over rho
    assert by["alpha"]["best condition"] == "adapter_all (71.7)"   # (95 + 75 + 45) / 3
    assert by["gamma"]["best condition"] == "adapter_all (88.3)"
    assert by["beta"]["best condition"] == "base (50.0)"
    # CI: document-clustered bootstrap of the headline predictions at 0 < rho < 1; d0 is +5, d1 -5
    ranking = _table(md, NARR, "Ranking")
    lo, hi = (float(x) for x in ranking["alpha"]["95% CI"].strip("[]").split(","))
    assert 65.0 - 1e-9 <= lo < 70.0 < hi <= 75.0 + 1e-9


def test_margin_matches_entries(results):
    entries = {(e.name, e.dataset): e for e in leaderboard.load_entries(results)}
    alpha = entries[("alpha", "mini-narrative")]
    assert alpha.margin_at_1() == pytest.approx(30.0)
    assert alpha.mean() == pytest.approx(200 / 3)
    assert alpha.ranked_mean() == pytest.approx(70.0)
    assert alpha.mean("base") == pytest.approx(140 / 3)
    assert entries[("beta", "mini-narrative")].margin_at_1() is None
    assert entries[("alpha", "mini-health")].margin_at_1() == pytest.approx(10.0)


def test_memory_table_merges_equal_rows(rendered):
    md = rendered[1]
    rows = _table(md, NARR, "Memory")
    # alpha and gamma hold the same (same KV budget, same adapter size): one row
    assert list(rows) == ["alpha, gamma", "beta"]
    # at rho=0: 1100 B of KV + 2048 B adapter = 3148 B; rho=1: 100 + 2048
    alpha = rows["alpha, gamma"]
    assert alpha["adapter"] == "2.0 KiB"
    assert [alpha[f"ρ={r:g}"] for r in RHOS] == [leaderboard.fmt_bytes(1100 + 2048), leaderboard.fmt_bytes(600 + 2048),
                                                  leaderboard.fmt_bytes(100 + 2048)]
    assert alpha["ρ=0"] == "3.1 KiB"
    assert rows["beta"]["adapter"] == "–" and rows["beta"]["ρ=0"] == "1.1 KiB" and rows["beta"]["ρ=1"] == "100 B"
    assert (alpha["documents"], alpha["questions"]) == ("2", "4")


def test_findings_by_stratum(tmp_path):
    root = tmp_path / "results"
    tags = {"q0": "covered", "q1": "uncovered"}
    # covered and uncovered questions score alike here; the leak is read from the uncovered ones at rho = 1
    write_result(root, "clean", "base_kv_adapter_decode", {"base": [80, 40, 2], "base_kv_adapter_decode": [70, 50, 5]},
                 tags=tags, doc_offsets=(0, 0))
    write_result(root, "leaky", "base_kv_adapter_decode", {"base": [80, 40, 2], "base_kv_adapter_decode": [80, 50, 30]},
                 tags=tags, doc_offsets=(0, 0))
    write_result(root, "doc-trained", "base_kv_adapter_decode",
                 {"base": [80, 40, 2], "base_kv_adapter_decode": [80, 50, 30]},
                 tags=tags, doc_offsets=(0, 0), recipe="ntp")
    write_result(root, "untagged", "base_kv_adapter_decode",
                 {"base": [80, 40, 2], "base_kv_adapter_decode": [80, 50, 30]},
                 dataset="mini-health")
    md = leaderboard.render(root, tmp_path / "lb" / "README.md", tmp_path / "lb" / "plots")
    rows = _table_rows(md, NARR, "By question stratum")
    by = {(r[0], r[1]): r for r in rows}
    assert set(by) == {(n, s) for n in ("clean", "leaky", "doc-trained") for s in ("covered", "uncovered")}
    assert by[("clean", "covered")][2:] == ["2", "70.0 / 80.0", "50.0 / 40.0", "5.0 / 2.0", "-10.0 [-10.0, -10.0]"]
    leak = md.split("**Leakage check**", 1)[1].split("\n", 1)[0]
    assert "clean +3.0 [+3.0, +3.0] (2 questions): pass" in leak
    assert "leaky +28.0 [+28.0, +28.0] (2 questions): **FAIL**" in leak
    # trained on the document itself: the uncovered facts were in its data, so no verdict either way
    assert "doc-trained +28.0 [+28.0, +28.0] (2 questions): no verdict, it trains on the whole document" in leak
    health = md.split("## mini · mini-health", 1)[1].split("\n## ", 1)[0]
    assert "By question stratum" not in health and "Leakage" not in health  # no tags, no strata


def test_leak_verdict_only_for_adapters_trained_on_train_qa():
    assert strata.why_no_leak_verdict("qa", {"lr": 1e-3}) is None
    assert strata.why_no_leak_verdict("ctx_qa", {}) is None
    assert "whole document" in strata.why_no_leak_verdict("ntp", {})
    assert "synthesized" in strata.why_no_leak_verdict("qa", {"qa_source": "synthesize"})
    assert "hook" in strata.why_no_leak_verdict("qa", {"hook": "h:f"})
    # a per-model override counts for that model only
    per = {"recipe": "qa", "train": {"lr": 1e-3}, "per_model": {"big": {"qa_source": "synthesize"}}}
    assert strata.why_no_leak_verdict("qa", leaderboard.train_for(per, "m")) is None
    assert strata.why_no_leak_verdict("qa", leaderboard.train_for(per, "big"))


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
    write_result(root, "qa-sub", "base_kv_adapter_decode",
                 {"base": [80, 50, 10], "base_kv_adapter_decode": [85, 70, 40]},
                 dataset="mini-other")
    write_result(root, "ntp-alpha4", "base_kv_adapter_decode",
                 {"base": [80, 50, 10], "base_kv_adapter_decode": [81, 52, 12]},
                 dataset="mini-other", recipe="ntp", lora={"r": 8, "alpha": 4})
    groups = leaderboard.group_entries(leaderboard.load_entries(root))
    margin, decode, versus = leaderboard.findings(groups[("mini", "mini-narrative", "smollm2-135m", "not recorded")])
    # 1: headline - base at rho = 0 and at rho = 1
    assert "ntp-sub +1.0 (ρ=0) → +2.0" in margin and "qa-sub +5.0 (ρ=0) → +30.0" in margin
    assert "Larger at ρ = 1 for 2 of 2" in margin
    # 2: 85>=84, 70<72, 40>=35, 81>=80, 52<55, 12>=12; mean difference (1 - 2 + 5 + 1 - 3 + 0) / 6
    assert "at 4 of 6 (submission, ρ) points, +0.3 ROUGE-L on average" in decode
    # 3: the qa and ntp entries share compressor, headline and adapter settings: 65.0 vs 48.3
    assert "qa-sub 65.0 vs ntp-sub 48.3" in versus and "QA higher in 1 of 1" in versus
    # a group without adapters has nothing to say, and the section is then left out
    assert leaderboard.findings(groups[("mini", "mini-health", "smollm2-135m", "not recorded")]) == []
    assert [line.split("**")[1] for line in leaderboard.findings(groups[("mini", "mini-other", "smollm2-135m",
                                                                              "not recorded")])] == [
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
    stem = "mini__{}__smollm2-135m__not_recorded__{}.svg"
    kinds = ("fig2_kv_vs_lora", "fig3_conditions", "memory", "rho")  # no QA/NTP pair: no training-format figure
    assert plots == [stem.format(ds, kind) for ds in ("mini-health", "mini-narrative") for kind in kinds]
    for name in plots:
        assert f"(plots/{name})" in md
        svg = (where / "plots" / name).read_text()
        assert svg.startswith("<?xml") and "<dc:date>" not in svg
    rho_svg = (where / "plots" / stem.format("mini-narrative", "rho")).read_text()
    assert _legend_labels(rho_svg) == ["gamma: adapter_all", "alpha: base_kv_adapter_decode", "beta: base",
                                       "dashed: same compressor, no adapter"]  # one per submission, one for dashed
    assert "base (no adapter)" not in rho_svg
    assert rho_svg.count("PolyCollection") >= 3  # a CI band per headline curve
    mem_svg = (where / "plots" / stem.format("mini-narrative", "memory")).read_text()
    assert "frontier (all entries)" in _svg_texts(mem_svg)


def test_plot_text_is_text(rendered):
    """Labels are SVG <text> (searchable, readable by a screen reader), each figure has a <title>."""
    svg = (rendered[0] / "plots" / "mini__mini-narrative__smollm2-135m__not_recorded__rho.svg").read_text()
    assert "<title>ROUGE-L vs ρ, mini-narrative · smollm2-135m · not recorded (mini)</title>" in svg
    assert "mini-narrative · smollm2-135m · not recorded (mini)" in _svg_texts(svg)  # the axes' title
    assert "ρ (fraction of document KV entries evicted)" in _svg_texts(svg)


def _svg_texts(svg: str) -> list[str]:
    """The <text> elements of an SVG, as the text they show."""
    return [html.unescape(t) for t in re.findall(r"<text\b[^>]*>(.*?)</text>", svg, flags=re.S)]


def _legend_labels(svg: str) -> list[str]:
    """Texts drawn inside the legend group of a matplotlib SVG."""
    return _svg_texts(svg.split('<g id="legend_1">', 1)[1])


def test_plots_stay_readable_with_many_entries(tmp_path):
    """Eight submissions: the plots draw the top MAX_CURVES, so the legend stays short, and the
    memory axis (log scale) has few labelled ticks in binary units."""
    root = tmp_path / "results"
    for i in range(8):
        write_result(root, f"sub{i}", "base_kv_adapter_decode",
                     {"base": [80, 20, 0], "base_kv_adapter_decode": [80, 60 - i, 10]})
    leaderboard.render(root, tmp_path / "lb" / "README.md", tmp_path / "lb" / "plots")
    plots = tmp_path / "lb" / "plots"
    rho_svg = (plots / "mini__mini-narrative__smollm2-135m__not_recorded__rho.svg").read_text()
    labels = _legend_labels(rho_svg)
    assert labels == [f"sub{i}: base_kv_adapter_decode" for i in range(leaderboard.MAX_CURVES)] + [
        "dashed: same compressor, no adapter"]
    assert f"top {leaderboard.MAX_CURVES} of 8" in rho_svg
    mem_svg = (plots / "mini__mini-narrative__smollm2-135m__not_recorded__memory.svg").read_text()
    assert len(_legend_labels(mem_svg)) == leaderboard.MAX_CURVES + 1  # + the frontier
    ticks = re.findall(r'<g id="xtick_\d+">.*?<text\b[^>]*>(.+?)</text>', mem_svg, flags=re.S)
    assert 2 <= len(ticks) <= 8 and all(re.fullmatch(r"\d+ (B|KiB|MiB|GiB)", t) for t in ticks), ticks


def test_deterministic(results, rendered, tmp_path):
    a, b = rendered[0], tmp_path / "b"
    first = {p.relative_to(a): p.read_bytes() for p in sorted(a.rglob("*")) if p.is_file()}
    _render(results, a)  # again in place
    _render(results, b)  # and elsewhere
    again = {p.relative_to(a): p.read_bytes() for p in sorted(a.rglob("*")) if p.is_file()}
    other = {p.relative_to(b): p.read_bytes() for p in sorted(b.rglob("*")) if p.is_file()}
    assert first == again
    # elsewhere, only the result paths of the data files and the page differ: they are relative to the output folder
    from_a, from_b = (leaderboard._link(results, d) for d in (a, b))
    data = {leaderboard.DATA_JSON, leaderboard.DATA_CSV, leaderboard.PAGE_HTML}
    assert ({p: v for p, v in first.items() if p.name not in data}
            == {p: v for p, v in other.items() if p.name not in data})
    for name in data:
        assert first[Path(name)].decode().replace(from_a, "R") == other[Path(name)].decode().replace(from_b, "R")
    assert len(first) == 12  # README, leaderboard.json, leaderboard.csv, index.html and 4 plots per group (2 groups)


def test_check_up_to_date(tmp_path):
    results = tmp_path / "results"
    write_result(results, "alpha", "base_kv_adapter_decode",
                 {"base": [80, 50, 10], "base_kv_adapter_decode": [90, 70, 40]})
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
    # so do stale or missing data files
    leaderboard.render(results, md_path, plots)
    data_json, data_csv = where / leaderboard.DATA_JSON, where / leaderboard.DATA_CSV
    data_json.write_text(data_json.read_text().replace('"mean": 70.0', '"mean": 71.0'))
    data_csv.unlink()
    assert leaderboard.stale_files(results, md_path, plots) == [str(data_json), str(data_csv)]


def test_no_results(tmp_path):
    md = leaderboard.render(tmp_path / "none", tmp_path / "lb" / "README.md", tmp_path / "lb" / "plots")
    assert "No results yet" in md and "rho" in md
    assert list((tmp_path / "lb" / "plots").iterdir()) == []
    assert _data(tmp_path / "lb") == [] and (tmp_path / "lb" / leaderboard.DATA_CSV).read_text() == ""


def test_recipe_label_shows_the_rate_the_model_was_trained_with():
    from benchmark.board.leaderboard import _recipe_label

    adapter = {"recipe": "qa", "lora": {"r": 16, "use_dora": True}, "train": {"lr": 3e-3, "epochs": 6},
               "per_model": {"qwen2.5-0.5b": {"lr": 3e-4}}}
    assert _recipe_label(adapter, "qwen2.5-0.5b") == "qa (r=16, DoRA, lr 0.0003 x 6 ep)"
    assert _recipe_label(adapter, "smollm2-135m") == "qa (r=16, DoRA, lr 0.003 x 6 ep)"
    assert _recipe_label({"recipe": "none"}, "qwen2.5-0.5b") == "none"


def _data(where: Path) -> list[dict]:
    doc = json.loads((where / leaderboard.DATA_JSON).read_text(encoding="utf-8"))
    assert doc["format_version"] == leaderboard.DATA_FORMAT_VERSION
    assert all(list(row) == doc["columns"] for row in doc["rows"])
    return doc["rows"]


def _data_csv(where: Path) -> list[list[str]]:
    with open(where / leaderboard.DATA_CSV, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_data_rows_match_the_page(rendered):
    """leaderboard.json holds, for each ranked entry, the numbers the Ranking table shows (rounded
    there to one decimal), and the unrounded-to-4 details the page shows elsewhere."""
    where, md = rendered
    rows = [r for r in _data(where) if (r["tier"], r["dataset"], r["model"], r["dtype"]) == tuple(NARR.split(" · "))]
    table = _table(md, NARR, "Ranking")
    assert [r["submission"] for r in rows] == list(table) == ["gamma", "alpha", "beta"]
    for r in rows:
        cells = table[r["submission"]]
        assert cells["#"] == str(r["rank"])
        assert cells["mean 0<ρ<1"] == f"**{leaderboard.fmt_score(r['mean'])}**"
        assert cells["95% CI"] == leaderboard.fmt_ci(r["mean_ci95_lo"], r["mean_ci95_hi"])
        shown = leaderboard.DASH if r["vs_top"] is None else (
            f"{r['vs_top']:+.1f} {leaderboard.fmt_ci(r['vs_top_ci95_lo'], r['vs_top_ci95_hi'], signed=True)}")
        assert cells["vs #1 (95% CI)"] == shown
        assert (cells["ρ=0"], cells["ρ=1"]) == (leaderboard.fmt_score(r["rho0"]), leaderboard.fmt_score(r["rho1"]))
        assert cells["dtype · hardware"] == f"{r['dtype']} · {r['hardware']}"
    alpha = {r["submission"]: r for r in rows}["alpha"]
    assert (alpha["mean"], alpha["vs_top"], alpha["base_mean"]) == (70.0, -20.0, 50.0)
    assert alpha["headline_condition"] == "base_kv_adapter_decode" and alpha["unranked_reason"] is None
    assert alpha["adapter_bytes"] == ADAPTER_BYTES
    assert [alpha[f"memory_bytes_rho={r:g}"] for r in RHOS] == [kv_bytes(r) + ADAPTER_BYTES for r in RHOS]
    assert (alpha["documents"], alpha["questions"], alpha["spec_version"], alpha["date"]) == (
        2, 4, "mini-1.0", "2026-03-01")
    assert alpha["rerun"] == "not re-run"
    assert alpha["result"].endswith("results/alpha/mini/smollm2-135m/mini-narrative.json")
    assert (where / alpha["result"]).is_file()
    assert alpha["submission_link"] == "../submissions/alpha/"
    assert {r["submission"]: r for r in rows}["beta"]["adapter_bytes"] is None  # no adapter: '–' on the page


def test_data_csv_has_the_json_rows(rendered):
    where = rendered[0]
    rows = _data(where)
    header, *lines = _data_csv(where)
    assert header == list(rows[0])
    assert lines == [["" if v is None else str(v) for v in r.values()] for r in rows]
    assert len(rows) == 4  # alpha on both datasets, beta, gamma; not the dev split


def test_data_result_path_is_relative_to_the_leaderboard_folder(tmp_path):
    write_result(tmp_path / "leaderboard" / "results", "alpha", "base", {"base": [80, 50, 10]})
    lb = tmp_path / "leaderboard"
    leaderboard.render(lb / "results", lb / "README.md", lb / "plots")
    (row,) = _data(lb)
    assert row["result"] == "results/alpha/mini/smollm2-135m/mini-narrative.json"
    assert (lb / row["result"]).is_file()
