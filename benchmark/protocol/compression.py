"""Stage: compression. Score the document's KV entries with a compressor, then evict a
fraction rho of them.

A compressor is any kvpress ``ScorerPress`` (e.g. ``SnapKVPress``) or an object with the same
``score(module, hidden_states, keys, values, attentions, kwargs) -> (batch, kv_heads, len)``
method. It is applied to **document tokens only**: during the prefill a forward hook on every
attention layer hands the press the document slice of the hidden states, keys, values and
rotary embeddings, exactly as if the document were the whole context. Chat-template tokens,
the instruction, the question and the answer are never evicted.

The prefill runs once; scores are computed in that same pass. A press whose ranking does not
depend on the ratio (most of them) is scored once and the kept set for every rho is the
top-k of the same scores; a press whose ``score`` reads ``compression_ratio`` (StreamingLLM,
Compactor) is scored once per rho in the same pass, with ``compression_ratio = rho``.
Which is which is declared (:func:`score_depends_on_rho`), never guessed.

:class:`Compressor` is the contract a press meets, stated once.

``n_kept(n_doc, rho, budget)`` is the one place where rho becomes a number of kept entries;
``evict(...)`` applies it to a press's scores, ``evict_planned(...)`` builds the cache from a
checked plan (:mod:`benchmark.protocol.plan`).
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from kvpress.utils import compute_n_kept
from transformers import DynamicCache

from ..paths import import_from
from . import press_catalog
from .press_catalog import GATED, HEADWISE, REPLAY, SCORE, scoring_mode
from .replay import keep_masks, replay_scores

#: per layer: (keys, values), each (batch, kv_heads, seq, head_dim)
KV = list[tuple[torch.Tensor, torch.Tensor]]


@runtime_checkable
class Compressor(Protocol):
    """What a compressor is and promises: a kvpress ``ScorerPress`` meets it, and so must a
    submission's own ``module:Class`` (a small dataclass with one ``score`` method, like kvpress's
    ``KnormPress``). ``conformance.check_submission`` tests each promise on tiny models, one
    function per promise (named below).

    ``score(module, hidden_states, keys, values, attentions, kwargs)`` returns one score per KV
    head and document entry, ``(batch, kv_heads, n_doc)``, higher = keep, no NaN
    (``check_score_shape``).

    * **Document-only slices.** It sees the document as if it were the whole context:
      ``hidden_states`` is (batch, n_doc, hidden), ``keys``/``values`` are (batch, kv_heads, n_doc,
      head_dim), ``kwargs["position_embeddings"]`` and ``kwargs["cache_position"]`` are sliced to
      the document; ``attentions`` is None (SDPA). Prefix, question and answer are never evicted.
    * **No cache mutation.** It only scores: the keys, values, cache and module it is given stay
      as they were (the framework evicts, in :func:`evict`) (``check_cache_untouched``).
    * **Deterministic.** The same document gets the same scores; randomness is seeded with a
      local ``torch.Generator`` (as ``RandomPress(seed=0)`` does) (``check_deterministic``).
    * **Exact budget.** It does not choose how many entries stay: :func:`evict` keeps exactly
      :func:`n_kept` per layer and KV head at every rho (kvpress's ``compute_n_kept`` by default)
      (``check_eviction_budget``).
    * **score_depends_on_rho, declared.** Whether the ranking reads ``self.compression_ratio``:
      if so it is scored once per rho (``compression_ratio = rho``), else once for all rhos. kvpress
      presses: their ``press_catalog.CATALOG`` entry; others: a class attribute ``score_depends_on_rho``
      or the submission's ``compressor.score_depends_on_rho``; undeclared: True (always right,
      only slower). See :func:`score_depends_on_rho` (``check_declared_rho_dependence``).

    ``compression_ratio`` is set by the framework only (never in a submission's kwargs), and put
    back after scoring (:func:`restored_after_scoring`).
    """

    compression_ratio: float

    def score(self, module, hidden_states, keys, values, attentions, kwargs) -> torch.Tensor: ...


def _build_nested(value, code_dir):
    """A kwarg that is itself a press section (``{press: ..., kwargs: ...}``, or a list of them) is
    built first: ``{press: CriticalKVPress, kwargs: {press: {press: SnapKVPress}}}`` in YAML."""
    if isinstance(value, dict) and "press" in value:
        return _make_press(value["press"], value.get("kwargs"), code_dir)
    if isinstance(value, list) and value and all(isinstance(v, dict) and "press" in v for v in value):
        return [_make_press(v["press"], v.get("kwargs"), code_dir) for v in value]
    return value


def _make_press(name: str, kwargs: dict | None, code_dir):
    kwargs = {k: _build_nested(v, code_dir) for k, v in (kwargs or {}).items()}
    cls = import_from(code_dir, name) if ":" in name else kvpress_press(name)
    message = _unknown_kwarg(cls, name, kwargs)
    if message:  # what cls(**kwargs) would raise, with the kwargs the press does take
        raise TypeError(message)
    return cls(**kwargs)


def press_kwargs(cls) -> list[str] | None:
    """The keyword arguments a press class takes (its dataclass fields, or its ``__init__``'s),
    ``compression_ratio`` left out (the framework sets it); None when it takes any (``**kwargs``)."""
    params = inspect.signature(cls).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "compression_ratio"]


def _unknown_kwarg(cls, name: str, kwargs: dict) -> str | None:
    """The message for the first kwarg ``cls`` does not take (with the ones it does), or None."""
    valid = press_kwargs(cls)
    unknown = [k for k in kwargs if valid is not None and k not in valid and k != "compression_ratio"]
    if not unknown:
        return None
    return f"{name} got an unexpected keyword argument '{unknown[0]}' (its kwargs: {', '.join(valid) or 'none'})"


def check_press_kwargs(name: str, kwargs: dict | None, where: str = "compressor/kwargs") -> None:
    """Before a press is built: every kwarg name of a kvpress press (or one of ours), nested press
    sections included, is one the class takes. Raises ValueError naming the field path
    (``compressor/kwargs/press/kwargs/windw_size``) and the class's kwargs. A submission's own
    ``module:Class`` is not imported here (it runs in the sandbox) and is checked when built there."""
    if ":" in name:
        return
    cls = kvpress_press(name)
    for key, value in (kwargs or {}).items():
        message = _unknown_kwarg(cls, name, {key: value})
        if message:
            raise ValueError(f"field '{where}/{key}': {message}")
        sections = value if isinstance(value, list) else [value]
        for i, v in enumerate(sections):
            if not (isinstance(v, dict) and isinstance(v.get("press"), str)):
                continue
            inner = f"{where}/{key}" + (f"/{i}" if isinstance(value, list) else "")
            if ":" not in v["press"]:
                try:
                    kvpress_press(v["press"])
                except ValueError as exc:
                    raise ValueError(f"field '{inner}/press': '{v['press']}': {exc}") from None
            check_press_kwargs(v["press"], v.get("kwargs"), f"{inner}/kwargs")


def build_compressor(name: str, kwargs: dict | None = None, code_dir=None) -> Compressor:
    """A kvpress press by class name (``SnapKVPress``), one of ``benchmark.protocol.presses``, or
    ``module:Class`` from a submission's code; kwargs may nest presses. Presses that cannot be
    scoped to the document are refused with the reason (``press_catalog``), never run as
    something else."""
    if "compression_ratio" in (kwargs or {}):
        raise ValueError("compression_ratio is set by the framework at every rho of the grid; remove it from kwargs")
    press = _make_press(name, kwargs, code_dir)
    press_catalog.check_supported(press, name)
    if not callable(getattr(press, "score", None)) and scoring_mode(press) == SCORE:
        raise TypeError(f"compressor {name} has no score() method; only scorer presses can be scoped to the document")
    return press


def is_headwise(press) -> bool:
    """A press whose compress() allocates the budget across KV heads (the total stays rho's) and marks
    the evicted entries in ``module.masked_key_indices`` instead of shrinking the cache (AdaKV)."""
    return scoring_mode(press) == HEADWISE


def is_replay(press) -> bool:
    """A context-replay press (KVzip, KVgrad): scored by :mod:`benchmark.protocol.replay`."""
    return scoring_mode(press) == REPLAY


class RaggedKV(list):
    """Per layer (keys, values) padded to the longest head, with ``keep[layer]`` (kv_heads, n_entries)
    marking the real entries: head-wise budgets keep a different number of entries per head. The
    padding is never attended to (``attention.sdpa_gqa_attention`` masks it) and never counted."""

    keep: list[torch.Tensor]


def kv_entries(kv: KV) -> int:
    """Kept entries over layers and KV heads (padding of a :class:`RaggedKV` not counted)."""
    if isinstance(kv, RaggedKV):
        return int(sum(int(m.sum()) for m in kv.keep))
    return int(sum(k.shape[1] * k.shape[2] for k, _ in kv))


def _headwise_keep(press, module, hidden, keys, values, attn, kwargs, rho: float) -> torch.Tensor:
    """Run the press's own compress() on the document slice at ``rho`` and read which entries it
    masked: (kv_heads, n_doc), 1.0 = kept. compress() leaves keys and values untouched."""
    press.compression_ratio = rho
    module.masked_key_indices = None
    press.compress(module, hidden, keys, values, attn, kwargs)
    keep = torch.ones(keys.shape[1], keys.shape[2], device=keys.device)
    masked = getattr(module, "masked_key_indices", None)
    module.masked_key_indices = None  # never left for kvpress's attention patch to apply later
    if masked is not None:
        batch, head, seq = masked
        sel = batch == 0
        keep[head[sel].to(keep.device), seq[sel].to(keep.device)] = 0.0
    return keep


def is_gated(press) -> bool:
    """A press whose learned gates score every layer in the prefill (FastKVzip); the budget is global."""
    return scoring_mode(press) == GATED


def kvpress_press(name: str):
    """The press class ``name``: one kvpress exports, or one of ours (``benchmark.protocol.presses``, e.g. the
    paper's document-scoped Compactor). Anything else (a module, a function) is refused."""
    import kvpress

    from . import presses

    for source in (kvpress, presses):
        cls = getattr(source, name, None)
        if inspect.isclass(cls) and issubclass(cls, kvpress.BasePress):
            return cls
    import difflib

    known = [n for source in (kvpress, presses) for n in dir(source)
             if inspect.isclass(getattr(source, n)) and issubclass(getattr(source, n), kvpress.BasePress)]
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else " (CONTRIBUTING.md lists the presses that run)"
    raise ValueError(f"kvpress has no press named '{name}' (nor has benchmark.protocol.presses){hint}")


def score_depends_on_rho(press) -> bool:
    """Whether each rho needs its own scores (the press's ranking reads ``compression_ratio``), as
    declared: by the press or the submission (``score_depends_on_rho``), else by its
    ``press_catalog.CATALOG`` entry for a kvpress press, else True (scoring per rho is always right).
    Head-wise, replay and gated presses allocate their budget per rho by construction."""
    if scoring_mode(press) != SCORE:
        return True
    declared = getattr(press, "score_depends_on_rho", None)
    if declared is not None:
        return bool(declared)
    support = press_catalog.entry(press)
    return support.rho_dependent if support is not None else True


@dataclass
class DocumentScores:
    """Scores of the document entries: ``by_rho[rho or None][layer]`` is (kv_heads, n_doc)."""

    doc_start: int
    doc_end: int
    by_rho: dict[float | None, list[torch.Tensor]] = field(default_factory=dict)
    headwise: bool = False  # by_rho holds keep masks (1 = kept) of a head-wise press, one per rho

    def for_rho(self, rho: float) -> list[torch.Tensor]:
        return self.by_rho[rho] if rho in self.by_rho else self.by_rho[None]


def language_model(model):
    """The decoder stack of a causal LM (``layers``, ``rotary_emb``): ``model.model``, or its
    ``language_model`` in a multimodal model. Prefill runs it without the LM head."""
    inner = model.model
    return inner.language_model if hasattr(inner, "language_model") else inner


@torch.no_grad()
def prefill(model, input_ids: list[int], doc_span: tuple[int, int], press=None, rhos=(),
            tokenizer=None, budget: str = "kvpress") -> tuple[KV, DocumentScores | None]:
    """Run the prefix+document through the model once; return its full KV and, if a press is
    given, the press's scores of the document entries (for every rho it needs). A context-replay
    press (KVzip, see ``replay``) then replays the document on that cache and needs ``tokenizer``."""
    doc_start, doc_end = doc_span
    if press is not None and is_replay(press):
        kv, _ = prefill(model, input_ids, doc_span)
        return kv, _replay_prefill(model, tokenizer, input_ids, doc_span, press, rhos, kv, budget)
    headwise = press is not None and is_headwise(press)
    gated = press is not None and is_gated(press)  # FastKVzip: per-layer gate scores, one budget for all layers
    scores = DocumentScores(doc_start, doc_end, headwise=headwise or gated) if press is not None else None
    per_rho = press is not None and (headwise or score_depends_on_rho(press))
    score_keys = [] if gated else [r for r in rhos if (0 < r < 1 if headwise else r < 1)] if per_rho else [None]
    if gated:
        press.score_val = [None] * len(language_model(model).layers)
    cache = DynamicCache()
    hooks = []
    if press is not None and doc_end > doc_start:
        if hasattr(press, "post_init_from_model"):
            press.post_init_from_model(model)
        lm = language_model(model)
        for key in score_keys:
            scores.by_rho[key] = []

        def hook(module, args, kwargs, output):
            # Like kvpress's BasePress.forward_hook, but the press only ever sees the document.
            layer_cache = kwargs["past_key_values"].layers[module.layer_idx]
            sl = slice(doc_start, doc_end)
            hidden = kwargs["hidden_states"][:, sl]
            keys, values = layer_cache.keys[:, :, sl], layer_cache.values[:, :, sl]
            attn = output[1][..., sl, sl] if len(output) > 1 and output[1] is not None else None
            doc_kwargs = dict(kwargs)
            cos, sin = kwargs["position_embeddings"]
            doc_kwargs["position_embeddings"] = (cos[:, sl], sin[:, sl])
            if kwargs.get("cache_position") is not None:
                doc_kwargs["cache_position"] = kwargs["cache_position"][sl]
            if gated:  # its gate reads the document's hidden states (sinks and window: the document's)
                press._score_fast(module, hidden)
            for key in score_keys:
                if headwise:
                    scores.by_rho[key].append(
                        _headwise_keep(press, module, hidden, keys, values, attn, doc_kwargs, key))
                    continue
                if key is not None:
                    press.compression_ratio = key
                s = press.score(module, hidden, keys, values, attn, doc_kwargs)
                scores.by_rho[key].append(s[0].float())
            return output

        for layer in lm.layers:
            hooks.append(layer.self_attn.register_forward_hook(hook, with_kwargs=True))
    try:
        with restored_after_scoring(model, press if hooks else None):
            ids = torch.tensor([input_ids], device=model.device)
            language_model(model)(input_ids=ids, past_key_values=cache, use_cache=True)
    finally:
        for h in hooks:
            h.remove()
    kv = [(layer.keys, layer.values) for layer in cache.layers]
    if gated and doc_end > doc_start:
        s = torch.stack([g[0].float() for g in press.score_val])  # (layers, heads, n_doc)
        press.score_val = None
        for r in rhos:
            if 0 < r < 1:
                scores.by_rho[r] = keep_masks(s, n_kept(doc_end - doc_start, r, budget), press.layerwise)
    return kv, scores


def _replay_prefill(model, tokenizer, input_ids, doc_span, press, rhos, kv: KV, budget: str) -> DocumentScores:
    """Keep masks per rho from KVzip's replay of the document on the prefill's cache."""
    doc_start, doc_end = doc_span
    scores = DocumentScores(doc_start, doc_end, headwise=True)
    if doc_end > doc_start and any(0 < r < 1 for r in rhos):
        cache = DynamicCache()
        for i, (k, v) in enumerate(kv):
            cache.update(k, v, i)
        if tokenizer is None:  # as KVzipPress itself does: the model's own tokenizer files
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model.config.name_or_path)
        with restored_after_scoring(model, press):  # rotary_emb on every layer, as KVzipPress.__call__ does
            s = replay_scores(model, tokenizer, cache, input_ids, doc_span, press)
        for r in rhos:
            if 0 < r < 1:
                scores.by_rho[r] = [m.to(kv[0][0].device)
                                    for m in keep_masks(s, n_kept(doc_end - doc_start, r, budget), press.layerwise)]
    return scores


_MISSING = object()


@contextlib.contextmanager
def restored_after_scoring(model, press):
    """Scoring's changes, for its duration only: each attention layer gets the model's
    ``rotary_emb`` (presses expect it there, as kvpress's own pipeline sets it), and the press's
    ``compression_ratio`` may be set per rho. Both are put back afterwards, so neither the model
    (its module tree, what a later adapter or evaluation sees) nor the press changes for good.
    ``press=None``: nothing is scored, nothing changed."""
    if press is None:
        yield
        return
    lm = language_model(model)
    layers = [layer.self_attn for layer in lm.layers]
    rotary = [getattr(attn, "rotary_emb", _MISSING) for attn in layers]
    ratio = getattr(press, "compression_ratio", _MISSING)
    for attn in layers:
        attn.rotary_emb = lm.rotary_emb
    try:
        yield
    finally:
        for attn, old in zip(layers, rotary):
            if old is _MISSING:
                del attn.rotary_emb
            else:
                attn.rotary_emb = old
        if ratio is not _MISSING:
            press.compression_ratio = ratio


def n_kept(n_doc: int, rho: float, budget: str = "kvpress") -> int:
    """Document entries kept at ``rho``: kvpress's ``max(1, int(n (1 - rho)))`` (0 at rho = 1), or
    the paper's ``floor(n (1 - rho) + 1e-6)``, which keeps 0 when n (1 - rho) < 1 and does not lose
    an entry to float round-off (10 * (1 - 0.9) = 0.9999999999999998, which int() makes 0)."""
    import math

    if not n_doc:
        return 0
    if budget == "paper_floor":
        return min(n_doc, int(math.floor(n_doc * (1.0 - rho) + 1e-6)))
    if budget != "kvpress":
        from ..config import BUDGETS

        raise ValueError(f"unknown budget '{budget}' (choose from {', '.join(BUDGETS)})")
    return compute_n_kept(n_doc, rho)


def keep_top(scores: DocumentScores, rho: float, n_keep: int) -> list[torch.Tensor]:
    """Per layer the (kv_heads, n_doc) keep mask of the ``n_keep`` highest-scoring entries per head
    (a head-wise press's own masks as they are)."""
    per_layer = scores.for_rho(rho)
    if scores.headwise:
        return [m.to("cpu") > 0.5 for m in per_layer]
    out = []
    for s in per_layer:
        keep = torch.zeros(s.shape, dtype=torch.bool)
        keep.scatter_(-1, s.topk(n_keep, dim=-1).indices.to("cpu"), True)
        out.append(keep)
    return out


def evict(kv: KV, scores: DocumentScores | None, doc_span: tuple[int, int], rho: float,
          budget: str = "kvpress") -> tuple[KV, int]:
    """Evict the fraction ``rho`` of the document's entries, per layer and KV head, keeping
    the highest-scoring ones; every non-document entry is kept. Returns the pruned KV and the
    number of document entries kept per head.

    The budget is the spec's (:func:`n_kept`): kvpress's ``max(1, int(n_doc * (1 - rho)))`` for
    rho < 1 and 0 for rho = 1, or the paper's floor. Kept entries stay in their original order, so rho = 0
    reproduces the uncompressed cache exactly.
    """
    doc_start, doc_end = doc_span
    n_keep = n_kept(doc_end - doc_start, rho, budget)
    if 0 < n_keep < doc_end - doc_start and scores is None:
        raise ValueError("rho strictly between 0 and 1 needs a compressor's scores")
    keep = keep_top(scores, rho, n_keep) if 0 < n_keep < doc_end - doc_start else None
    return evict_planned(kv, keep, doc_span, n_keep), n_keep


def evict_planned(kv: KV, keep, doc_span: tuple[int, int], n_keep: int | None = None) -> KV:
    """The cache that keeps, of the document, the entries ``keep`` marks (per layer a bool
    ``(kv_heads, n_doc)``, or a ``(layers, kv_heads, n_doc)`` tensor: a checked plan,
    :mod:`benchmark.protocol.plan`) and every non-document entry. ``keep=None`` with ``n_keep`` 0 or
    ``n_doc`` keeps none or all of the document. Kept entries stay in document order; heads that
    keep different numbers of entries make a :class:`RaggedKV`."""
    doc_start, doc_end = doc_span
    n_doc = doc_end - doc_start
    if keep is None:
        if n_keep not in (0, n_doc):
            raise ValueError(f"keeping {n_keep} of {n_doc} document entries needs a plan")
        return [(k[:, :, :doc_start + n_keep], v[:, :, :doc_start + n_keep]) for k, v in kv]
    counts = torch.stack([m.sum(dim=-1) for m in keep])  # (layers, heads)
    if not bool((counts == counts.flatten()[0]).all()):
        return _evict_headwise(kv, list(keep), doc_start, 0)
    width = int(counts.flatten()[0])
    if width in (0, n_doc):  # none or all of the document: a view, no copy
        return evict_planned(kv, None, doc_span, width)
    out = []
    for (k, v), m in zip(kv, keep):
        heads, dim = k.shape[1], k.shape[3]
        # kept positions in document order: a stable sort of "not kept" puts them first
        top = torch.sort((~m).to(torch.int8), dim=-1, stable=True).indices[:, :width].to(k.device) + doc_start
        prefix = torch.arange(doc_start, device=k.device).expand(heads, doc_start)
        idx = torch.cat([prefix, top], dim=-1)[None, :, :, None].expand(k.shape[0], heads, -1, dim)
        out.append((k.gather(2, idx), v.gather(2, idx)))
    return out


def _evict_headwise(kv: KV, keeps: list[torch.Tensor], doc_start: int, n_keep: int = 0) -> KV:
    """Each head keeps the entries its mask marks (a total of kv_heads * n_keep per layer, or over
    all layers for KVzip, split unevenly); heads are padded to the longest head of any layer and
    the padding is marked in ``RaggedKV.keep``."""
    out = RaggedKV()
    out.keep = []
    # one width for every layer (the decode cache and its mask share one length across layers)
    width = max(int((m > 0.5).sum(dim=-1).max()) for m in keeps)
    for (k, v), keep in zip(kv, keeps):
        heads, dim = k.shape[1], k.shape[3]
        keep = keep.to(k.device) > 0.5
        counts = keep.sum(dim=-1)  # per head
        # kept positions first (in document order), then padding: a stable sort of "not kept"
        order = torch.sort((~keep).to(torch.int8), dim=-1, stable=True).indices[:, :width]
        real = torch.arange(width, device=k.device)[None, :] < counts[:, None]  # (heads, width)
        prefix = torch.arange(doc_start, device=k.device).expand(heads, doc_start)
        idx = torch.cat([prefix, order + doc_start], dim=-1)[None, :, :, None].expand(k.shape[0], heads, -1, dim)
        out.append((k.gather(2, idx), v.gather(2, idx)))
        out.keep.append(torch.cat([torch.ones(heads, doc_start, dtype=torch.bool, device=k.device), real], dim=-1))
    return out


def kv_bytes(kv: KV) -> int:
    """Bytes of the kept entries (for a :class:`RaggedKV`, real entries only, not its padding)."""
    if isinstance(kv, RaggedKV):
        return int(sum(int(m.sum()) * (k.shape[-1] * k.element_size() + v.shape[-1] * v.element_size())
                       for (k, v), m in zip(kv, kv.keep)))
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
