"""Stage: generation. Greedy answers for many questions from shared compressed caches.

A :class:`Row` is one question asked of one compressed cache. Rows are decoded together
as one padded batch, whatever cache each one reads::

    [ cache entries, right-padded to the longest cache ][ question, left-padded ][ answer ... ]

Padding is masked out, and each row's question positions continue after the *uncompressed*
length of its prompt (``position_offset``), as kvpress does; for rho = 1 the offset is the
prefix length, i.e. the prompt without the document. Masked entries get exactly zero
attention weight, so a row's answer does not depend on what it is batched with (checked by
the tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .compression import KV, _language_model


class _PreallocatedLayer(DynamicLayer):
    """A cache layer written in place into a buffer sized for the whole decode, instead of
    DynamicLayer's ``torch.cat`` of the entire cache at every generated token."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        super().__init__()
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self._kbuf, self._vbuf, self._len = keys, values, length
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]

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


def _stop_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


@torch.no_grad()
def greedy_decode(model, tokenizer, rows: list[Row], *, max_new_tokens: int, stop: tuple[str, ...] = (),
                  batch_size: int = 16) -> list[str]:
    """Decode every row greedily; returns the generated text of each (leading whitespace dropped),
    cut at the first stop string.

    Two savings that leave every answer unchanged, since a row's answer depends only on its own
    cache, offset and suffix (masked padding gets exactly zero attention weight):
    rows that read the *same* cache object with the same offset and suffix are decoded once
    (the runner hands identical caches over as one object, e.g. rho = 0 under two scorers), and
    rows are batched longest cache first, so that short caches (high rho, the no-document prompt)
    are not padded to the full document's length."""
    unique: dict[tuple, int] = {}
    slot = [unique.setdefault((id(r.kv), r.position_offset, tuple(r.suffix_ids)), len(unique)) for r in rows]
    first = {}
    for i, s in enumerate(slot):
        first.setdefault(s, i)
    todo = [rows[first[s]] for s in range(len(unique))]
    order = sorted(range(len(todo)), key=lambda i: -todo[i].kv[0][0].shape[2])  # stable: ties keep input order
    texts: list[str] = [""] * len(todo)
    for i in range(0, len(order), batch_size):
        batch = order[i:i + batch_size]
        for j, text in zip(batch, _decode_batch(model, tokenizer, [todo[j] for j in batch], max_new_tokens, stop)):
            texts[j] = text
    return [texts[s] for s in slot]


def _decode_batch(model, tokenizer, rows: list[Row], max_new_tokens: int, stop: tuple[str, ...]) -> list[str]:
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
    attn_modules = [layer.self_attn for layer in _language_model(model).layers]
    for module, m in zip(attn_modules, head_keep or [None] * n_layers):
        module._lorakv_keep = m
    try:
        return _decode_loop(model, tokenizer, rows, cache, cache_len, q_len, max_new_tokens, stop)
    finally:
        for module in attn_modules:
            module._lorakv_keep = None


def _decode_loop(model, tokenizer, rows, cache, cache_len: int, q_len: int, max_new_tokens: int,
                 stop: tuple[str, ...]) -> list[str]:
    device = model.device
    bsz = len(rows)
    mask = torch.zeros(bsz, cache_len + q_len, dtype=torch.long, device=device)
    input_ids = torch.full((bsz, q_len), tokenizer.pad_token_id, dtype=torch.long, device=device)
    position_ids = torch.zeros(bsz, q_len, dtype=torch.long, device=device)
    for b, r in enumerate(rows):
        n_cache, n_q = r.kv[0][0].shape[2], len(r.suffix_ids)
        mask[b, :n_cache] = 1
        mask[b, cache_len + q_len - n_q:] = 1
        input_ids[b, q_len - n_q:] = torch.tensor(r.suffix_ids, device=device)
        position_ids[b, q_len - n_q:] = torch.arange(r.position_offset, r.position_offset + n_q, device=device)

    stop_ids = _stop_ids(model, tokenizer)
    generated = [[] for _ in rows]
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
        for b in range(bsz):
            if done[b]:
                continue
            tok = int(next_ids[b])
            if tok in stop_ids:
                done[b] = True
                continue
            generated[b].append(tok)
            if stop and any(s in tokenizer.decode(generated[b], skip_special_tokens=True).lstrip() for s in stop):
                done[b] = True
        if all(done):
            break
        input_ids = next_ids[:, None]
        position_ids = position_ids[:, -1:] + 1
        mask = torch.cat([mask, mask.new_ones(bsz, 1)], dim=1)

    texts = []
    for ids in generated:
        text = tokenizer.decode(ids, skip_special_tokens=True).lstrip()
        for s in stop:
            text = text.split(s)[0]
        texts.append(text)
    return texts
