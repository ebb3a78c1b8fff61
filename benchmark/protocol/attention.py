"""``lorakv_sdpa``: PyTorch SDPA with grouped-query attention done by the kernel.

transformers' own ``sdpa`` path expands the KV heads of a GQA model (``repeat_kv``) whenever an
attention mask is passed, which our padded batched decoding always does: for SmolLM2 that copies
every layer's whole cache three times per generated token. ``enable_gqa=True`` lets the kernel
share the KV heads instead; the output is bitwise the same, the decode step ~10x cheaper on CPU.

In a decode over shared caches (``generation.greedy_decode``), the model's cache holds only each
row's own tokens, and the compressed caches the rows read are handed over beside it, one copy per
distinct cache (``module._lorakv_shared``, a :class:`SharedPrefix`); :func:`shared_prefix_attention`
attends over both at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "lorakv_sdpa"


def allowed_keys(attention_mask, q_len: int, kv_len: int, device) -> torch.Tensor:
    """transformers' attention mask as a bool "may attend" mask, (batch or 1, 1, q_len, kv_len). None
    is causal, as SDPA's is_causal would apply it (queries are the last q_len positions); an additive
    mask is 0 where allowed."""
    if attention_mask is None:
        rows = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
        return (torch.arange(kv_len, device=device)[None, :] <= rows)[None, None]
    if attention_mask.dtype == torch.bool:
        return attention_mask
    return attention_mask == 0  # additive: 0 where allowed


def with_head_keep(attention_mask, keep: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """The batch's mask narrowed per KV head: ``keep`` (batch, kv_heads, n) marks which of the first
    n cached entries each head may attend to (head-wise eviction pads shorter heads; see
    ``compression.RaggedKV``). Entries past n (the question and answer) stay visible."""
    bsz, n_q_heads, q_len, _ = query.shape
    kv_len = key.shape[2]
    full = torch.ones(bsz, keep.shape[1], kv_len, dtype=torch.bool, device=query.device)
    full[:, :, : keep.shape[2]] = keep.to(query.device)
    full = full.repeat_interleave(n_q_heads // keep.shape[1], dim=1)[:, :, None, :]  # (bsz, q_heads, 1, kv)
    return allowed_keys(attention_mask, q_len, kv_len, query.device) & full


@dataclass
class SharedPrefix:
    """One layer's compressed caches for a decode batch whose rows are grouped by the cache they
    read: rows ``bounds[i][0]:bounds[i][1]`` read ``keys[i]``/``values[i]`` (kv_heads, n_i, head_dim),
    the cache's own tensors (no copy, no padding), restricted per KV head by ``keep[i]``
    (kv_heads, n_i) for a head-wise (RaggedKV) cache, else None."""

    bounds: list[tuple[int, int]]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    keep: list[torch.Tensor | None]

    def take_groups(self, counts: list[int]) -> None:
        """Rows have left the batch: ``counts[i]`` of cache i's rows remain (still grouped, in
        order); a cache with none left is dropped."""
        kept = [i for i, c in enumerate(counts) if c]
        ends = [sum(counts[j] for j in kept[:k + 1]) for k in range(len(kept))]
        self.bounds = [(end - counts[i], end) for i, end in zip(kept, ends)]
        self.keys, self.values = [self.keys[i] for i in kept], [self.values[i] for i in kept]
        self.keep = [self.keep[i] for i in kept]


def shared_prefix(module) -> SharedPrefix | None:
    """The compressed caches a decode over shared caches has handed this attention module for the
    current batch (``generation.decode_batch_shared``); None outside such a decode."""
    return getattr(module, "_lorakv_shared", None)


def shared_prefix_attention(query, key, value, attention_mask, shared: SharedPrefix, scaling: float) -> torch.Tensor:
    """Exact attention of each row over [its shared cache's entries | its own tokens]: both score
    blocks are concatenated before one softmax. ``key``/``value`` (batch, kv_heads, own_len, head_dim)
    are the rows' own tokens (question suffix and answer so far), ``attention_mask`` transformers'
    mask over them (causal, question left-padding). GQA without expanding K/V: the query heads of
    one KV head are adjacent (as ``repeat_kv`` pairs them), so a group's queries fold into the
    matmul's row dimension, together with every row that reads the same cache:
    (kv_heads, rows*group*q_len, d) @ (kv_heads, d, n) reads each shared cache once per layer.
    Scores are laid out (kv_heads, rows, group*q_len, entries) so that both blocks are views of one
    tensor. The softmax is in float32; in bfloat16 the scores are rounded to bfloat16 first, which
    SDPA's kernel does not do (the spec's dtype is float32).
    Returns (batch, q_len, heads, head_dim), as SDPA's path does."""
    bsz, n_heads, q_len, dim = query.shape
    kv_heads, own_len = key.shape[1], key.shape[2]
    group = n_heads // kv_heads
    gt = group * q_len  # one KV head's query rows per batch row
    allowed = allowed_keys(attention_mask, q_len, own_len, query.device).transpose(0, 1)  # (1, batch or 1, ...)
    out = query.new_empty(kv_heads, bsz, gt, dim)
    for (lo, hi), k_s, v_s, keep in zip(shared.bounds, shared.keys, shared.values, shared.keep):
        r, n = hi - lo, k_s.shape[1]
        q = (query[lo:hi] * scaling).reshape(r, kv_heads, gt, dim).transpose(0, 1)  # (kv_heads, r, gt, d)
        s_shared = (q.reshape(kv_heads, r * gt, dim) @ k_s.transpose(1, 2)).view(kv_heads, r, gt, n)
        s_own = q @ key[lo:hi].transpose(0, 1).transpose(2, 3)  # (kv_heads, r, gt, own_len): small
        scores = torch.cat([s_shared, s_own], dim=-1).float()
        by_step = scores.view(kv_heads, r, group, q_len, n + own_len)
        if keep is not None:
            by_step[..., :n].masked_fill_(~keep[:, None, None, None, :], float("-inf"))
        own_ok = allowed[:, lo:hi] if allowed.shape[1] > 1 else allowed
        by_step[..., n:].masked_fill_(~own_ok[:, :, None], float("-inf"))
        # a query with nothing to attend to (a padding position of a row with an empty cache) gets
        # zeros, not NaN: its output becomes a key/value that every real query masks, and 0 * NaN
        # would still reach them through the matmul
        probs = torch.softmax(scores, dim=-1).nan_to_num_(0.0).to(value.dtype)
        o_shared = (probs[..., :n].reshape(kv_heads, r * gt, n) @ v_s).view(kv_heads, r, gt, dim)
        out[:, lo:hi] = o_shared + probs[..., n:] @ value[lo:hi].transpose(0, 1)
    # (kv_heads, batch, group, q_len, d) -> (batch, q_len, kv_heads * group, d)
    return out.view(kv_heads, bsz, group, q_len, dim).permute(1, 3, 0, 2, 4).reshape(bsz, q_len, n_heads, dim)


def sdpa_gqa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                       is_causal=None, **kwargs):
    shared = shared_prefix(module)
    if shared is not None:
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        return shared_prefix_attention(query, key, value, attention_mask, shared, scale), None
    keep = getattr(module, "_lorakv_keep", None)
    if keep is not None:
        attention_mask = with_head_keep(attention_mask, keep, query, key)
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = query.shape[2] > 1 and attention_mask is None and is_causal
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=is_causal,
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    AttentionInterface.register(NAME, sdpa_gqa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME
