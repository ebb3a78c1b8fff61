"""Stage: generation. Greedy answers for many questions from shared compressed caches.

A :class:`Row` is one question asked of one compressed cache. Rows are decoded together as one
batch, whatever cache each one reads, and a batch keeps each *distinct* cache once::

    shared, per distinct cache (its own tensors):  [ cache entries (n_i) ]
    own, per row (the model's cache):              [ question, left-padded ][ answer ... ]

Each row attends over its cache's entries and its own tokens in one softmax
(``attention.shared_prefix_attention``); padding is masked out. Each row's question positions
continue after the *uncompressed* length of its prompt (``position_offset``), as kvpress does; for
rho = 1 the offset is the prefix length, i.e. the prompt without the document. Masked entries get
exactly zero attention weight, so a row's answer does not depend on what it is batched with
(checked by the tests).

The copying decode, which copies every row's cache into its own slot of one padded batch buffer,
is :func:`decode_batch_copy` (``greedy_decode(..., batch_decode=decode_batch_copy)``): the
reference the tests compare with and the other side of ``perf/decode_ab.py``'s A/B.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ..config import BATCHING, BATCHINGS
from . import attention
from .attention import SharedPrefix
from .compression import KV, language_model


class _PreallocatedLayer(DynamicLayer):
    """A cache layer written in place into a buffer sized for the whole decode, instead of
    DynamicLayer's ``torch.cat`` of the entire cache at every generated token."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        super().__init__()
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self._kbuf, self._vbuf, self._len = keys, values, length
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]

    def take_rows(self, keep: torch.Tensor) -> None:
        """Keep only the batch rows ``keep`` (in that order)."""
        self._kbuf, self._vbuf = self._kbuf[keep], self._vbuf[keep]
        self.keys, self.values = self._kbuf[:, :, :self._len], self._vbuf[:, :, :self._len]

    def update(self, key_states, value_states, cache_kwargs=None):
        end = self._len + key_states.shape[-2]
        self._kbuf[:, :, self._len:end] = key_states
        self._vbuf[:, :, self._len:end] = value_states
        self._len = end
        self.keys, self.values = self._kbuf[:, :, :end], self._vbuf[:, :, :end]
        return self.keys, self.values


@dataclass
class Row:
    kv: KV  # per layer (1, kv_heads, n_entries, head_dim)
    position_offset: int  # RoPE position of the first question token
    suffix_ids: list[int]  # question + assistant header + answer prefix


#: decodes one batch of rows: (model, tokenizer, rows, max_new_tokens, stop, leave=) -> one text per row;
#: ``leave``: a row that has stopped leaves the batch before the next step
BatchDecode = Callable[..., list[str]]


def _stop_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


@torch.no_grad()
def greedy_decode(model, tokenizer, rows: list[Row], *, max_new_tokens: int, stop: tuple[str, ...] = (),
                  batch_size: int = 16, batch_decode: BatchDecode | None = None,
                  batching: str = BATCHING) -> list[str]:
    """Decode every row greedily; returns the generated text of each (leading whitespace dropped),
    cut at the first stop string.

    Savings that leave every answer unchanged, since a row's answer depends only on its own
    cache, offset and suffix (masked padding gets exactly zero attention weight):
    rows that read the *same* cache object with the same offset and suffix are decoded once
    (the runner hands identical caches over as one object, e.g. rho = 0 under two scorers);
    rows are batched as ``batching`` says (:data:`benchmark.config.BATCHINGS`), rows on one cache object next to
    each other; and a batch reads each distinct cache once, in place (``batch_decode``, default
    :func:`decode_batch_shared`; :func:`decode_batch_copy` is the copying reference)."""
    if batching not in BATCHINGS:
        raise ValueError(f"batching {batching!r}: expected one of {', '.join(BATCHINGS)}")
    batch_decode = batch_decode or decode_batch_shared
    unique: dict[tuple, int] = {}
    slot = [unique.setdefault((id(r.kv), r.position_offset, tuple(r.suffix_ids)), len(unique)) for r in rows]
    first = {}
    for i, s in enumerate(slot):
        first.setdefault(s, i)
    todo = [rows[first[s]] for s in range(len(unique))]
    cache_rank: dict[int, int] = {}
    for r in todo:
        cache_rank.setdefault(id(r.kv), len(cache_rank))
    by_suffix = batching == "suffix"
    order = sorted(range(len(todo)), key=lambda i: (len(todo[i].suffix_ids) if by_suffix else 0,
                                                     -todo[i].kv[0][0].shape[2], cache_rank[id(todo[i].kv)]))
    texts: list[str] = [""] * len(todo)
    for i in range(0, len(order), batch_size):
        batch = order[i:i + batch_size]
        for j, text in zip(batch, batch_decode(model, tokenizer, [todo[j] for j in batch], max_new_tokens, stop,
                                                     leave=by_suffix)):
            texts[j] = text
    return [texts[s] for s in slot]


