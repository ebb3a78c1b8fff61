"""The press registry: one entry per kvpress press, saying whether the benchmark runs it, why not,
how it is scored, and whether its scores depend on rho. Everything that treats presses differently
(``compression``, ``replay``, the CONTRIBUTING table) reads :data:`CATALOG`, so a press of a new
kvpress release is added here, in one entry, and the table regenerated (``python -m
benchmark.protocol.press_catalog``).

The benchmark scopes a press to the document by calling its ``score()`` on the document slice of
every layer during the prefill, then applies rho itself (``compression.evict``: the same number
of entries kept per layer and KV head). A press whose behaviour lives elsewhere (``compress()``,
``forward_hook``, ``__call__``: layer or head budgets, chunking, merging, decoding-time
compression, context replay) would be changed by that, so it is refused with the reason, never
run as something else, unless its scoring mode below reproduces what it does on the document. A
submission's own press (``module:Class``) follows the same rule.

Scoring modes (:attr:`Support.mode`):

* ``score``: ``score()`` on the document slice; rho is applied per layer and KV head.
* ``head-wise``: the press's own ``compress()`` on the document slice at each rho picks the evicted
  entries across KV heads (AdaKV's ``masked_key_indices``).
* ``replay``: the document is replayed on the prefill's cache (KVzip; :mod:`benchmark.protocol.replay`),
  one budget across layers and heads.
* ``gated``: learned gates score the document's hidden states in the prefill (FastKVzip), one
  budget across layers and heads.

:data:`CATALOG` covers every press ``kvpress`` exports; a test keeps it equal to kvpress's list
and to the table in CONTRIBUTING.md (:func:`markdown_table`).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

RUNS, NOTE, REFUSED = "runs", "runs with a note", "refused"
SCORE, HEADWISE, REPLAY, GATED = "score", "head-wise", "replay", "gated"
MODES = (SCORE, HEADWISE, REPLAY, GATED)


class PressRefused(ValueError):
    """A press the benchmark cannot scope to the document without changing what it does."""


@dataclass(frozen=True)
class Support:
    """One press: ``status`` (RUNS | NOTE | REFUSED) and the ``note`` that says why; ``mode``, how it
    is scored (one of :data:`MODES`); ``rho_dependent``, whether its ``score()`` reads
    ``compression_ratio`` (then it is scored once per rho; ``tests/test_compressor_contract.py``
    checks the declaration against what the press does)."""

    status: str
    note: str = ""
    mode: str = SCORE
    rho_dependent: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"press mode '{self.mode}': choose from {', '.join(MODES)}")


_LAYER = "its per-layer budgets live in compress(); the protocol keeps the same fraction of every layer and head"
_ADA = ("head-wise budgets: its own compress() runs on the document slice at each ρ and picks the evicted "
        "entries across KV heads (per-head counts differ, the total is ρ's); heads are padded and masked, memory "
        "counts kept entries only; nested: {press: AdaKVPress, kwargs: {press: {press: ExpectedAttentionPress}}}")
_HEADS = ("its head-wise budgets are computed in compress() in a way evict() does not reproduce (AdaKV's "
          "masked_key_indices); running score() alone would silently make it a uniform press")
_DECODE = "compresses during decoding; the protocol compresses the document once, before the question"
_HUB = "loads {what} from the Hugging Face Hub when built: needs it in the local HF cache offline (not run here)"

CATALOG: dict[str, Support] = {
    # ScorerPress family: score() on the document slice is the whole press
    "CURPress": Support(RUNS),
    "CapPress": Support(RUNS),
    "CompactorPress": Support(RUNS, rho_dependent=True),
    "CriticalKVPress": Support(NOTE, "wraps a press given in YAML ({press: CriticalKVPress, kwargs: {press: {press: "
                                     "SnapKVPress}}}); the inner press must run", rho_dependent=True),
    "ExpectedAttentionPress": Support(RUNS),
    "ExpectedAttentionStatsPress": Support(NOTE, _HUB.format(what="pre-computed query statistics")),
    "KVzapPress": Support(NOTE, _HUB.format(what="its surrogate model (kwarg model_type)")),
    "KeyDiffPress": Support(RUNS),
    "KnormPress": Support(RUNS),
    "LagKVPress": Support(RUNS),
    "LeverageScorePress": Support(RUNS),
    "NonCausalAttnPress": Support(RUNS),
    "QFilterPress": Support(NOTE, _HUB.format(what="its learned Q-filters")),
    "RandomPress": Support(RUNS, "the random-eviction control (seeded per document)"),
    "SnapKVPress": Support(RUNS),
    "StreamingLLMPress": Support(RUNS, rho_dependent=True),
    "TOVAPress": Support(RUNS),
    "ObservedAttentionPress": Support(REFUSED, "needs the eager attention matrix of the prefill "
                                               "(attn_implementation='eager'); the benchmark prefills with SDPA"),
    "PyramidKVPress": Support(REFUSED, _LAYER + " (its score() alone is SnapKV's, so it would run as SnapKV)"),
    # bases
    "BasePress": Support(REFUSED, "abstract base class"),
    "ScorerPress": Support(REFUSED, "abstract base class: score() is not implemented"),
    # behaviour in compress() / forward_hook / __call__
    "AdaKVPress": Support(NOTE, _ADA, mode=HEADWISE),
    "CriticalAdaKVPress": Support(NOTE, _ADA, mode=HEADWISE),
    "LUKVPress": Support(REFUSED, "head-wise budgets from calibrated budget curves that only its own __call__ "
                                  "context manager loads; scoping that to the document is not implemented yet"),
    "KVzipPress": Support(NOTE, "context replay scoped to the document: after the prefill the document alone is "
                                "replayed behind 'Repeat the previous context exactly.'; an entry's score is the most "
                                "attention a replay query pays it; one budget across layers and heads (layerwise: "
                                "per layer), evicted head-wise; the prefill costs about 2-3x", mode=REPLAY),
    "FastKVzipPress": Support(NOTE, "its learned gates score the document's hidden states in the prefill (sinks "
                                    "and recent window: the document's); one budget across layers and heads as "
                                    "KVzipPress. " + _HUB.format(what="the gates for the model"), mode=GATED),
    "KVgradPress": Support(NOTE, "KVzip's replay scoped to the document, scored by input × gradient attribution "
                                 "(one forward and one backward pass per chunk, about 3-4x the prefill); budget as "
                                 "KVzipPress", mode=REPLAY),
    "RestoreKVPress": Support(REFUSED, "learned restoration on top of KVzip (see KVzipPress), weights from the Hub"),
    "BlockPress": Support(REFUSED, "scores block by block, each block seeing only the keys before it; the protocol "
                                   "scores the whole document at once"),
    "ChunkPress": Support(REFUSED, "compresses each chunk independently to the ratio; the protocol's budget is over "
                                   "the whole document"),
    "ChunkKVPress": Support(REFUSED, "keeps whole chunks chosen in compress(); per-entry top-k would split chunks"),
    "EntropyGatedChunkKVPress": Support(REFUSED, "chunk selection in compress() (see ChunkKVPress)"),
    "PerLayerCompressionPress": Support(REFUSED, _LAYER),
    "SimLayerKVPress": Support(REFUSED, "decides per layer (lazy layers) in compress(); " + _LAYER.split("; ")[1]),
    "DuoAttentionPress": Support(REFUSED, "retrieval vs streaming heads (head patterns from the Hub) in compress(): "
                                          "head-wise budgets"),
    "KVComposePress": Support(REFUSED, "composite tokens with per-head selection from its own hooks: head-wise "
                                       "budgets"),
    "ThinKPress": Support(REFUSED, "prunes key channels (head_dim), not entries: ρ as a fraction of entries does "
                                   "not apply"),
    "KeyRerotationPress": Support(REFUSED, "re-rotates the kept keys to new positions; the protocol keeps every kept "
                                           "entry at its original RoPE position"),
    "MergingPress": Support(REFUSED, "merges evicted entries into kept ones; the protocol evicts (memory = kept "
                                     "entries)"),
    "CAMPress": Support(REFUSED, "cache merging during decoding; " + _DECODE),
    "ComposedPress": Support(REFUSED, "chains presses, each compressing what the previous kept: a budget per "
                                      "stage, not one ρ"),
    "DMSPress": Support(REFUSED, "threshold eviction (no fixed budget) from its own forward_hook; the protocol "
                                 "keeps exactly ρ's budget"),
    "DecodingPress": Support(REFUSED, _DECODE),
    "PrefillDecodingPress": Support(REFUSED, _DECODE),
    "CompressionRatioDecodingPress": Support(REFUSED, _DECODE),
    "FinchPress": Support(REFUSED, "query-aware: needs the question inside the prefill; " + _DECODE.split("; ")[1]),
}


def kvpress_presses() -> list[str]:
    """Every press class kvpress exports (BasePress and its subclasses), sorted."""
    import kvpress

    return sorted(n for n in dir(kvpress) if isinstance(getattr(kvpress, n), type)
                  and issubclass(getattr(kvpress, n), kvpress.BasePress))


def _overrides(cls, name: str) -> bool:
    """Whether ``cls`` defines ``name`` below kvpress's ScorerPress / BasePress."""
    from kvpress import BasePress, ScorerPress

    return any(name in vars(k) for k in cls.__mro__ if k not in (ScorerPress, BasePress, object))


