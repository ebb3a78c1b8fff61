"""Ranks that claim no more than the data shows, and the adapters a rank must not hide.

A leaderboard that numbers 84.0, 83.9 and 83.1 as 1, 2, 3 claims an order the bootstrap cannot
see. Here entries are walked in order of their mean; each is compared with the top of its tier
by :func:`metrics.paired_bootstrap_ci` over the questions both answered (same document, question
and rho). While the 95% CI of the difference holds 0 the entry shares the tier's rank; the first
entry that is separable starts a new tier and becomes its reference. Ranks are competition
style (1, 1, 1, 4), so a rank still says how many entries are ahead.

Scores are passed as ``{(cluster, question, rho): rouge_l}``; the cluster (the document, or the
dataset and document for an overall table) is what the bootstrap resamples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..protocol.metrics import detectable_difference, paired_bootstrap_ci

Key = tuple  # (cluster: str, question_id: str, rho: float)


@dataclass(frozen=True)
class Comparison:
    """The reference entry minus this one over their shared questions (points of ROUGE-L)."""

    diff: float
    lo: float
    hi: float
    n_questions: int
    mde: float = float("nan")  # the smallest difference detectable here (metrics.detectable_difference)

    @property
    def separable(self) -> bool:
        return self.n_questions > 0 and (self.lo > 0 or self.hi < 0)


def compare(ref: dict[Key, float], other: dict[Key, float]) -> Comparison:
    shared = sorted(set(ref) & set(other), key=lambda k: (str(k[0]), str(k[1]), float(k[2])))
    if not shared:  # nothing to pair: they cannot be told apart, so they are not separated
        return Comparison(float("nan"), float("nan"), float("nan"), 0)
    a, b, clusters = [ref[k] for k in shared], [other[k] for k in shared], [str(k[0]) for k in shared]
    diff, lo, hi = paired_bootstrap_ci(a, b, clusters)
    mde = detectable_difference([x - y for x, y in zip(a, b)], clusters)
    return Comparison(diff, lo, hi, len(shared), mde)


@dataclass(frozen=True)
class Ranked:
    rank: int
    versus_top: Comparison | None  # None for the top entry itself


def tiered_ranks(scores: list[dict[Key, float]]) -> list[Ranked]:
    """Ranks for entries already sorted best first (see the module docstring)."""
    out: list[Ranked] = []
    ref = 0
    for i, s in enumerate(scores):
        vs_top = None if i == 0 else compare(scores[0], s)
        if i > 0 and compare(scores[ref], s).separable:
            ref = i
        out.append(Ranked(rank=ref + 1, versus_top=vs_top))
    return out


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def diverged_adapters(documents: list[dict]) -> list[str]:
    """One line per document whose adapter training diverged: final loss >= first loss, or a loss
    that is not a finite number. Adapters that record no losses (older results) are not judged."""
    bad = []
    for d in documents:
        ad = d.get("adapter") or {}
        if "first_loss" not in ad and "final_loss" not in ad:
            continue
        first, final = ad.get("first_loss"), ad.get("final_loss")
        if first is None and final is None:  # no optimiser step ran
            continue
        if not (_finite(first) and _finite(final)):
            bad.append(f"{d['doc_id']}: loss not finite ({first} → {final})")
        elif final >= first:
            bad.append(f"{d['doc_id']}: final loss {final:.2f} ≥ first {first:.2f}")
    return bad


def divergence_reason(documents: list[dict]) -> str | None:
    """Why an entry may not be ranked, or None."""
    bad = diverged_adapters(documents)
    if not bad:
        return None
    shown = "; ".join(bad[:3]) + ("; …" if len(bad) > 3 else "")
    return f"adapter training diverged on {len(bad)} of {len(documents)} documents ({shown})"
