"""The leaderboard: ``leaderboard/README.md`` and ``leaderboard/plots/*.svg``, regenerated from
the result files under ``leaderboard/results/`` and nothing else.

Rendering is deterministic: no clock is read, every list is sorted, and the SVG plots are
written with a fixed hash salt and no date, so rendering twice gives byte-identical files and
``check_up_to_date()`` can tell whether the committed leaderboard matches the results.

For every (tier, dataset, model) there are two tables, one row per submission:
  * quality: ROUGE-L at each rho under the submission's headline condition, its mean over the
    rho grid (the ranking key) with a 95% CI (bootstrap over documents of the headline
    predictions pooled over rho), the base (KV-only) mean, the LoRA margin at rho = 1 and the
    best condition;
  * memory: what the headline condition holds per document at each rho (kept KV + adapter);
the paper's three findings measured on the group's results (``findings``); and two plots: ROUGE-L
against rho with and without the adapter, and ROUGE-L against memory with the quality/memory
frontier.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .metrics import clustered_bootstrap_ci
from .results import load_result
from .spec import CONDITION_HELP, TIERS

DASH = "–"
SVG_SALT = "lorakv-bench-leaderboard"


# ---------------------------------------------------------------- loading


@dataclass
class Entry:
    """One result file, reduced to what the leaderboard shows."""

    name: str
    tier: str
    dataset: str
    model: str
    model_name: str
    headline: str
    compressor: str
    recipe: str
    spec_version: str
    date: str
    rhos: list[float]
    cells: dict[tuple[float, str], dict]
    n_documents: int
    n_questions: int
    ci: tuple[float, float]
    adapter_bytes: float
    source: str
    conditions: list[str] = field(default_factory=list)
    adapter: dict = field(default_factory=dict)  # the submission's adapter section, as submitted

    def rouge(self, rho: float, cond: str | None = None) -> float | None:
        cell = self.cells.get((rho, cond or self.headline))
        return None if cell is None else cell["rouge_l"]

    def mean(self, cond: str | None = None) -> float | None:
        vals = [self.rouge(r, cond) for r in self.rhos]
        return None if not vals or any(v is None for v in vals) else sum(vals) / len(vals)

    def memory(self, rho: float) -> float | None:
        cell = self.cells.get((rho, self.headline))
        return None if cell is None else cell["memory_bytes"]

    def margin(self, rho: float) -> float | None:
        """Headline minus base (KV-only) ROUGE-L at ``rho``: what the adapter adds there."""
        if self.headline == "base":
            return None
        head, base = self.rouge(rho), self.rouge(rho, "base")
        return None if head is None or base is None else head - base

    def margin_at_1(self) -> float | None:
        return self.margin(1.0)

    def best_condition(self) -> tuple[str, float] | None:
        means = [(m, c) for c in self.conditions if (m := self.mean(c)) is not None]
        if not means:
            return None
        mean, cond = min(means, key=lambda mc: (-mc[0], mc[1]))  # highest mean; ties: alphabetical first
        return cond, mean

    def sort_key(self):
        m = self.mean()
        return (m is None, -(m if m is not None else 0.0), self.name)


def _compressor_label(cfg: dict) -> str:
    kwargs = cfg.get("kwargs") or {}
    args = ", ".join(f"{k}={kwargs[k]}" for k in sorted(kwargs))
    return f"{cfg['press']}({args})" if args else cfg["press"]


def _recipe_label(adapter: dict) -> str:
    recipe = adapter.get("recipe", "none")
    lora = adapter.get("lora") or {}
    if recipe == "none":
        return "none"
    bits = [f"r={lora['r']}"] if "r" in lora else []
    if lora.get("use_dora"):
        bits.append("DoRA")
    train = adapter.get("train") or {}
    if "lr" in train and "epochs" in train:
        bits.append(f"lr {train['lr']:g} x {train['epochs']} ep")
    return f"{recipe} ({', '.join(bits)})" if bits else recipe


def _entry(data: dict, source: str) -> Entry:
    sub = data["submission"]
    headline = sub["headline_condition"]
    cells = {(float(c["rho"]), c["condition"]): c for c in data["cells"]}
    preds = [p for p in data["predictions"] if p["condition"] == headline]
    ci = clustered_bootstrap_ci([p["rouge_l"] for p in preds], [p["doc_id"] for p in preds]) if preds else (
        float("nan"), float("nan"))
    ad = [(d.get("adapter") or {}).get("bytes", 0) or 0 for d in data["documents"]]
    present = {c for _, c in cells}
    return Entry(
        name=sub["name"], tier=data["tier"], dataset=data["dataset"]["id"], model=data["model"]["id"],
        model_name=data["model"]["name"], headline=headline, compressor=_compressor_label(sub["compressor"]),
        recipe=_recipe_label(sub["adapter"]), spec_version=data["spec_version"], date=data["updated"][:10],
        rhos=sorted(float(r) for r in data["rhos"]), cells=cells, n_documents=len(data["documents"]),
        n_questions=len({(p["doc_id"], p["question_id"]) for p in data["predictions"]}), ci=ci,
        adapter_bytes=(sum(ad) / len(ad) if ad and headline != "base" else 0.0), source=source,
        conditions=[c for c in CONDITION_HELP if c in present], adapter=sub["adapter"],
    )


def load_entries(results_root: str | Path) -> list[Entry]:
    """Every test-split result file under ``results_root`` (validated against the result schema)."""
    root = Path(results_root)
    entries = []
    for path in sorted(root.rglob("*.json")) if root.exists() else []:
        data = load_result(path)
        if data["dataset"]["split"] != "test":
            continue
        entries.append(_entry(data, path.relative_to(root).as_posix()))
    return entries


def group_entries(entries: list[Entry]) -> dict[tuple[str, str, str], list[Entry]]:
    """(tier, dataset, model) -> entries ranked by the headline mean over rho (best first)."""
    groups: dict[tuple[str, str, str], list[Entry]] = defaultdict(list)
    for e in entries:
        groups[(e.tier, e.dataset, e.model)].append(e)
    tier_order = {t: i for i, t in enumerate(TIERS)}
    ordered = sorted(groups, key=lambda k: (tier_order.get(k[0], len(TIERS)), k[0], k[1], k[2]))
    return {k: sorted(groups[k], key=Entry.sort_key) for k in ordered}


# ---------------------------------------------------------------- formatting


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def fmt_rho(rho: float) -> str:
    return f"{rho:g}"


def fmt_score(x: float | None, signed: bool = False) -> str:
    if x is None or x != x:
        return DASH
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def fmt_bytes(n: float | None) -> str:
    """Binary units: 512 B, 12.0 KiB, 3.25 MiB, 1.50 GiB."""
    if n is None:
        return DASH
    if n < 1024:
        return f"{n:.0f} B"
    for unit, scale, digits in (("KiB", 1024, 1), ("MiB", 1024**2, 2), ("GiB", 1024**3, 2)):
        if n < scale * 1024 or unit == "GiB":
            return f"{n / scale:.{digits}f} {unit}"
    raise AssertionError


def _slug(*parts: str) -> str:
    return "__".join(re.sub(r"[^A-Za-z0-9._-]+", "_", p) for p in parts)


def frontier(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Points (memory, rouge, label) not dominated by one with less or equal memory and more ROUGE-L."""
    out, best = [], float("-inf")
    for mem, score, label in sorted(points, key=lambda p: (p[0], -p[1], p[2])):
        if score > best:
            out.append((mem, score, label))
            best = score
    return out


