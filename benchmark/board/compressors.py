"""What a compressor does on its own: its KV-only (``base``) ROUGE-L minus random eviction's.

The headline ranking scores a compressor together with its adapter. This module isolates the
compressor: in the ``base`` condition no adapter is loaded, so the score is the press's alone, and
random eviction (``RandomPress``) at the same ρ is the floor any press should clear. For each
compressor configuration of a (tier, dataset, model, dtype) group and each ρ where it acts
(0 < ρ < 1), the gain is its base ROUGE-L minus random's on the same (document, question, ρ),
with a document-clustered 95% CI (:func:`ranking.compare`). Configurations are ranked by the gain
pooled over those ρ with :func:`ranking.tiered_ranks`: those whose difference cannot be told apart
share a rank.

Entries that run the same compressor configuration with different adapters (or none) produce the
same base rows, so each configuration is counted once and the entries that share it are named.
Entries are read duck-typed: a ``name``, a ``compressor`` label and ``scores(condition)`` giving
``{(doc_id, question_id, rho): rouge_l}`` at 0 < ρ < 1 (``leaderboard.Entry``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from ..config import BASE
from .ranking import Comparison, Key, compare, tiered_ranks

RANDOM_PRESS = "RandomPress"
KV_ONLY = BASE  # the condition without an adapter: the compressor alone


@dataclass(frozen=True)
class Config:
    """One compressor configuration of a group, with the base rows of the entries that run it."""

    label: str  # the configuration as the page writes it, e.g. ``SnapKVPress(kernel_size=5, window_size=16)``
    names: tuple[str, ...]  # the entries that run it, sorted
    scores: dict[Key, float]  # base ROUGE-L at 0 < rho < 1 of ``source``
    source: str  # the entry whose base rows are used: the one with the most (first by name on a tie)
    differing: tuple[str, ...]  # entries whose base rows disagree with ``source`` on a shared question

    @property
    def press(self) -> str:
        return self.label.split("(", 1)[0]

    @property
    def is_random(self) -> bool:
        return self.press == RANDOM_PRESS

    def mean(self) -> float:
        return sum(self.scores.values()) / len(self.scores)


def configs(group: list) -> list[Config]:
    """The group's compressor configurations with base rows at 0 < rho < 1, sorted by label."""
    by_label: dict[str, list] = defaultdict(list)
    for e in group:
        if e.scores(KV_ONLY):
            by_label[e.compressor].append(e)
    out = []
    for label in sorted(by_label):
        entries = sorted(by_label[label], key=lambda e: (-len(e.scores(KV_ONLY)), e.name))
        src = entries[0].scores(KV_ONLY)
        differing = [e.name for e in entries[1:]
                     if any(src[k] != v for k, v in e.scores(KV_ONLY).items() if k in src)]
        names = tuple(sorted(e.name for e in entries))
        out.append(Config(label, names, src, entries[0].name, tuple(sorted(differing))))
    return out


def _at(scores: dict[Key, float], rho: float) -> dict[Key, float]:
    return {k: v for k, v in scores.items() if k[2] == rho}


@dataclass(frozen=True)
class Gain:
    """One configuration's base ROUGE-L minus random eviction's, paired on the same questions."""

    config: Config
    at: dict[float, Comparison]  # rho -> gain there (diff, 95% CI, questions, detectable difference)
    pooled: Comparison  # over every 0 < rho < 1 both have
    rank: int  # shared where the pooled gains cannot be told apart


@dataclass(frozen=True)
class Section:
    """The compressor section of one group; ``reference`` is None when the group has no random eviction."""

    reference: Config | None
    gains: list[Gain]  # best first
    other_random: list[Config]  # further random configurations, not compared (random is the reference)


def reference(cfgs: list[Config]) -> Config | None:
    """Random eviction: the ``RandomPress`` configuration with the most base rows (first by label on a tie)."""
    randoms = [c for c in cfgs if c.is_random]
    return min(randoms, key=lambda c: (-len(c.scores), c.label)) if randoms else None


def section(group: list) -> Section:
    """Each non-random configuration's gain over random eviction at each 0 < rho < 1 and pooled,
    ranked by the pooled gain."""
    cfgs = configs(group)
    ref = reference(cfgs)
    if ref is None:
        return Section(None, [], [])
    measured = []
    for c in cfgs:
        if c.is_random:
            continue
        gain = {k: v - ref.scores[k] for k, v in c.scores.items() if k in ref.scores}
        if not gain:
            continue
        rhos = sorted({k[2] for k in gain})
        at = {r: compare(_at(c.scores, r), _at(ref.scores, r)) for r in rhos}
        measured.append((c, gain, at, compare(c.scores, ref.scores)))
    measured.sort(key=lambda m: (-m[3].diff, m[0].label))
    ranks = tiered_ranks([gain for _, gain, _, _ in measured])
    gains = [Gain(c, at, pooled, r.rank) for (c, _, at, pooled), r in zip(measured, ranks)]
    return Section(ref, gains, [c for c in cfgs if c.is_random and c is not ref])
