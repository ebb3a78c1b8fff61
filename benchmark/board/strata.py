"""Findings by stratum: questions whose fact the adapter trained on (``covered``) and those whose
fact it did not (``uncovered``), read from the ``tags`` each prediction carries.

Two figures matter most:
  * the adapter's effect while the cache is intact: headline − base at rho = 0, per stratum (the
    paper finds it small; a large negative value means the adapter overrides the context);
  * the leakage check: uncovered questions at rho = 1 (no document in the cache), headline −
    base. An adapter trained on ``train_qa`` alone can only answer those if the evaluation facts
    leaked into its training data, so the difference must stay within :data:`LEAK_LIMIT` points.
    An adapter trained on the document text (NTP, synthesized pairs, a hook) may learn them
    honestly: its figure is shown, as what it learned beyond the pairs, without a verdict.
Results whose predictions carry no tags have no strata; nothing is shown for them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import BASE
from ..protocol.metrics import detectable_difference, paired_bootstrap_ci

STRATA = ("covered", "uncovered")
LEAK_LIMIT = 5.0  # points of ROUGE-L


def stratum_of(pred: dict) -> str | None:
    tags = pred.get("tags") or []
    return next((s for s in STRATA if s in tags), None)


def _scores(preds: list[dict], condition: str, stratum: str, rho: float) -> dict[tuple, float]:
    return {(p["doc_id"], p["question_id"]): p["rouge_l"] for p in preds
            if p["condition"] == condition and p["rho"] == rho and stratum_of(p) == stratum}


@dataclass(frozen=True)
class Paired:
    """Headline vs base on the same questions of one stratum at one rho."""

    headline: float
    base: float
    diff: float
    lo: float
    hi: float
    n: int
    mde: float = float("nan")  # the smallest difference detectable here (metrics.detectable_difference)


def paired(preds: list[dict], headline: str, stratum: str, rho: float) -> Paired | None:
    head, base = _scores(preds, headline, stratum, rho), _scores(preds, BASE, stratum, rho)
    keys = sorted(set(head) & set(base))
    if not keys:
        return None
    h, b = [head[k] for k in keys], [base[k] for k in keys]
    clusters = [k[0] for k in keys]
    diff, lo, hi = paired_bootstrap_ci(h, b, clusters)
    mde = detectable_difference([x - y for x, y in zip(h, b)], clusters)
    return Paired(sum(h) / len(h), sum(b) / len(b), diff, lo, hi, len(keys), mde)


def has_strata(preds: list[dict]) -> bool:
    return any(stratum_of(p) for p in preds)


def leakage(preds: list[dict], headline: str) -> Paired | None:
    """Uncovered questions at rho = 1: headline − base (None when the result cannot say)."""
    return paired(preds, headline, "uncovered", 1.0)


def leak_passes(p: Paired) -> bool:
    return abs(p.diff) <= LEAK_LIMIT


def why_no_leak_verdict(recipe: str, train: dict) -> str | None:
    """Why the leakage check cannot judge an adapter of this recipe and (per-model) ``train``
    settings, or None when it trains on the documents' ``train_qa`` pairs alone and can be
    convicted. The others may hold any answer of the document, legitimately: the document itself,
    pairs synthesized from it, or a hook's."""
    if recipe == "ntp":
        return "trains on the whole document, which holds every answer"
    if train.get("qa_source", "train_qa") != "train_qa":
        return "trains on QA pairs synthesized from the document"
    if train.get("hook"):
        return "trains on a hook's pairs, which may come from the document"
    return None