def quality_table(group: list[Entry]) -> str:
    from tabulate import tabulate

    rhos = sorted({r for e in group for r in e.rhos})
    headers = ["#", "submission", "compressor", "adapter", "headline condition"]
    headers += [f"ρ={fmt_rho(r)}" for r in rhos]
    headers += ["mean", "95% CI", "base mean", "LoRA margin @ρ=1", "best condition", "spec", "date"]
    rows = []
    for i, e in enumerate(group, 1):
        best = e.best_condition()
        rows.append(
            [i, f"**{_cell(e.name)}**", f"`{_cell(e.compressor)}`", _cell(e.recipe), e.headline]
            + [fmt_score(e.rouge(r)) if r in e.rhos else DASH for r in rhos]
            + [f"**{fmt_score(e.mean())}**", f"[{fmt_score(e.ci[0])}, {fmt_score(e.ci[1])}]", fmt_score(e.mean("base")),
               fmt_score(e.margin_at_1(), signed=True), DASH if best is None else f"{best[0]} ({best[1]:.1f})",
               e.spec_version, e.date]
        )
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def memory_table(group: list[Entry]) -> str:
    from tabulate import tabulate

    rhos = sorted({r for e in group for r in e.rhos})
    headers = ["#", "submission", "adapter"] + [f"ρ={fmt_rho(r)}" for r in rhos] + ["documents", "questions"]
    rows = []
    for i, e in enumerate(group, 1):
        rows.append([i, _cell(e.name), fmt_bytes(e.adapter_bytes) if e.headline != "base" else DASH]
                    + [fmt_bytes(e.memory(r)) if r in e.rhos else DASH for r in rhos]
                    + [e.n_documents, e.n_questions])
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _group_points(group: list[Entry]) -> list[tuple[float, float, str]]:
    return [(e.memory(r), e.rouge(r), f"{e.name} ρ={fmt_rho(r)}")
            for e in group for r in e.rhos if e.memory(r) is not None and e.rouge(r) is not None]