def entry(press) -> Support | None:
    """The catalog entry of a kvpress press (by its class); None for any other class (a submission's
    own, or one of ``benchmark.protocol.presses``: those declare what they need on the class)."""
    cls = type(press)
    return CATALOG.get(cls.__name__) if cls.__module__.startswith("kvpress") else None


def scoring_mode(press) -> str:
    """How the benchmark scores ``press`` (one of :data:`MODES`): its entry's, else ``score``."""
    support = entry(press)
    return support.mode if support is not None else SCORE


def check_supported(press, name: str) -> None:
    """Raise :class:`PressRefused` (naming the press and the reason) unless ``press`` runs here.

    Presses listed in :data:`CATALOG` follow it; any other class (a submission's own) is refused
    when it overrides ``compress``, ``forward_hook`` or ``__call__`` (behaviour that scoring the
    document slice would drop). Nested presses (``press=`` / ``presses=``) are checked too."""
    cls = type(press)
    support = entry(press)
    if support is not None and support.status == REFUSED:
        raise PressRefused(f"compressor {name}: refused: {support.note}")
    if support is None:
        hooks = [h for h in ("compress", "forward_hook", "__call__") if _overrides(cls, h)]
        if hooks:
            raise PressRefused(f"compressor {name}: refused: it overrides {', '.join(hooks)}(), which the benchmark "
                               "does not run (it calls score() on the document slice and evicts by ρ itself); move "
                               "the logic into score() or declare it a ScorerPress")
    for attr in ("press", "presses"):
        inner = getattr(press, attr, None)
        for p in inner if isinstance(inner, (list, tuple)) else [inner] if inner is not None else []:
            check_supported(p, f"{name} > {type(p).__name__}")


