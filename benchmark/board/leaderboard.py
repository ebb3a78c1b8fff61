"""The leaderboard: ``leaderboard/README.md``, ``leaderboard/plots/*.svg`` and the same numbers as
data (``leaderboard/leaderboard.json`` and ``.csv``), regenerated from the result files under
``leaderboard/results/`` and nothing else.

Rendering is deterministic: no clock is read, every list is sorted, the bootstrap is seeded and
the SVG plots are written with a fixed hash salt and no date, so rendering twice gives
byte-identical files and ``check_up_to_date()`` can tell whether the committed leaderboard
matches the results.

Entries are grouped by (tier, dataset, model, dtype): results in different precisions are never
ranked together. Each group opens with a compact ranking on the rho values where the compressor
acts (0 < rho < 1; at rho = 0 and rho = 1 every compressor is the same by construction, so those
are shown apart), with shared ranks where the paired bootstrap cannot separate entries
(``ranking``). Entries whose adapter training diverged are listed apart, unranked, with the
reason. Details, memory (one row per distinct memory profile), the compressors' own effect over
random eviction (``compressors``), the paper's findings, findings by question stratum (``strata``),
two plots and the paper's figures (``figures``) follow. An overall table per (tier, model, dtype)
pools the datasets. Each table of paired comparisons is followed by its detectable difference
(``metrics.detectable_difference``).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import re
import tempfile
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ADAPTER_ALL, BASE, BASE_KV_ADAPTER_DECODE, train_for
from ..extras import require
from ..paths import sha256_file
from ..protocol.metrics import clustered_bootstrap_ci
from ..protocol.results import load_result
from ..protocol.spec import (
    CONDITION_HELP,
    REHEARSED_TIERS,
    TIERS,
    current_version,
    load_spec,
    spec_name,
    superseded_versions,
)
from . import compressors, figures, strata
from .figures import band, colors, new_figure, plot_style, plot_text, save_svg
from .page import PAGE_HTML, write_page
from .ranking import Ranked, compare, divergence_reason, tiered_ranks

DASH = "–"
UNRECORDED = "not recorded"
MAX_CURVES = 4  # submissions drawn per plot (the top ranked): more legend entries are unreadable


# ---------------------------------------------------------------- loading


@dataclass
class Entry:
    """One result file, reduced to what the leaderboard shows."""

    name: str
    tier: str  # the result's tier, or its spec version where that spec is superseded (protocol.spec.spec_name)
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
    dtype: str = UNRECORDED
    hardware: str = UNRECORDED
    diverged: str | None = None  # why the entry is not ranked
    predictions: list[dict] = field(default_factory=list)  # slim: doc_id, question_id, rho, condition, rouge_l, tags
    rerun: str = "not re-run"  # what `verify --record` re-ran of this exact file

    @property
    def ranked_rhos(self) -> list[float]:
        """The rho values the ranking reads: where the compressor acts."""
        return [r for r in self.rhos if 0.0 < r < 1.0]

    def scores(self, cond: str | None = None, cluster: str = "") -> dict[tuple, float]:
        """{(cluster + doc_id, question_id, rho): ROUGE-L} of ``cond`` (headline) at the ranked rhos."""
        cond = cond or self.headline
        return {(cluster + p["doc_id"], p["question_id"], p["rho"]): p["rouge_l"] for p in self.predictions
                if p["condition"] == cond and 0.0 < p["rho"] < 1.0}

    def ranked_mean(self) -> float | None:
        """Mean headline ROUGE-L over the questions at 0 < rho < 1: the ranking key."""
        vals = list(self.scores().values())
        return sum(vals) / len(vals) if vals else None

    def rouge(self, rho: float, cond: str | None = None) -> float | None:
        cell = self.cells.get((rho, cond or self.headline))
        return None if cell is None else cell["rouge_l"]

    def rouge_ci(self, rho: float, cond: str | None = None) -> tuple[float, float] | None:
        cell = self.cells.get((rho, cond or self.headline))
        return None if cell is None else tuple(cell["rouge_l_ci95"])

    def mean(self, cond: str | None = None, rhos: list[float] | None = None) -> float | None:
        vals = [self.rouge(r, cond) for r in (self.rhos if rhos is None else rhos)]
        return None if not vals or any(v is None for v in vals) else sum(vals) / len(vals)

    def base_mean(self) -> float | None:
        """Mean base (KV-only) ROUGE-L over the cells at 0 < rho < 1: the same compressor without an adapter."""
        return self.mean(BASE, self.ranked_rhos) if self.ranked_rhos else None

    def memory(self, rho: float) -> float | None:
        cell = self.cells.get((rho, self.headline))
        return None if cell is None else cell["memory_bytes"]

    def margin(self, rho: float) -> float | None:
        """Headline minus base (KV-only) ROUGE-L at ``rho``: what the adapter adds there."""
        if self.headline == BASE:
            return None
        head, base = self.rouge(rho), self.rouge(rho, BASE)
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
        m = self.ranked_mean()
        return (self.diverged is not None, m is None, -(m if m is not None else 0.0), self.name)


def _compressor_label(cfg: dict) -> str:
    """``Press(k=v, ...)``; a nested press (a ``press`` kwarg holding a press section) is written inline."""
    kwargs = cfg.get("kwargs") or {}
    args = ", ".join(f"{k}={_compressor_label(v) if isinstance(v, dict) and 'press' in v else kwargs[k]}"
                     for k, v in sorted(kwargs.items()))
    return f"{cfg['press']}({args})" if args else cfg["press"]


def _recipe_label(adapter: dict, model_id: str) -> str:
    """The recipe as trained for ``model_id`` (:func:`train_for`)."""
    recipe = adapter.get("recipe", "none")
    lora = adapter.get("lora") or {}
    if recipe == "none":
        return "none"
    bits = [f"r={lora['r']}"] if "r" in lora else []
    if lora.get("use_dora"):
        bits.append("DoRA")
    train = train_for(adapter, model_id)
    if "lr" in train and "epochs" in train:
        bits.append(f"lr {train['lr']:g} x {train['epochs']} ep")
    return f"{recipe} ({', '.join(bits)})" if bits else recipe


def _hardware(env: dict) -> str:
    """The GPU's name when there was one, else the device (cpu)."""
    return str(env.get("gpu_name") or env.get("device") or UNRECORDED)