#: train settings that only one recipe reads: they don't make a QA and an NTP adapter differ otherwise
_RECIPE_SPECIFIC_TRAIN = ("chunk_tokens", "hook", "qa_source")


def findings(group: list[Entry]) -> list[str]:
    """The paper's three findings, measured on one (tier, dataset, model) group of results.

    One line per finding that the group's results can speak to (none when they can't):
      1. the LoRA margin (headline - base) is small while the cache is intact and large at rho = 1;
      2. the adapter works best as decoding-time memory: base_kv_adapter_decode >= adapter_all;
      3. QA supervision beats raw next-token training: a ``qa`` entry against the ``ntp`` entry with
         the same compressor, headline condition and adapter settings.
    """
    adapted = [e for e in group if e.headline != "base" and e.rhos]
    out = []
    margins = [(e, min(e.rhos), e.margin(min(e.rhos)), e.margin(1.0)) for e in adapted if min(e.rhos) < 1.0]
    margins = [(e, lo, m_lo, m_hi) for e, lo, m_lo, m_hi in margins if m_lo is not None and m_hi is not None]
    if margins:
        larger = sum(m_hi > m_lo for _, _, m_lo, m_hi in margins)
        out.append("**LoRA margin** (headline − base) at the smallest ρ → at ρ = 1: "
                   + "; ".join(f"{e.name} {m_lo:+.1f} (ρ={fmt_rho(lo)}) → {m_hi:+.1f}" for e, lo, m_lo, m_hi in margins)
                   + f". Larger at ρ = 1 for {larger} of {len(margins)} (paper: little at ρ = 0, +13–21 at ρ = 1).")
    pairs = [(e.rouge(r, "base_kv_adapter_decode"), e.rouge(r, "adapter_all")) for e in adapted for r in e.rhos]
    pairs = [(dec, every) for dec, every in pairs if dec is not None and every is not None]
    if pairs:
        at_least = sum(dec >= every for dec, every in pairs)
        diff = round(sum(dec - every for dec, every in pairs) / len(pairs), 1) + 0.0  # + 0.0: no '-0.0'
        out.append(f"**Decoding-time memory**: `base_kv_adapter_decode` ≥ `adapter_all` at {at_least} of {len(pairs)} "
                   f"(submission, ρ) points, {diff:+.1f} ROUGE-L on average (paper: the adapter works best "
                   "while decoding only).")
    by_setup: dict[tuple, dict[str, Entry]] = defaultdict(dict)
    for e in adapted:
        train = {k: v for k, v in (e.adapter.get("train") or {}).items() if k not in _RECIPE_SPECIFIC_TRAIN}
        setup = (e.compressor, e.headline, repr(e.adapter.get("lora")), repr(sorted(train.items())))
        by_setup[setup][e.adapter.get("recipe")] = e
    versus = sorted(((d["qa"], d["ntp"]) for d in by_setup.values() if "qa" in d and "ntp" in d
                     and d["qa"].mean() is not None and d["ntp"].mean() is not None), key=lambda p: p[0].name)
    if versus:
        higher = sum(qa.mean() > ntp.mean() for qa, ntp in versus)
        out.append("**QA vs NTP recipe** (same compressor and adapter settings, headline mean): "
                   + "; ".join(f"{qa.name} {qa.mean():.1f} vs {ntp.name} {ntp.mean():.1f}" for qa, ntp in versus)
                   + f". QA higher in {higher} of {len(versus)} (paper: QA supervision beats next-token training).")
    return out


