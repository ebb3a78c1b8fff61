"""Stage: metrics. Answer extraction, ROUGE-L / exact match, and a document-clustered bootstrap CI.

ROUGE-L is rouge-score's LCS F1 computed on SQuAD-normalised text (lowercase, punctuation
and articles removed, whitespace collapsed) with a whitespace tokenizer, so it equals token
LCS-F1 over the normalised tokens. Both metrics take the max over the gold answers.

:class:`Scoring` is the one place a spec's rules for turning a generation into numbers are
resolved (``Spec.scoring()``): the extraction, the normalisation, the x100 scale of result files
and the kept-entries budget. Every stage that extracts, scores or counts kept entries reads it.
"""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation) | {"\u2018", "\u2019", "\u201c", "\u201d", "\u2013", "\u2014"}


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = unicodedata.normalize("NFC", text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


class _WhitespaceTokenizer:
    """rouge-score tokenizer: the text is already normalised, so split on whitespace only
    (rouge-score's default tokenizer would drop non-ASCII letters)."""

    def tokenize(self, text: str) -> list[str]:
        return text.split()


@functools.cache
def _scorer():
    """rouge-score's ROUGE-L scorer, made on first use: importing rouge-score pulls in nltk (about
    2 s), which a process that never scores (the sandboxed worker, most commands) does not pay."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_WhitespaceTokenizer())


def extract_answer(generation: str, answer_prefix: str = "") -> str:
    """The content of the first ``\\boxed{...}`` (braces balanced) in ``answer_prefix +
    generation``, so a prompt that prefills ``\\boxed{`` works; otherwise the first non-empty
    line of the generation."""
    text = answer_prefix + generation
    start = text.find("\\boxed{")
    if start >= 0:
        return _until_unmatched_brace(text[start + len("\\boxed{"):]).strip()
    for line in generation.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _until_unmatched_brace(text: str) -> str:
    depth = 0
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
        elif ch == "}":
            if depth == 0:
                return text[:i]
            depth -= 1
    return text


def rouge_l(prediction: str, golds: Sequence[str]) -> float:
    """Max over golds of ROUGE-L F1 (0..1) between normalised prediction and gold."""
    pred = normalize_answer(prediction)
    best = 0.0
    for gold in golds:
        g = normalize_answer(gold)
        if not pred or not g:
            score = float(pred == g)
        else:
            score = _scorer().score(g, pred)["rougeL"].fmeasure
        best = max(best, score)
    return best


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


# ---------------------------------------------------------------- the paper's metric and extraction
# (the paper tier's spec: metric.normalization "paper", metric.extraction "boxed_or_last_line")

_PAPER_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PAPER_PUNCT = str.maketrans("", "", string.punctuation)
_BOXED = re.compile(r"\\boxed\{([^}]*)\}")


def normalize_answer_paper(text: str) -> str:
    """The paper's normalisation, in its order: lowercase, remove articles, then remove ASCII
    punctuation, collapse whitespace (so "the" in "the." survives: articles go before punctuation)."""
    text = str(text).lower().strip()
    text = _PAPER_ARTICLES.sub(" ", text)
    return " ".join(text.translate(_PAPER_PUNCT).split())


def rouge_l_paper(prediction: str, golds: Sequence[str]) -> float:
    """The paper's ``rouge_l_score``: token LCS-F1 on paper-normalised text, max over golds; 0 for
    a prediction that normalises to empty, and golds that normalise to empty are skipped (so a
    question whose golds are all empty scores 0)."""
    pred = normalize_answer_paper(prediction)
    if not pred:
        return 0.0
    best = 0.0
    for gold in golds:
        g = normalize_answer_paper(gold)
        if g:
            best = max(best, _scorer().score(g, pred)["rougeL"].fmeasure)
    return best


def exact_match_paper(prediction: str, golds: Sequence[str]) -> float:
    pred = normalize_answer_paper(prediction)
    return float(any(pred == normalize_answer_paper(g) for g in golds))


def extract_answer_paper(generation: str, answer_prefix: str = "") -> str:
    """The paper's extraction, from the generated text only (``answer_prefix`` is not read): the
    content of the first ``\\boxed{...}`` (up to the first ``}``), else the last non-empty line."""
    match = _BOXED.search(generation)
    if match:
        return match.group(1).strip()
    lines = [line.strip() for line in generation.splitlines() if line.strip()]
    return lines[-1] if lines else generation.strip()


#: metric.normalization -> (rouge_l, exact_match), and the normalisation both apply to either side;
#: metric.extraction -> extractor.
SCORERS = {"squad": (rouge_l, exact_match), "paper": (rouge_l_paper, exact_match_paper)}
NORMALIZERS = {"squad": normalize_answer, "paper": normalize_answer_paper}
EXTRACTORS = {"boxed_or_first_line": extract_answer, "boxed_or_last_line": extract_answer_paper}


#: Result files, cells and the leaderboard hold scores on 0-100; the metric functions return
#: fractions (0-1), as lm-eval reports them. :meth:`Scoring.score` is where the factor is applied.
SCALE = 100


@dataclass(frozen=True)
class Scoring:
    """A spec's scoring rules, resolved once (``Spec.scoring()``); the defaults are the mini tier's.

    ``extraction`` (``metric.extraction``) names an :data:`EXTRACTORS` entry, ``normalization``
    (``metric.normalization``) a :data:`SCORERS` entry, ``budget`` (the spec's ``budget``) the rule
    of :meth:`kept`."""

    normalization: str = "squad"
    extraction: str = "boxed_or_first_line"
    budget: str = "kvpress"

    def __post_init__(self) -> None:
        from ..config import BUDGETS

        for name, allowed in (("metric.normalization", SCORERS), ("metric.extraction", EXTRACTORS),
                              ("budget", BUDGETS)):
            value = getattr(self, name.removeprefix("metric."))
            if value not in allowed:
                raise ValueError(f"{name} '{value}': choose from {', '.join(allowed)}")

    def extract(self, generation: str, answer_prefix: str = "") -> str:
        """The answer the spec's extraction takes from a generation (``answer_prefix`` prefilled)."""
        return EXTRACTORS[self.extraction](generation, answer_prefix)

    def fractions(self, prediction: str, golds: Sequence[str]) -> dict[str, float]:
        """``rouge_l`` and ``exact_match`` of an extracted prediction on 0-1 (lm-eval's scale)."""
        rouge, em = SCORERS[self.normalization]
        return {"rouge_l": rouge(prediction, golds), "exact_match": em(prediction, golds)}

    def score(self, prediction: str, golds: Sequence[str]) -> dict[str, float]:
        """``rouge_l`` and ``exact_match`` of an extracted prediction on 0-100 (result files' scale)."""
        return {k: SCALE * v for k, v in self.fractions(prediction, golds).items()}

    def kept(self, n_doc: int, rho: float) -> int:
        """Document entries kept per layer and KV head at ``rho`` (:func:`benchmark.protocol.compression.n_kept`)."""
        from .compression import n_kept

        return n_kept(n_doc, rho, self.budget)


def clustered_bootstrap_ci(
    values: Sequence[float], clusters: Sequence[str], *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile CI of the mean, resampling whole documents (clusters) with replacement.

    Questions of one document are correlated (same adapter, same cache), so resampling
    questions independently would give CIs that are too narrow.
    """
    vals = np.asarray(values, dtype=float)
    if vals.size == 0:
        return (float("nan"), float("nan"))
    keys = sorted(set(clusters))
    idx = {k: i for i, k in enumerate(keys)}
    cl = np.array([idx[c] for c in clusters])
    sums = np.bincount(cl, weights=vals, minlength=len(keys))
    counts = np.bincount(cl, minlength=len(keys)).astype(float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(keys), size=(n_boot, len(keys)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def paired_bootstrap_ci(
    a: Sequence[float], b: Sequence[float], clusters: Sequence[str], *, n_boot: int = 1000, seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """Mean of ``a - b`` over the same questions, with a percentile CI that resamples whole
    documents. Returns ``(mean_diff, lo, hi)``; the two cannot be told apart when the CI holds 0.

    Pairing removes what both share (the question's difficulty, the document), so it separates
    entries whose unpaired CIs overlap; clustering keeps it honest about correlated questions.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs the same questions on both sides ({a.size} vs {b.size})")
    diff = a - b
    if diff.size == 0:
        return (float("nan"), float("nan"), float("nan"))
    lo, hi = clustered_bootstrap_ci(diff, clusters, n_boot=n_boot, seed=seed, alpha=alpha)
    return (float(diff.mean()), lo, hi)


def clustered_se(values: Sequence[float], clusters: Sequence[str]) -> float:
    """Standard error of the mean of ``values`` with questions correlated within a document (cluster).

    The cluster-robust (sandwich) variance of a mean: with ``G`` clusters, cluster sums ``S_g``,
    cluster sizes ``n_g``, ``N`` values and mean ``m``,
    ``SE² = G / (G − 1) · Σ_g (S_g − n_g·m)² / N²`` (what ``mean x, vce(cluster g)`` reports).
    NaN with fewer than two clusters, where it is undefined.
    """
    vals = np.asarray(values, dtype=float)
    keys = sorted(set(clusters))
    if vals.size == 0 or len(keys) < 2:
        return float("nan")
    idx = {k: i for i, k in enumerate(keys)}
    cl = np.array([idx[c] for c in clusters])
    mean = vals.mean()
    resid = np.bincount(cl, weights=vals - mean, minlength=len(keys))  # S_g − n_g·m
    g = len(keys)
    return float(np.sqrt(g / (g - 1) * np.sum(resid**2)) / vals.size)


def detectable_difference(diffs: Sequence[float], clusters: Sequence[str], *, alpha: float = 0.05,
                          power: float = 0.8) -> float:
    """The smallest mean paired difference a two-sided test at ``alpha`` detects with ``power``:
    ``(z[1 − alpha/2] + z[power]) · SE`` with SE the document-clustered standard error of the
    paired differences ``diffs`` (:func:`clustered_se`); about ``(1.96 + 0.84) · SE`` at the
    defaults. A true difference of this size is found 80% of the time; smaller ones are missed more
    often, so a CI holding 0 says little about differences below it. NaN with fewer than two clusters."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf
    return (z(1 - alpha / 2) + z(power)) * clustered_se(diffs, clusters)