def decode_batch_shared(model, tokenizer, rows: list[Row], max_new_tokens: int, stop: tuple[str, ...],
                        leave: bool = True) -> list[str]:
    """Decode one batch reading each distinct cache object once.

    Memory: the batch buffer (the model's cache) holds only the rows' own tokens, per layer
    (batch, kv_heads, q_len + max_new_tokens, head_dim); it does not grow with the caches' length.
    The compressed caches are read in place, one copy per distinct cache object however many rows
    read it (10 questions share each (rho, condition) cache in the runner), instead of one copy
    per row padded to the batch's longest cache (:func:`decode_batch_copy`)."""
    if getattr(model.config, "_attn_implementation", None) != attention.NAME:
        # another attention function would ignore the shared caches and answer without them
        raise ValueError(f"decoding needs the model loaded with attn_implementation='{attention.NAME}' "
                         "(benchmark.protocol.attention.register())")
    # rows on one cache next to each other, so that each cache's rows are one slice of the batch
    groups: dict[int, list[int]] = {}
    for b, r in enumerate(rows):
        groups.setdefault(id(r.kv), []).append(b)
    perm = [b for members in groups.values() for b in members]
    grouped = [rows[b] for b in perm]
    distinct = [rows[members[0]].kv for members in groups.values()]
    bounds, lo = [], 0
    for members in groups.values():
        bounds.append((lo, lo + len(members)))
        lo += len(members)

    n_layers = len(grouped[0].kv)
    q_len = max(len(r.suffix_ids) for r in grouped)
    cache = DynamicCache()
    cache.layer_class_to_replicate = None
    cache.layers = []
    shared = []
    for layer in range(n_layers):
        k0 = grouped[0].kv[layer][0]
        shape = (len(grouped), k0.shape[1], q_len + max_new_tokens, k0.shape[3])
        cache.layers.append(_PreallocatedLayer(k0.new_zeros(shape), k0.new_zeros(shape), 0))
        keep = [kv.keep[layer].to(k0.device) if getattr(kv, "keep", None) is not None else None for kv in distinct]
        shared.append(SharedPrefix(bounds, [kv[layer][0][0] for kv in distinct], [kv[layer][1][0] for kv in distinct],
                                   keep))

    attn_modules = [layer.self_attn for layer in language_model(model).layers]
    for module, sp in zip(attn_modules, shared):
        module._lorakv_shared = sp

    def shrink(keep: torch.Tensor) -> None:  # rows leave the batch: the buffers' rows and the caches' bounds
        for layer in cache.layers:
            layer.take_rows(keep)
        now = shared[0].bounds  # every layer's bounds are alike
        group_of = torch.tensor([g for g, (lo, hi) in enumerate(now) for _ in range(lo, hi)])[keep.cpu()]
        counts = torch.bincount(group_of, minlength=len(now)).tolist()
        for sp in shared:
            sp.take_groups(counts)

    try:
        texts = _decode_loop(model, tokenizer, grouped, cache, [0] * len(grouped), q_len, max_new_tokens, stop,
                             shrink if leave else None)
    finally:
        for module in attn_modules:
            module._lorakv_shared = None
    out = [""] * len(rows)
    for b, text in zip(perm, texts):
        out[b] = text
    return out