HEADER = """# lorakv-bench leaderboard

<!-- Generated by `lorakv-bench leaderboard` from leaderboard/results/ only; do not edit by hand. -->

How much of a long document's answer quality does a **document-specific LoRA adapter** recover when
the document's **KV cache is compressed**? (Benchmark after arXiv 2606.05698.) Each submission is a
KV-cache compressor (a [kvpress](https://github.com/NVIDIA/kvpress) press) plus an adapter recipe.

* **ρ (rho)** is the fraction of the *document's* KV entries the compressor evicts, per layer and KV
  head: ρ = 0 keeps the full cache, ρ = 1 keeps none of the document (the model answers from the
  prompt without the document, i.e. from the adapter alone). The instruction, question and answer are
  never evicted.
* **Conditions** (which weights prefill the document, score its entries, and decode):
{conditions}
* **headline condition**: the condition a submission is ranked on (declared in its
  `submission.yaml`; by default `base_kv_adapter_decode` with an adapter, `base` without).
* **ρ columns**: ROUGE-L (0-100, max over gold answers) of the headline condition at that ρ.
  **mean**: over the ρ grid; the ranking key. **95% CI**: document-clustered bootstrap of the
  headline predictions pooled over ρ. **base mean**: the same submission's compressor without any
  adapter (KV-only). **LoRA margin @ρ=1**: headline − base at ρ = 1 (what the adapter knows without
  any of the document in the cache). **best condition**: the condition with the highest mean.
* **Memory** per document under the headline condition: kept KV bytes plus the adapter's bytes.

Regenerate after adding results with `lorakv-bench leaderboard` (CI fails when this file or the plots
are stale). How to submit: [CONTRIBUTING.md]({contributing}).
"""


