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

``evict(...)`` is the one place where rho is applied.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from kvpress.utils import compute_n_kept
from transformers import DynamicCache

from .paths import import_from

#: per layer: (keys, values), each (batch, kv_heads, seq, head_dim)
KV = list[tuple[torch.Tensor, torch.Tensor]]


def build_compressor(name: str, kwargs: dict | None = None, code_dir=None):
    """A kvpress press by class name (``SnapKVPress``) or ``module:Class`` from a submission's code."""
    kwargs = dict(kwargs or {})
    if "compression_ratio" in kwargs:
        raise ValueError("compression_ratio is set by the framework at every rho of the grid; remove it from kwargs")
    cls = import_from(code_dir, name) if ":" in name else kvpress_press(name)
    press = cls(**kwargs)
    if not callable(getattr(press, "score", None)):
        raise TypeError(f"compressor {name} has no score() method; only scorer presses can be scoped to the document")
    return press


def kvpress_press(name: str):
    """The kvpress press class ``name``; anything else kvpress exports (a module, a function) is refused."""
    import kvpress

    cls = getattr(kvpress, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, kvpress.BasePress)):
        raise ValueError(f"kvpress has no press named '{name}'")
    return cls


def score_depends_on_rho(press) -> bool:
    """Whether the press's ``score`` reads ``compression_ratio`` (so each rho needs its own scores)."""
    declared = getattr(press, "score_depends_on_rho", None)
    if declared is not None:
        return bool(declared)
    try:
        return "compression_ratio" in inspect.getsource(type(press).score)
    except (OSError, TypeError):
        return True


@dataclass
class DocumentScores:
    """Scores of the document entries: ``by_rho[rho or None][layer]`` is (kv_heads, n_doc)."""

    doc_start: int
    doc_end: int
    by_rho: dict[float | None, list[torch.Tensor]] = field(default_factory=dict)

    def for_rho(self, rho: float) -> list[torch.Tensor]:
        return self.by_rho[rho] if rho in self.by_rho else self.by_rho[None]


def _language_model(model):
    inner = model.model
    return inner.language_model if hasattr(inner, "language_model") else inner


@torch.no_grad()
def prefill(model, input_ids: list[int], doc_span: tuple[int, int], press=None, rhos=()) -> tuple[KV, DocumentScores | None]:
    """Run the prefix+document through the model once; return its full KV and, if a press is
    given, the press's scores of the document entries (for every rho it needs)."""
    doc_start, doc_end = doc_span
    scores = DocumentScores(doc_start, doc_end) if press is not None else None
    per_rho = press is not None and score_depends_on_rho(press)
    score_keys = [r for r in rhos if r < 1] if per_rho else [None]
    cache = DynamicCache()
    hooks = []
    if press is not None and doc_end > doc_start:
        if hasattr(press, "post_init_from_model"):
            press.post_init_from_model(model)
        lm = _language_model(model)
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
            for key in score_keys:
                if key is not None:
                    press.compression_ratio = key
                s = press.score(module, hidden, keys, values, attn, doc_kwargs)
                scores.by_rho[key].append(s[0].float())
            return output

        for layer in lm.layers:
            layer.self_attn.rotary_emb = lm.rotary_emb  # some presses expect it, as in kvpress
            hooks.append(layer.self_attn.register_forward_hook(hook, with_kwargs=True))
    try:
        ids = torch.tensor([input_ids], device=model.device)
        _language_model(model)(input_ids=ids, past_key_values=cache, use_cache=True)
    finally:
        for h in hooks:
            h.remove()
    kv = [(layer.keys, layer.values) for layer in cache.layers]
    return kv, scores


def evict(kv: KV, scores: DocumentScores | None, doc_span: tuple[int, int], rho: float) -> tuple[KV, int]:
    """Evict the fraction ``rho`` of the document's entries, per layer and KV head, keeping
    the highest-scoring ones; every non-document entry is kept. Returns the pruned KV and the
    number of document entries kept per head.

    The budget is kvpress's: ``compute_n_kept(n_doc, rho)`` = ``max(1, int(n_doc * (1 - rho)))``
    for rho < 1 and 0 for rho = 1. Kept entries stay in their original order, so rho = 0
    reproduces the uncompressed cache exactly.
    """
    doc_start, doc_end = doc_span
    n_doc = doc_end - doc_start
    n_keep = compute_n_kept(n_doc, rho) if n_doc else 0
    if n_keep >= n_doc:
        return [(k[:, :, :doc_end], v[:, :, :doc_end]) for k, v in kv], n_doc
    if n_keep == 0:
        return [(k[:, :, :doc_start], v[:, :, :doc_start]) for k, v in kv], 0
    if scores is None:
        raise ValueError("rho strictly between 0 and 1 needs a compressor's scores")
    out = []
    for (k, v), s in zip(kv, scores.for_rho(rho)):
        heads, _, dim = k.shape[1], k.shape[2], k.shape[3]
        top = s.topk(n_keep, dim=-1).indices.sort(dim=-1).values + doc_start  # (heads, n_keep)
        prefix = torch.arange(doc_start, device=k.device).expand(heads, doc_start)
        idx = torch.cat([prefix, top.to(k.device)], dim=-1)[None, :, :, None].expand(k.shape[0], heads, -1, dim)
        out.append((k.gather(2, idx), v.gather(2, idx)))
    return out, n_keep


def kv_bytes(kv: KV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