def decode_batch_copy(model, tokenizer, rows: list[Row], max_new_tokens: int, stop: tuple[str, ...],
                      leave: bool = True) -> list[str]:
    """The copying decode: every row's cache copied into its own slot of one buffer padded to the
    batch's longest cache, (batch, kv_heads, cache_len + q_len + max_new_tokens, head_dim) per layer.
    The reference for the tests and for ``perf/decode_ab.py --modes copy shared``."""
    device = model.device
    bsz = len(rows)
    n_layers = len(rows[0].kv)
    cache_len = max(r.kv[0][0].shape[2] for r in rows)
    q_len = max(len(r.suffix_ids) for r in rows)

    cache = DynamicCache()
    cache.layer_class_to_replicate = None
    cache.layers = []
    capacity = cache_len + q_len + max_new_tokens
    for layer in range(n_layers):
        k0 = rows[0].kv[layer][0]
        shape = (bsz, k0.shape[1], capacity, k0.shape[3])
        keys = k0.new_zeros(shape)
        values = k0.new_zeros(shape)
        for b, r in enumerate(rows):
            k, v = r.kv[layer]
            keys[b, :, : k.shape[2]] = k[0]
            values[b, :, : v.shape[2]] = v[0]
        cache.layers.append(_PreallocatedLayer(keys, values, cache_len))

    # Head-wise eviction (a RaggedKV row): which cached entries each KV head may read, per layer;
    # the attention function applies it (attention.with_head_keep). None when no row needs it.
    head_keep = None
    if any(getattr(r.kv, "keep", None) is not None for r in rows):
        head_keep = []
        for layer in range(n_layers):
            m = torch.ones(bsz, rows[0].kv[layer][0].shape[1], cache_len, dtype=torch.bool, device=device)
            for b, r in enumerate(rows):
                if getattr(r.kv, "keep", None) is not None:
                    m[b, :, : r.kv.keep[layer].shape[-1]] = r.kv.keep[layer]
            head_keep.append(m)
    attn_modules = [layer.self_attn for layer in language_model(model).layers]
    for module, m in zip(attn_modules, head_keep or [None] * n_layers):
        module._lorakv_keep = m

    def shrink(keep: torch.Tensor) -> None:  # rows leave the batch
        for layer in cache.layers:
            layer.take_rows(keep)
        for module in attn_modules:
            if module._lorakv_keep is not None:
                module._lorakv_keep = module._lorakv_keep[keep]

    try:
        lens = [r.kv[0][0].shape[2] for r in rows]
        return _decode_loop(model, tokenizer, rows, cache, lens, q_len, max_new_tokens, stop,
                            shrink if leave else None)
    finally:
        for module in attn_modules:
            module._lorakv_keep = None


def _decode_loop(model, tokenizer, rows, cache, cache_lens: list[int], q_len: int, max_new_tokens: int,
                 stop: tuple[str, ...], shrink: Callable[[torch.Tensor], None] | None) -> list[str]:
    """Greedy steps over ``cache``, which already holds ``cache_lens[b]`` entries of row b (right-
    padded to their maximum; all 0 when the caches are shared beside it, see decode_batch_shared).
    With ``shrink``, a row that has stopped leaves the batch before the next step: ``shrink(keep)``
    narrows what the caller holds per row (cache buffers, shared-cache bounds, head masks) to the
    batch indices ``keep``, in order; without it a stopped row is carried to the batch's end."""
    device = model.device
    bsz = len(rows)
    cache_len = max(cache_lens)
    mask = torch.zeros(bsz, cache_len + q_len, dtype=torch.long, device=device)
    input_ids = torch.full((bsz, q_len), tokenizer.pad_token_id, dtype=torch.long, device=device)
    position_ids = torch.zeros(bsz, q_len, dtype=torch.long, device=device)
    for b, (r, n_cache) in enumerate(zip(rows, cache_lens)):
        n_q = len(r.suffix_ids)
        mask[b, :n_cache] = 1
        mask[b, cache_len + q_len - n_q:] = 1
        input_ids[b, q_len - n_q:] = torch.tensor(r.suffix_ids, device=device)
        position_ids[b, q_len - n_q:] = torch.arange(r.position_offset, r.position_offset + n_q, device=device)

    stop_ids = _stop_ids(model, tokenizer)
    generated = [[] for _ in rows]
    active = list(range(bsz))  # the rows still in the batch, in batch order
    done = [False] * bsz
    total = cache_len
    for step in range(max_new_tokens):
        cache_position = torch.arange(total, total + input_ids.shape[1], device=device)
        logits = model(
            input_ids=input_ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
            cache_position=cache_position, use_cache=True, logits_to_keep=1,
        ).logits[:, -1]
        total += input_ids.shape[1]
        next_ids = logits.argmax(dim=-1)
        keep = []
        for j, b in enumerate(active):
            if done[b]:
                continue
            tok = int(next_ids[j])
            if tok in stop_ids:
                done[b] = True
                continue
            generated[b].append(tok)
            if stop and any(s in tokenizer.decode(generated[b], skip_special_tokens=True).lstrip() for s in stop):
                done[b] = True
                continue
            keep.append(j)
        if not keep or step == max_new_tokens - 1:
            break
        if shrink is not None and len(keep) < len(active):
            idx = torch.tensor(keep, device=device)
            next_ids, position_ids, mask = next_ids[idx], position_ids[idx], mask[idx]
            shrink(idx)
            active = [active[j] for j in keep]
        input_ids = next_ids[:, None]
        position_ids = position_ids[:, -1:] + 1
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)

    texts = []
    for ids in generated:
        text = tokenizer.decode(ids, skip_special_tokens=True).lstrip()
        for s in stop:
            text = text.split(s)[0]
        texts.append(text)
    return texts