def render_markdown(entries: list[Entry], plot_links: dict[tuple[str, str, str], dict[str, str]], contributing: str) -> str:
    conditions = "\n".join(f"  * `{c}`: {h}" for c, h in CONDITION_HELP.items())
    out = [HEADER.format(conditions=conditions, contributing=contributing)]
    groups = group_entries(entries)
    if not groups:
        out.append("\n_No results yet._ Run `lorakv-bench evaluate submissions/<name>`, then `lorakv-bench leaderboard`.\n")
        return "\n".join(out)
    out.append("## Contents\n")
    for (tier, ds, model), group in groups.items():
        anchor = re.sub(r"[^a-z0-9 _-]", "", f"{tier} {ds} {model}".lower()).replace(" ", "-")
        out.append(f"* [{tier} · {ds} · {model}](#{anchor}) ({len(group)} submissions)")
    out.append("")
    for key, group in groups.items():
        tier, ds, model = key
        out.append(f"## {tier} {ds} {model}\n")
        specs = sorted({e.spec_version for e in group})
        out.append(f"Tier **{tier}**, dataset **{ds}** (test split), model **{model}** ({group[0].model_name}); "
                   f"spec {', '.join(specs)}.\n")
        out.append("### Quality (ROUGE-L, headline condition)\n")
        out.append(quality_table(group) + "\n")
        out.append("### Memory per document (kept KV + adapter, headline condition)\n")
        out.append(memory_table(group) + "\n")
        front = frontier(_group_points(group))
        if front:
            out.append("Quality/memory frontier (no other point has higher ROUGE-L for less memory): "
                       + "; ".join(f"{label} ({fmt_bytes(mem)}, {score:.1f})" for mem, score, label in front) + ".\n")
        found = findings(group)
        if found:
            out.append("### The paper's findings, measured on these results\n")
            out.append("\n".join(f"* {line}" for line in found) + "\n")
        links = plot_links.get(key, {})
        if links:
            out.append(f"![ROUGE-L vs rho, {tier} {ds} {model}]({links['rho']}) "
                       f"![ROUGE-L vs memory, {tier} {ds} {model}]({links['memory']})\n")
    return "\n".join(out)


# ---------------------------------------------------------------- plots


@contextlib.contextmanager
def _plot_style():
    """matplotlib's defaults (whatever the user's matplotlibrc says) and reproducible SVG ids."""
    import matplotlib
    import matplotlib.style

    with matplotlib.style.context("default"), matplotlib.rc_context({"svg.hashsalt": SVG_SALT, "svg.fonttype": "path"}):
        yield


def _svg(fig, path: Path) -> None:
    with _plot_style():
        fig.savefig(path, format="svg", metadata={"Date": None, "Creator": "lorakv-bench"})


def _new_figure():
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasSVG(fig)
    return fig


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def plot_rho(group: list[Entry], title: str, path: Path) -> None:
    """ROUGE-L vs rho per submission: headline (solid) and base, no adapter (dashed)."""
    fig = _new_figure()
    ax = fig.add_subplot()
    for e, color in zip(group, _colors(len(group))):
        head = [(r, e.rouge(r)) for r in e.rhos if e.rouge(r) is not None]
        if head:
            ax.plot(*zip(*head), marker="o", color=color, label=f"{e.name}: {e.headline}")
        if e.headline != "base":
            base = [(r, e.rouge(r, "base")) for r in e.rhos if e.rouge(r, "base") is not None]
            if base:
                ax.plot(*zip(*base), marker="x", linestyle="--", color=color, label=f"{e.name}: base (no adapter)")
    ax.set_xlabel("ρ (fraction of document KV entries evicted)")
    ax.set_ylabel("ROUGE-L")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    _svg(fig, path)