def _entry(data: dict, source: str) -> Entry:
    sub = data["submission"]
    headline = sub["headline_condition"]
    cells = {(float(c["rho"]), c["condition"]): c for c in data["cells"]}
    preds = [{"doc_id": p["doc_id"], "question_id": p["question_id"], "rho": float(p["rho"]),
              "condition": p["condition"], "rouge_l": p["rouge_l"], "tags": p.get("tags") or []}
             for p in data["predictions"]]
    ranked = [p for p in preds if p["condition"] == headline and 0.0 < p["rho"] < 1.0]
    ci = clustered_bootstrap_ci([p["rouge_l"] for p in ranked], [p["doc_id"] for p in ranked]) if ranked else (
        float("nan"), float("nan"))
    ad = [(d.get("adapter") or {}).get("bytes", 0) or 0 for d in data["documents"]]
    present = {c for _, c in cells}
    env = data.get("environment") or {}
    return Entry(
        name=sub["name"], tier=spec_name(data), dataset=data["dataset"]["id"], model=data["model"]["id"],
        model_name=data["model"]["name"], headline=headline, compressor=_compressor_label(sub["compressor"]),
        recipe=_recipe_label(sub["adapter"], data["model"]["id"]), spec_version=data["spec_version"],
        date=data["updated"][:10],
        rhos=sorted(float(r) for r in data["rhos"]), cells=cells, n_documents=len(data["documents"]),
        n_questions=len({(p["doc_id"], p["question_id"]) for p in data["predictions"]}), ci=ci,
        adapter_bytes=(sum(ad) / len(ad) if ad and headline != BASE else 0.0), source=source,
        conditions=[c for c in CONDITION_HELP if c in present], adapter=sub["adapter"],
        dtype=str(env.get("dtype") or UNRECORDED), hardware=_hardware(env),
        diverged=divergence_reason(data["documents"]) if headline != BASE else None, predictions=preds,
    )


def load_entries(results_root: str | Path) -> list[Entry]:
    """Every test-split result file under ``results_root`` (validated against the result schema)."""
    root = Path(results_root)
    entries = []
    for path in sorted(root.rglob("*.json")) if root.exists() else []:
        data = load_result(path)
        if data["dataset"]["split"] != "test":
            continue
        entry = _entry(data, path.relative_to(root).as_posix())
        entry.rerun = _rerun(path, root.parent / "verified" / path.relative_to(root))
        entries.append(entry)
    return entries


def _rerun(result: Path, record: Path) -> str:
    """What verify re-ran of this result file, from its record (only a record of these exact bytes)."""
    if not record.exists():
        return "not re-run"
    try:
        rec = json.loads(record.read_text())
        if rec.get("result_sha256") != sha256_file(result):
            return "not re-run (the record is of another version of the file)"
        if rec.get("ok") is not True:
            return "FAILED verify"
        return (f"{int(rec['plans_checked'])} plans, {len(rec['pairs'])} of {int(rec['ranked_pairs'])} pairs "
                f"(p={float(rec['detection_of_3_tampered']):.2f})")
    except (ValueError, KeyError, TypeError):
        return f"unreadable verify record {record.name}"


GroupKey = tuple[str, str, str, str]  # (tier, dataset, model, dtype)


def _tier_order(tier: str):
    """Tiers in config order, then the superseded specs (newest first), then anything else by name."""
    known = [*TIERS, *reversed(superseded_versions())]
    return (known.index(tier) if tier in known else len(known)), tier


def group_entries(entries: list[Entry]) -> dict[GroupKey, list[Entry]]:
    """(tier, dataset, model, dtype) -> entries, ranked ones best first, then the unranked."""
    groups: dict[GroupKey, list[Entry]] = defaultdict(list)
    for e in entries:
        groups[(e.tier, e.dataset, e.model, e.dtype)].append(e)
    ordered = sorted(groups, key=lambda k: (_tier_order(k[0]), k[1], k[2], k[3]))
    return {k: sorted(groups[k], key=Entry.sort_key) for k in ordered}


def rankable(e: Entry) -> bool:
    return e.diverged is None and e.ranked_mean() is not None


def unranked_reason(e: Entry) -> str:
    if e.diverged:
        return e.diverged
    return "no ρ strictly between 0 and 1 in this result (ρ = 0 and ρ = 1 do not tell compressors apart)"


def rank_group(group: list[Entry]) -> list[tuple[Entry, Ranked]]:
    """The rankable entries of a group with their shared ranks (best first)."""
    ranked = sorted((e for e in group if rankable(e)), key=Entry.sort_key)
    return list(zip(ranked, tiered_ranks([e.scores() for e in ranked])))


def rank_groups(entries: list[Entry]) -> dict[GroupKey, list[tuple[Entry, Ranked]]]:
    """:func:`rank_group` of every group: computed once, read by the page and the data files alike."""
    return {key: rank_group(group) for key, group in group_entries(entries).items()}


@dataclass
class Overall:
    """One submission on every dataset of a (tier, model, dtype): questions pooled across datasets."""

    name: str
    entries: list[Entry]  # one per dataset, in dataset order

    @property
    def compressor(self) -> str:
        return self.entries[0].compressor

    def scores(self, cond: str | None = None) -> dict[tuple, float]:
        """:meth:`Entry.scores` of every dataset; documents of different datasets are different clusters."""
        out: dict[tuple, float] = {}
        for e in self.entries:
            out.update(e.scores(cond, cluster=f"{e.dataset}/"))
        return out

    def mean(self) -> float:
        vals = list(self.scores().values())
        return sum(vals) / len(vals)


def overall_groups(
    entries: list[Entry],
) -> dict[tuple[str, str, str], tuple[list[str], list[Overall], list[tuple[str, str]]]]:
    """(tier, model, dtype) -> (datasets, submissions on all of them best first, [(name, why unranked)])."""
    by_key: dict[tuple[str, str, str], dict[str, dict[str, Entry]]] = defaultdict(lambda: defaultdict(dict))
    for e in entries:
        by_key[(e.tier, e.model, e.dtype)][e.name][e.dataset] = e
    out = {}
    for key in sorted(by_key, key=lambda k: (_tier_order(k[0]), k[1], k[2])):
        subs = by_key[key]
        datasets = sorted({ds for per in subs.values() for ds in per})
        if len(datasets) < 2:  # one dataset: the group's own table already says it all
            continue
        full, apart = [], []
        for name in sorted(subs):
            per = subs[name]
            missing = [ds for ds in datasets if ds not in per]
            bad = [per[ds] for ds in datasets if ds in per and not rankable(per[ds])]
            if missing:
                apart.append((name, f"no result on {', '.join(missing)}"))
            elif bad:
                apart.append((name, f"{bad[0].dataset}: {unranked_reason(bad[0])}"))
            else:
                full.append(Overall(name, [per[ds] for ds in datasets]))
        full.sort(key=lambda o: (-o.mean(), o.name))
        out[key] = (datasets, full, apart)
    return out