def markdown_table() -> str:
    """The CONTRIBUTING.md table: every kvpress press, its status, how it is scored, and the note."""
    lines = ["| press | status | scored by | scores depend on ρ | note |", "|---|---|---|---|---|"]
    order = {RUNS: 0, NOTE: 1, REFUSED: 2}
    for name in sorted(CATALOG, key=lambda n: (order[CATALOG[n].status], n)):
        s = CATALOG[name]
        mode, rho = ("", "") if s.status == REFUSED else (s.mode, "yes" if s.rho_dependent else "no")
        lines.append(f"| `{name}` | {s.status} | {mode} | {rho} | {s.note.replace('|', '/')} |")
    return "\n".join(lines)


_TABLE = re.compile(r"(<!-- press table:.*?-->\n)(.*?)(\n<!-- end press table -->)", flags=re.S)


def contributing_table(text: str) -> str:
    """The generated table as it stands in CONTRIBUTING.md's ``text``."""
    match = _TABLE.search(text)
    if match is None:
        raise ValueError("CONTRIBUTING.md has no '<!-- press table: ... -->' ... '<!-- end press table -->' section")
    return match.group(2)


def write_contributing(path: Path) -> bool:
    """Regenerate the table in CONTRIBUTING.md at ``path``; True when it changed."""
    text = path.read_text(encoding="utf-8")
    contributing_table(text)  # the markers are there
    new = _TABLE.sub(lambda m: m.group(1) + markdown_table() + m.group(3), text)
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":  # python -m benchmark.protocol.press_catalog [CONTRIBUTING.md]
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "CONTRIBUTING.md")
    print(f"{target}: {'table regenerated' if write_contributing(target) else 'table up to date'}")