def plot_memory(group: list[Entry], title: str, path: Path) -> None:
    """ROUGE-L vs memory (kept KV + adapter) per submission and rho, with the frontier."""
    fig = _new_figure()
    ax = fig.add_subplot()
    points = _group_points(group)
    unit, scale = ("MiB", 1024**2) if points and max(p[0] for p in points) >= 1024**2 else ("KiB", 1024)
    for e, color in zip(group, _colors(len(group))):
        pts = [(e.memory(r) / scale, e.rouge(r), r) for r in e.rhos if e.memory(r) is not None and e.rouge(r) is not None]
        if not pts:
            continue
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=color, label=f"{e.name}: {e.headline}")
        for x, y, r in pts:
            ax.annotate(f"ρ={fmt_rho(r)}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6, color=color)
    front = frontier(points)
    if front:
        ax.step([p[0] / scale for p in front], [p[1] for p in front], where="post", color="black", linestyle=":",
                linewidth=1, label="frontier")
    if points and min(p[0] for p in points) > 0:
        ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel(f"memory per document ({unit}): kept KV + adapter")
    ax.set_ylabel("ROUGE-L")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    _svg(fig, path)


# ---------------------------------------------------------------- render / check


def _link(target: Path, md_dir: Path) -> str:
    return Path(os.path.relpath(Path(target).resolve(), Path(md_dir).resolve())).as_posix()


def _render(results_root, out_md: Path, plots_dir: Path, plots_link: str, contributing: str) -> str:
    entries = load_entries(results_root)
    groups = group_entries(entries)
    plots_dir.mkdir(parents=True, exist_ok=True)
    links: dict[tuple[str, str, str], dict[str, str]] = {}
    written = set()
    for key, group in groups.items():
        tier, ds, model = key
        title = f"{ds} · {model} ({tier})"
        names = {"rho": _slug(tier, ds, model) + "__rho.svg", "memory": _slug(tier, ds, model) + "__memory.svg"}
        with _plot_style():
            plot_rho(group, title, plots_dir / names["rho"])
            plot_memory(group, title, plots_dir / names["memory"])
        written |= set(names.values())
        links[key] = {k: f"{plots_link}/{v}" if plots_link not in ("", ".") else v for k, v in names.items()}
    for stale in sorted(plots_dir.glob("*.svg")):  # plots of groups that no longer have results
        if stale.name not in written:
            stale.unlink()
    text = render_markdown(entries, links, contributing)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text, encoding="utf-8")
    return text


def _contributing_link(out_md: Path) -> str:
    """CONTRIBUTING.md at the repository root (the folder above leaderboard/ by default)."""
    return _link(Path(out_md).resolve().parent.parent / "CONTRIBUTING.md", Path(out_md).resolve().parent)


def render(results_root: str | Path = "leaderboard/results", out_md: str | Path = "leaderboard/README.md",
           plots_dir: str | Path = "leaderboard/plots") -> str:
    """Regenerate the Markdown leaderboard and its plots from the result files; returns the Markdown."""
    out_md, plots_dir = Path(out_md), Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    return _render(results_root, out_md, plots_dir, _link(plots_dir, out_md.parent), _contributing_link(out_md))


def stale_files(results_root: str | Path = "leaderboard/results", out_md: str | Path = "leaderboard/README.md",
                plots_dir: str | Path = "leaderboard/plots", *, plots: bool = True) -> list[str]:
    """Files that differ from a fresh render (missing, changed or extra); empty = up to date."""
    out_md, plots_dir = Path(out_md), Path(plots_dir)
    link = _link(plots_dir, out_md.parent)
    with tempfile.TemporaryDirectory(prefix="lorakv-leaderboard-") as tmp:
        tmp_md, tmp_plots = Path(tmp) / "README.md", Path(tmp) / "plots"
        _render(results_root, tmp_md, tmp_plots, link, _contributing_link(out_md))
        stale = []
        if not out_md.exists() or out_md.read_bytes() != tmp_md.read_bytes():
            stale.append(str(out_md))
        if plots:
            fresh = {p.name: p.read_bytes() for p in tmp_plots.glob("*.svg")}
            have = {p.name: p.read_bytes() for p in plots_dir.glob("*.svg")} if plots_dir.exists() else {}
            for name in sorted(set(fresh) | set(have)):
                if fresh.get(name) != have.get(name):
                    stale.append(str(plots_dir / name))
    return stale


def check_up_to_date(results_root: str | Path = "leaderboard/results", out_md: str | Path = "leaderboard/README.md",
                     plots_dir: str | Path = "leaderboard/plots", *, plots: bool = True) -> bool:
    """Whether the committed leaderboard equals what ``render()`` would write now."""
    return not stale_files(results_root, out_md, plots_dir, plots=plots)