# ---------------------------------------------------------------- formatting


# "_" between two ASCII letters or digits (Q4_1) can neither open nor close emphasis in CommonMark,
# so it stays as it is; every other "_" is escaped.
_MD_SPECIAL = re.compile(r"[\\`*\[\]|#]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
_CODE_SAFE = re.compile(r"[A-Za-z0-9 _.,:;=()\[\]{}'\"+\-/]*")


def escape_md(text) -> str:
    """Text from a result file or a submission, safe anywhere on the page (table cell, heading,
    list item, link text): whitespace runs, newlines included, become one space, so it never starts
    a line; ``& < >`` become HTML entities, so it holds no tag; ``\\ ` * _ [ ] | #`` are
    backslash-escaped (``_`` inside a word needs not), so it makes no emphasis, code, link, cell
    break or heading. Every such string goes through here; only values the result schema restricts
    to an enum (conditions, tier) skip it."""
    text = html.escape(" ".join(str(text).split()), quote=False)
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), text)


def code_md(text) -> str:
    """``text`` as inline code when it holds only characters that read the same there (a code span
    shows backslashes and entities literally), else as :func:`escape_md` text."""
    text = str(text)
    return f"`{text}`" if _CODE_SAFE.fullmatch(text) else escape_md(text)


def fmt_rho(rho: float) -> str:
    return f"{rho:g}"


def fmt_score(x: float | None, signed: bool = False) -> str:
    if x is None or x != x:
        return DASH
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def fmt_ci(lo: float, hi: float, signed: bool = False) -> str:
    return DASH if lo != lo or hi != hi else f"[{fmt_score(lo, signed)}, {fmt_score(hi, signed)}]"


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


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def group_title(key: GroupKey) -> str:
    return " · ".join(key)


def _overall_title(key: tuple[str, str, str]) -> str:
    return "overall · " + " · ".join(key)


def tier_note(tier: str) -> str:
    """The line that marks a rehearsal tier's sections and a superseded spec's ('' for a tier run as itself)."""
    if tier in superseded_versions():
        of = load_spec(tier).tier
        return (f" **Superseded spec {tier}** (`benchmark/specs/superseded/{tier}.yaml`): results made under an "
                f"earlier {of} spec, shown until their entries are re-run on the current one "
                f"({current_version(of)}); its questions and ρ grid differ, so its numbers do not compare with "
                f"the current spec's sections.")
    if tier not in REHEARSED_TIERS:
        return ""
    return (f" **Rehearsal of the {REHEARSED_TIERS[tier]} tier** (stand-in models, fixture documents, capped "
            "training; `benchmark/specs/paper-rehearsal.yaml`): it checks the code path, its scores are not "
            f"{REHEARSED_TIERS[tier]}-tier results.")


def frontier(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Points (memory, rouge, label) not dominated by one with less or equal memory and more ROUGE-L."""
    out, best = [], float("-inf")
    for mem, score, label in sorted(points, key=lambda p: (p[0], -p[1], p[2])):
        if score > best:
            out.append((mem, score, label))
            best = score
    return out


def _table(rows: list[list], headers: list[str]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _sub_url(name: str, submissions_link: str) -> str:
    return f"{submissions_link}/{urllib.parse.quote(name, safe='')}/"


def _sub_link(name: str, submissions_link: str) -> str:
    return f"[{escape_md(name)}]({_sub_url(name, submissions_link)})"


def versus_top(r: Ranked) -> tuple[float, float, float] | None:
    """This entry minus #1 with its paired 95% CI (diff, lo, hi); None for #1 itself and when the
    two share no question."""
    c = r.versus_top
    if c is None or c.n_questions == 0:
        return None
    return -c.diff, -c.hi, -c.lo


def _versus(r: Ranked) -> str:
    if r.versus_top is not None and r.versus_top.n_questions == 0:
        return "no shared questions"
    v = versus_top(r)
    return DASH if v is None else f"{v[0]:+.1f} {fmt_ci(v[1], v[2], signed=True)}"


def detectable_note(what: str, mdes: list[float]) -> list[str]:
    """One line under a table: the detectable difference (``metrics.detectable_difference``) of its
    paired comparisons ``what``, as a range over them; nothing when none can be computed."""
    vals = sorted(round(m, 1) + 0.0 for m in mdes if m == m)
    if not vals:
        return []
    span = f"{vals[0]:.1f}" if vals[0] == vals[-1] else f"{vals[0]:.1f}–{vals[-1]:.1f}"
    return [f"_Detectable difference_ ({what}): {span} points.\n"]


def margin_at_1_mde(e: Entry) -> float:
    """The detectable difference of the LoRA margin @ρ=1 (headline − base, paired on each question);
    NaN without an adapter or without those rows."""
    if e.headline == BASE:
        return float("nan")
    rows = {c: {(p["doc_id"], p["question_id"], p["rho"]): p["rouge_l"] for p in e.predictions
                if p["condition"] == c and p["rho"] == 1.0} for c in (e.headline, BASE)}
    return compare(rows[e.headline], rows[BASE]).mde


def main_table(group: list[Entry], submissions_link: str, ranked: list[tuple[Entry, Ranked]] | None = None) -> str:
    """The compact ranking: shared ranks, the ranked mean (0 < ρ < 1) and ρ = 0 / ρ = 1 apart.
    ``ranked``: :func:`rank_group` of ``group`` when the caller has it already."""
    rows = []
    for e, r in rank_group(group) if ranked is None else ranked:
        rows.append([r.rank, f"**{_sub_link(e.name, submissions_link)}**",
                     f"**{fmt_score(e.ranked_mean())}**", fmt_ci(*e.ci), _versus(r),
                     fmt_score(e.rouge(0.0)) if 0.0 in e.rhos else DASH,
                     fmt_score(e.rouge(1.0)) if 1.0 in e.rhos else DASH,
                     f"{escape_md(e.dtype)} · {escape_md(e.hardware)}"])
    headers = ["#", "submission", "mean 0<ρ<1", "95% CI", "vs #1 (95% CI)", "ρ=0", "ρ=1", "dtype · hardware"]
    return _table(rows, headers)


def unranked_lines(group: list[Entry], submissions_link: str) -> list[str]:
    return [f"* **{_sub_link(e.name, submissions_link)}** (mean 0<ρ<1: {fmt_score(e.ranked_mean())}): "
            f"{escape_md(unranked_reason(e))}" for e in group if not rankable(e)]


def details_table(group: list[Entry]) -> str:
    rhos = sorted({r for e in group for r in e.rhos})
    headers = ["submission", "compressor", "adapter", "headline condition"]
    headers += [f"ρ={fmt_rho(r)}" for r in rhos]
    headers += ["base mean 0<ρ<1", "LoRA margin @ρ=1", "best condition", "spec", "date", "re-run by verify"]
    rows = []
    for e in group:
        best = e.best_condition()
        rows.append(
            [escape_md(e.name), code_md(e.compressor), escape_md(e.recipe), e.headline]
            + [fmt_score(e.rouge(r)) if r in e.rhos else DASH for r in rhos]
            + [fmt_score(e.base_mean()),
               fmt_score(e.margin_at_1(), signed=True), DASH if best is None else f"{best[0]} ({best[1]:.1f})",
               escape_md(e.spec_version), escape_md(e.date), escape_md(e.rerun)]
        )
    return _table(rows, headers)


def memory_table(group: list[Entry]) -> str:
    """One row per distinct memory profile. The budget is exact, so every compressor keeps the same
    KV entries at a given ρ; rows differ only by the adapter, and equal rows are merged."""
    rhos = sorted({r for e in group for r in e.rhos})
    profiles: dict[tuple, list[str]] = defaultdict(list)
    for e in group:
        row = (fmt_bytes(e.adapter_bytes) if e.headline != BASE else DASH,
               *[fmt_bytes(e.memory(r)) if r in e.rhos else DASH for r in rhos], e.n_documents, e.n_questions)
        profiles[row].append(e.name)
    rows = [[", ".join(escape_md(n) for n in sorted(names)), *row]
            for row, names in sorted(profiles.items(), key=lambda kv: sorted(kv[1]))]
    headers = ["submissions", "adapter"] + [f"ρ={fmt_rho(r)}" for r in rhos] + ["documents", "questions"]
    return _table(rows, headers)


def overall_table(datasets: list[str], full: list[Overall], submissions_link: str) -> str:
    ranks = tiered_ranks([o.scores() for o in full])
    rows = []
    for o, r in zip(full, ranks):
        rows.append([r.rank, f"**{_sub_link(o.name, submissions_link)}**", f"**{fmt_score(o.mean())}**", _versus(r)]
                    + [fmt_score(e.ranked_mean()) for e in o.entries])
    table = _table(rows, ["#", "submission", "mean 0<ρ<1, all questions", "vs #1 (95% CI)"]
                   + [escape_md(ds) for ds in datasets])
    return "\n\n".join([table, *detectable_note("vs #1", [r.versus_top.mde for r in ranks[1:]])]).rstrip("\n")


def _pair_text(p: strata.Paired | None) -> str:
    return DASH if p is None else f"{p.headline:.1f} / {p.base:.1f}"


def strata_section(group: list[Entry]) -> list[str]:
    """Covered / uncovered breakdown of the adapted entries whose predictions carry tags."""
    tagged = [e for e in group if e.headline != BASE and strata.has_strata(e.predictions)]
    if not tagged:
        return []
    rhos = sorted({r for e in tagged for r in e.rhos})
    rows, mdes = [], []
    for e in tagged:
        for s in strata.STRATA:
            at = {r: strata.paired(e.predictions, e.headline, s, r) for r in rhos}
            if not any(at.values()):
                continue
            effect = at.get(0.0)
            mdes.append(float("nan") if effect is None else effect.mde)
            n = max(p.n for p in at.values() if p)
            rows.append([escape_md(e.name), s, n] + [_pair_text(at[r]) for r in rhos]
                        + [DASH if effect is None
                           else f"{effect.diff:+.1f} {fmt_ci(effect.lo, effect.hi, signed=True)}"])
    out = ["### By question stratum (headline / base ROUGE-L)\n",
           "`covered`: the question's fact is in the document's `train_qa` pairs (a QA adapter's training data); "
           "`uncovered`: it is not. "
           "**Adapter effect @ρ=0** is headline − base with the full document in the cache (paired, "
           "document-clustered 95% CI).\n",
           _table(rows, ["submission", "stratum", "questions"] + [f"ρ={fmt_rho(r)}" for r in rhos]
                  + ["adapter effect @ρ=0"]) + "\n", *detectable_note("adapter effect @ρ=0", mdes)]
    leaks = []
    for e in tagged:
        p = strata.leakage(e.predictions, e.headline)
        if p is None:
            continue
        why_not = strata.why_no_leak_verdict(e.adapter.get("recipe", "none"), train_for(e.adapter, e.model))
        verdict = f"no verdict, it {why_not}" if why_not else "pass" if strata.leak_passes(p) else "**FAIL**"
        leaks.append(f"{escape_md(e.name)} {p.diff:+.1f} {fmt_ci(p.lo, p.hi, signed=True)} "
                     f"({p.n} questions): {verdict}")
    if leaks:
        out.append(f"**Leakage check** (uncovered questions at ρ = 1, headline − base; an adapter cannot know "
                   f"these facts from its `train_qa` pairs unless they leaked, "
                   f"so it must stay within ±{strata.LEAK_LIMIT:g} points): "
                   + "; ".join(leaks) + ".\n")
    return out


def _gain_text(c) -> str:
    return f"{c.diff:+.1f} {fmt_ci(c.lo, c.hi, signed=True)}"


def compressor_section(group: list, pooled: list[str] | None = None) -> list[str]:
    """The compressors' own effect (:mod:`compressors`): KV-only ROUGE-L minus random eviction's, of a
    group's entries, or of :class:`Overall` entries with ``pooled`` naming their datasets."""
    sec = compressors.section(group)
    title = "### The compressor alone (KV-only gain over random eviction" + (
        f", pooled over {', '.join(escape_md(d) for d in pooled)})\n" if pooled else ")\n")
    if sec.reference is None:
        if any(not c.is_random for c in compressors.configs(group)):
            return [title,
                    f"No random-eviction entry (`{compressors.RANDOM_PRESS}`) in this group: the compressors' own "
                    "effect is not measured here.\n"]
        return []
    if not sec.gains:
        return []
    ref = sec.reference
    rhos = sorted({r for g in sec.gains for r in g.at})
    rows = [[g.rank, code_md(g.config.label), ", ".join(escape_md(n) for n in g.config.names),
             fmt_score(g.config.mean())] + [_gain_text(g.at[r]) if r in g.at else DASH for r in rhos]
            + [f"**{_gain_text(g.pooled)}**"] for g in sec.gains]
    headers = (["#", "compressor", "entries (same base rows)", "KV-only mean 0<ρ<1"]
               + [f"gain ρ={fmt_rho(r)}" for r in rhos] + ["gain 0<ρ<1"])
    out = [title,
           f"`base` ROUGE-L (no adapter: the compressor alone) minus random eviction's ({code_md(ref.label)}, the base "
           f"rows of {', '.join(escape_md(n) for n in ref.names)}) on the same (document, question, ρ), with a "
           "document-clustered 95% CI. **#** ranks by the gain over all 0 < ρ < 1; configurations whose difference "
           "cannot be told apart share a rank. Entries that run one compressor configuration with different "
           "adapters have the same base rows and are counted once.\n",
           _table(rows, headers) + "\n"]
    out += detectable_note("gain 0<ρ<1", [g.pooled.mde for g in sec.gains])
    out += detectable_note("gain at one ρ", [c.mde for g in sec.gains for c in g.at.values()])
    differ = [f"{code_md(c.label)}: {', '.join(escape_md(n) for n in c.differing)} (the rows of "
              f"{escape_md(c.source)} are used)" for c in [ref] + [g.config for g in sec.gains] if c.differing]
    if differ:
        out.append("**Base rows differ** within one configuration: " + "; ".join(differ) + ".\n")
    if sec.other_random:
        out.append("Further random configurations, not compared: "
                   + ", ".join(code_md(c.label) for c in sec.other_random) + ".\n")
    return out


#: train settings that only one recipe reads: they don't make a QA and an NTP adapter differ otherwise
_RECIPE_SPECIFIC_TRAIN = ("chunk_tokens", "chunk_next_data", "hook", "qa_source")


def qa_ntp_pairs(group: list[Entry]) -> list[tuple[Entry, Entry]]:
    """(qa entry, ntp entry) pairs with the same compressor, headline condition and adapter settings
    (settings that only one recipe reads aside), both with a headline mean; sorted by the QA name."""
    by_setup: dict[tuple, dict[str, Entry]] = defaultdict(dict)
    for e in group:
        if e.headline == BASE or not e.rhos:
            continue
        train = {k: v for k, v in train_for(e.adapter, e.model).items() if k not in _RECIPE_SPECIFIC_TRAIN}
        setup = (e.compressor, e.headline, repr(e.adapter.get("lora")), repr(sorted(train.items())))
        by_setup[setup][e.adapter.get("recipe")] = e
    return sorted(((d["qa"], d["ntp"]) for d in by_setup.values() if "qa" in d and "ntp" in d
                   and d["qa"].mean() is not None and d["ntp"].mean() is not None), key=lambda p: p[0].name)


def findings(group: list[Entry]) -> list[str]:
    """The paper's three findings, measured on one (tier, dataset, model) group of results.

    One line per finding that the group's results can speak to (none when they can't):
      1. the LoRA margin (headline - base) is small while the cache is intact and large at rho = 1;
      2. the adapter works best as decoding-time memory: base_kv_adapter_decode >= adapter_all;
      3. QA supervision beats raw next-token training: a ``qa`` entry against the ``ntp`` entry with
         the same compressor, headline condition and adapter settings.
    """
    adapted = [e for e in group if e.headline != BASE and e.rhos]
    out = []
    margins = [(e, min(e.rhos), e.margin(min(e.rhos)), e.margin(1.0)) for e in adapted if min(e.rhos) < 1.0]
    margins = [(e, lo, m_lo, m_hi) for e, lo, m_lo, m_hi in margins if m_lo is not None and m_hi is not None]
    if margins:
        larger = sum(m_hi > m_lo for _, _, m_lo, m_hi in margins)
        out.append("**LoRA margin** (headline − base) at the smallest ρ → at ρ = 1: "
                   + "; ".join(f"{escape_md(e.name)} {m_lo:+.1f} (ρ={fmt_rho(lo)}) → {m_hi:+.1f}"
                               for e, lo, m_lo, m_hi in margins)
                   + f". Larger at ρ = 1 for {larger} of {len(margins)} (paper: little at ρ = 0, +13–21 at ρ = 1).")
    pairs = [(e.rouge(r, BASE_KV_ADAPTER_DECODE), e.rouge(r, ADAPTER_ALL)) for e in adapted for r in e.rhos]
    pairs = [(dec, every) for dec, every in pairs if dec is not None and every is not None]
    if pairs:
        at_least = sum(dec >= every for dec, every in pairs)
        diff = round(sum(dec - every for dec, every in pairs) / len(pairs), 1) + 0.0  # + 0.0: no '-0.0'
        out.append(f"**Decoding-time memory**: `{BASE_KV_ADAPTER_DECODE}` ≥ `{ADAPTER_ALL}` "
                   f"at {at_least} of {len(pairs)} "
                   f"(submission, ρ) points, {diff:+.1f} ROUGE-L on average (paper: the adapter works best "
                   "while decoding only).")
    versus = qa_ntp_pairs(adapted)
    if versus:
        higher = sum(qa.mean() > ntp.mean() for qa, ntp in versus)
        out.append("**QA vs NTP recipe** (same compressor and adapter settings, headline mean): "
                   + "; ".join(f"{escape_md(qa.name)} {qa.mean():.1f} vs {escape_md(ntp.name)} {ntp.mean():.1f}"
                               for qa, ntp in versus)
                   + f". QA higher in {higher} of {len(versus)} (paper: QA supervision beats next-token training).")
    return out



HEADER = """# lorakv-bench leaderboard

<!-- Generated by `lorakv-bench leaderboard` from leaderboard/results/ only; do not edit by hand. -->

How much of a long document's answer quality does a **document-specific LoRA adapter** recover when
the document's **KV cache is compressed**? (Benchmark after arXiv 2606.05698.) Each submission is a
KV-cache compressor (a [kvpress](https://github.com/NVIDIA/kvpress) press) plus an adapter recipe.

**How to read the ranking.**
* **ρ (rho)** is the fraction of the *document's* KV entries the compressor evicts, per layer and KV
  head: ρ = 0 keeps the full cache, ρ = 1 keeps none of the document (the model answers from the
  prompt without the document, i.e. from the adapter alone). The instruction, question and answer are
  never evicted.
* **mean 0<ρ<1**: ROUGE-L (0-100, max over gold answers) of the submission's headline condition over
  the questions at the ρ values where the compressor acts; the ranking key. At ρ = 0 and ρ = 1 every
  compressor is the same by construction, so those columns are shown apart and not ranked.
  **95% CI**: document-clustered bootstrap.
* **#**: entries are compared with the top of their tier by a paired bootstrap over the same
  questions (document, question, ρ); those whose difference has a 95% CI holding 0 **share a rank**.
  **vs #1**: this entry minus the first, with its paired 95% CI.
* Results in different **dtypes** are never ranked together. Entries whose **adapter training
  diverged** (final loss ≥ first loss, or not finite) are listed apart, unranked, with the reason.
* **Conditions** (which weights prefill the document, score its entries, and decode):
{conditions}
* **headline condition**: the condition a submission is ranked on (declared in its
  `submission.yaml`; by default `base_kv_adapter_decode` with an adapter, `base` without).
  **base mean**: the same compressor without any adapter (KV-only). **LoRA margin @ρ=1**: headline −
  base at ρ = 1. **best condition**: the condition with the highest mean over the ρ grid.
* **Memory** per document under the headline condition: kept KV bytes plus the adapter's bytes.
* **Detectable difference** (under a table): the smallest true difference its paired comparisons
  find with 80% power in a two-sided test at α = 0.05, (1.96 + 0.84) × the document-clustered
  standard error of the paired differences. A CI that holds 0 says little about differences below it.

Regenerate after adding results with `lorakv-bench leaderboard` (CI fails when this file or the plots
are stale). How to submit: [CONTRIBUTING.md]({contributing}).
"""


def render_markdown(entries: list[Entry], plot_links: dict[GroupKey, dict[str, str]], contributing: str,
                    submissions_link: str = "../submissions",
                    ranks: dict[GroupKey, list[tuple[Entry, Ranked]]] | None = None) -> str:
    """The page. ``ranks``: :func:`rank_groups` of ``entries`` when the caller has it already."""
    ranks = rank_groups(entries) if ranks is None else ranks
    conditions = "\n".join(f"  * `{c}`: {h}" for c, h in CONDITION_HELP.items())
    out = [HEADER.format(conditions=conditions, contributing=contributing)]
    groups = group_entries(entries)
    if not groups:
        out.append("\n_No results yet._ Run `lorakv-bench evaluate submissions/<name>`, "
                   "then `lorakv-bench leaderboard`.\n")
        return "\n".join(out)
    overall = overall_groups(entries)
    out.append("## Contents\n")
    for key, (datasets, full, apart) in overall.items():
        title = _overall_title(key)
        out.append(f"* [{escape_md(title)}](#{_anchor(title)}) ({len(full) + len(apart)} submissions, "
                   f"{len(datasets)} datasets)")
    for key, group in groups.items():
        out.append(f"* [{escape_md(group_title(key))}](#{_anchor(group_title(key))}) ({len(group)} submissions)")
    out.append("")
    for key, (datasets, full, apart) in overall.items():
        tier, model, dtype = key
        out.append(f"## {escape_md(_overall_title(key))}\n")
        out.append(f"Tier **{tier}**, model **{escape_md(model)}**, dtype **{escape_md(dtype)}**: each submission's "
                   f"headline predictions at 0 < ρ < 1 pooled over {', '.join(escape_md(d) for d in datasets)} (test "
                   f"splits), ranked as above.{tier_note(tier)}\n")
        if full:
            out.append(overall_table(datasets, full, submissions_link) + "\n")
        if apart:
            out.append("Not ranked here:\n")
            out.append("\n".join(f"* **{_sub_link(n, submissions_link)}**: {escape_md(why)}" for n, why in apart)
                       + "\n")
        out.extend(compressor_section(full, pooled=datasets))
    for key, group in groups.items():
        tier, ds, model, dtype = key
        out.append(f"## {escape_md(group_title(key))}\n")
        specs = sorted({e.spec_version for e in group})
        out.append(f"Tier **{tier}**, dataset **{escape_md(ds)}** (test split), model **{escape_md(model)}** "
                   f"([{escape_md(group[0].model_name)}](../docs/tiers.md#models)), dtype **{escape_md(dtype)}**; spec "
                   f"{', '.join(escape_md(v) for v in specs)}.{tier_note(tier)}\n")
        out.append("### Ranking (ROUGE-L, headline condition)\n")
        if ranks[key]:
            out.append(main_table(group, submissions_link, ranks[key]) + "\n")
            out += detectable_note("vs #1", [r.versus_top.mde for _, r in ranks[key][1:]])
        apart = unranked_lines(group, submissions_link)
        if apart:
            out.append("**Not ranked:**\n")
            out.append("\n".join(apart) + "\n")
        out.append("### Details (ROUGE-L at each ρ, headline condition)\n")
        out.append(details_table(group) + "\n")
        out += detectable_note("LoRA margin @ρ=1", [margin_at_1_mde(e) for e in group])
        out.append("### Memory per document (kept KV + adapter, headline condition)\n")
        out.append(memory_table(group) + "\n")
        front = frontier(_group_points(group))
        if front:
            out.append("Quality/memory frontier (no other point has higher ROUGE-L for less memory): "
                       + "; ".join(f"{escape_md(label)} ({fmt_bytes(mem)}, {score:.1f})" for mem, score, label in front)
                       + ".\n")
        out.extend(compressor_section(group))
        found = findings(group)
        if found:
            out.append("### The paper's findings, measured on these results\n")
            out.append("\n".join(f"* {line}" for line in found) + "\n")
        out.extend(strata_section(group))
        links = plot_links.get(key, {})
        if links:
            out.append(f"![ROUGE-L vs rho, {escape_md(group_title(key))}]({links['rho']}) "
                       f"![ROUGE-L vs memory, {escape_md(group_title(key))}]({links['memory']})\n")
            out.extend(figures.markdown(links, escape_md(group_title(key))))
    return "\n".join(out)


def _group_points(group: list[Entry]) -> list[tuple[float, float, str]]:
    return [(e.memory(r), e.rouge(r), f"{e.name} ρ={fmt_rho(r)}")
            for e in group for r in e.rhos if e.memory(r) is not None and e.rouge(r) is not None]


# ---------------------------------------------------------------- data files

DATA_JSON = "leaderboard.json"
DATA_CSV = "leaderboard.csv"
DATA_FORMAT_VERSION = 1
DATA_DIGITS = 4  # beyond the page's 1 decimal, short of float noise that could differ across platforms


def _num(x):
    """A number for the data files: floats rounded to DATA_DIGITS, NaN and infinities as None."""
    if x is None or isinstance(x, (bool, int)):
        return x
    x = float(x)
    return round(x, DATA_DIGITS) + 0.0 if math.isfinite(x) else None  # + 0.0: no '-0.0'


def _memory_column(rho: float) -> str:
    return f"memory_bytes_rho={fmt_rho(rho)}"


def data_rows(entries: list[Entry], ranks: dict[GroupKey, list[tuple[Entry, Ranked]]], results_link: str,
              submissions_link: str) -> list[dict]:
    """One row per entry, in the page's order (group by group, ranked best first, then the unranked),
    read from the same Entry and Ranked objects as the page's tables; strings are as in the result
    file (no Markdown escaping). Memory has one column per rho of any entry (None where the entry has
    no such rho), so every row has the same keys."""
    all_rhos = sorted({r for e in entries for r in e.rhos})
    rows = []
    for key, group in group_entries(entries).items():
        ranked = {id(e): r for e, r in ranks[key]}
        for e in group:
            r = ranked.get(id(e))
            vs = (None, None, None) if r is None or versus_top(r) is None else versus_top(r)
            row = {
                "submission": e.name, "tier": e.tier, "dataset": e.dataset, "model": e.model,
                "model_name": e.model_name, "dtype": e.dtype, "hardware": e.hardware,
                "rank": None if r is None else r.rank, "unranked_reason": unranked_reason(e) if r is None else None,
                "headline_condition": e.headline, "compressor": e.compressor, "adapter": e.recipe,
                "mean": _num(e.ranked_mean()), "mean_ci95_lo": _num(e.ci[0]), "mean_ci95_hi": _num(e.ci[1]),
                "vs_top": _num(vs[0]), "vs_top_ci95_lo": _num(vs[1]), "vs_top_ci95_hi": _num(vs[2]),
                "base_mean": _num(e.base_mean()),
                "rho0": _num(e.rouge(0.0) if 0.0 in e.rhos else None),
                "rho1": _num(e.rouge(1.0) if 1.0 in e.rhos else None),
                "adapter_bytes": _num(e.adapter_bytes if e.headline != BASE else None),
                **{_memory_column(rho): _num(e.memory(rho) if rho in e.rhos else None) for rho in all_rhos},
                "documents": e.n_documents, "questions": e.n_questions, "spec_version": e.spec_version,
                "date": e.date, "rerun": e.rerun, "result": f"{results_link}/{e.source}",
                "submission_link": _sub_url(e.name, submissions_link),
            }
            rows.append(row)
    return rows


def data_columns(rows: list[dict]) -> list[str]:
    """The columns of :func:`data_rows` (every row has the same keys); none without rows."""
    return list(rows[0]) if rows else []


def data_json(rows: list[dict]) -> str:
    doc = {"format": "lorakv-bench leaderboard", "format_version": DATA_FORMAT_VERSION,
           "columns": data_columns(rows), "rows": rows}
    return json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def data_csv(rows: list[dict]) -> str:
    """The rows as CSV (a header row, then one line per row; None as an empty field)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    columns = data_columns(rows)
    if columns:
        writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row[c] is None else row[c] for c in columns])
    return buf.getvalue()


# ---------------------------------------------------------------- plots


def _plotted(group: list[Entry]) -> list[Entry]:
    """The entries a plot draws: the top ranked ones (the group is sorted best first)."""
    return [e for e in group if rankable(e)][:MAX_CURVES] or group[:MAX_CURVES]


def _plot_title(title: str, shown: int, total: int) -> str:
    return title if shown == total else f"{title}: top {shown} of {total}"


def plot_rho(group: list[Entry], title: str, path: Path) -> None:
    """ROUGE-L vs rho for the top entries: headline (solid, CI band) and the same compressor without
    the adapter (dashed); one legend entry per submission plus one for the dashed style."""
    from matplotlib.lines import Line2D

    fig = new_figure()
    ax = fig.add_subplot()
    shown = _plotted(group)
    any_base = False
    for e, color in zip(shown, colors(len(shown))):
        head = [(r, e.rouge(r)) for r in e.rhos if e.rouge(r) is not None]
        if head:
            band(ax, e, e.headline, color, 0.18)
            ax.plot(*zip(*head), marker="o", markersize=4, color=color, label=plot_text(f"{e.name}: {e.headline}"))
        if e.headline != BASE:
            base = [(r, e.rouge(r, BASE)) for r in e.rhos if e.rouge(r, BASE) is not None]
            if base:
                ax.plot(*zip(*base), marker="x", markersize=4, linestyle="--", color=color, linewidth=1,
                        label="_nolegend_")
                any_base = True
    handles, labels = ax.get_legend_handles_labels()
    if any_base:
        handles.append(Line2D([], [], color="grey", linestyle="--", marker="x"))
        labels.append("dashed: same compressor, no adapter")
    ax.set_xlabel("ρ (fraction of document KV entries evicted)")
    ax.set_ylabel("ROUGE-L (band: 95% CI)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(bottom=0)
    ax.set_title(_plot_title(title, len(shown), len(group)), fontsize=10)
    ax.grid(True, alpha=0.3)
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="best")
    fig.tight_layout()
    save_svg(fig, path, f"ROUGE-L vs ρ, {title}")


def _byte_ticks(ax, lo: float, hi: float) -> None:
    """Log-axis ticks at powers of two between ``lo`` and ``hi`` bytes, at most 8, labelled in
    binary units; no minor labels (they are what overlapped)."""
    import math

    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    k0, k1 = math.floor(math.log2(lo)), math.ceil(math.log2(hi))
    step = max(1, math.ceil((k1 - k0 + 1) / 8))
    ticks = [2.0**k for k in range(k0, k1 + step, step)]  # the last tick is at or above hi
    ax.set_xlim(ticks[0] / 1.15, ticks[-1] * 1.15)  # from the power of two below the data to the one above
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: fmt_bytes(x).replace(".00 ", " ").replace(".0 ", " ")))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_memory(group: list[Entry], title: str, path: Path) -> None:
    """ROUGE-L vs memory (kept KV + adapter, log axis) for the top entries, with each cell's 95% CI
    as an error bar and the frontier over all entries."""
    fig = new_figure()
    ax = fig.add_subplot()
    points = _group_points(group)
    shown = _plotted(group)
    for e, color in zip(shown, colors(len(shown))):
        pts = sorted((e.memory(r), e.rouge(r), e.rouge_ci(r)) for r in e.rhos
                     if e.memory(r) is not None and e.rouge(r) is not None)
        if not pts:
            continue
        err = [[max(0.0, y - ci[0]) for _, y, ci in pts], [max(0.0, ci[1] - y) for _, y, ci in pts]]
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=err, marker="o", markersize=4, color=color,
                    capsize=2, linewidth=1, label=plot_text(f"{e.name}: {e.headline}"))
    front = frontier(points)
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", linestyle=":",
                linewidth=1, label="frontier (all entries)")
    if points and min(p[0] for p in points) > 0:
        ax.set_xscale("log")
        _byte_ticks(ax, min(p[0] for p in points), max(p[0] for p in points))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("memory per document: kept KV + adapter (log scale)")
    ax.set_ylabel("ROUGE-L (bars: 95% CI)")
    ax.set_title(_plot_title(title, len(shown), len(group)), fontsize=10)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_svg(fig, path, f"ROUGE-L vs memory, {title}")


# ---------------------------------------------------------------- render / check


def _link(target: Path, md_dir: Path) -> str:
    return Path(os.path.relpath(Path(target).resolve(), Path(md_dir).resolve())).as_posix()


def _render(results_root, out_md: Path, plots_dir: Path, plots_link: str, contributing: str,
            submissions: str = "../submissions", results_link: str = "results") -> str:
    """Write the page, its plots and the data files (beside the page). The links are relative to
    where the page is published, which differs from ``out_md`` when checking in a scratch folder."""
    require("matplotlib", "the leaderboard's plots")
    entries = load_entries(results_root)
    groups = group_entries(entries)
    ranks = rank_groups(entries)
    plots_dir.mkdir(parents=True, exist_ok=True)
    links: dict[GroupKey, dict[str, str]] = {}
    written = set()
    for key, group in groups.items():
        tier, ds, model, dtype = key
        title = plot_text(f"{ds} · {model} · {dtype} ({tier})")
        names = {"rho": _slug(*key) + "__rho.svg", "memory": _slug(*key) + "__memory.svg"}
        with plot_style():
            plot_rho(group, title, plots_dir / names["rho"])
            plot_memory(group, title, plots_dir / names["memory"])
        names |= figures.write(group, qa_ntp_pairs(group), title, plots_dir, _slug(*key))
        written |= set(names.values())
        links[key] = {k: f"{plots_link}/{v}" if plots_link not in ("", ".") else v for k, v in names.items()}
    for stale in sorted(plots_dir.glob("*.svg")):  # plots of groups that no longer have results
        if stale.name not in written:
            stale.unlink()
    text = render_markdown(entries, links, contributing, submissions, ranks)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text, encoding="utf-8")
    rows = data_rows(entries, ranks, results_link, submissions)
    (out_md.parent / DATA_JSON).write_text(data_json(rows), encoding="utf-8")
    (out_md.parent / DATA_CSV).write_text(data_csv(rows), encoding="utf-8", newline="")
    write_page(out_md.parent, rows, links)
    return text


def _contributing_link(out_md: Path) -> str:
    """CONTRIBUTING.md at the repository root (the folder above leaderboard/ by default)."""
    return _link(Path(out_md).resolve().parent.parent / "CONTRIBUTING.md", Path(out_md).resolve().parent)


def _submissions_link(out_md: Path) -> str:
    """submissions/ at the repository root (the folder above leaderboard/ by default)."""
    return _link(Path(out_md).resolve().parent.parent / "submissions", Path(out_md).resolve().parent)


def render(results_root: str | Path = "leaderboard/results", out_md: str | Path = "leaderboard/README.md",
           plots_dir: str | Path = "leaderboard/plots") -> str:
    """Regenerate the Markdown leaderboard, its plots and the data files (``leaderboard.json`` and
    ``leaderboard.csv`` beside the Markdown) from the result files; returns the Markdown."""
    out_md, plots_dir = Path(out_md), Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    return _render(results_root, out_md, plots_dir, _link(plots_dir, out_md.parent), _contributing_link(out_md),
                   _submissions_link(out_md), _link(Path(results_root), out_md.parent))


def stale_files(results_root: str | Path = "leaderboard/results", out_md: str | Path = "leaderboard/README.md",
                plots_dir: str | Path = "leaderboard/plots", *, plots: bool = True) -> list[str]:
    """Files that differ from a fresh render (missing, changed or extra); empty = up to date."""
    out_md, plots_dir = Path(out_md), Path(plots_dir)
    link = _link(plots_dir, out_md.parent)
    with tempfile.TemporaryDirectory(prefix="lorakv-leaderboard-") as tmp:
        tmp_md, tmp_plots = Path(tmp) / "README.md", Path(tmp) / "plots"
        _render(results_root, tmp_md, tmp_plots, link, _contributing_link(out_md), _submissions_link(out_md),
                _link(Path(results_root), out_md.parent))
        stale = []
        for name in (out_md.name, DATA_JSON, DATA_CSV, PAGE_HTML):
            ours, new = out_md.parent / name, Path(tmp) / (tmp_md.name if name == out_md.name else name)
            if not ours.exists() or ours.read_bytes() != new.read_bytes():
                stale.append(str(ours))
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
