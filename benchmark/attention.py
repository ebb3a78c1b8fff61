"""``lorakv_sdpa``: PyTorch SDPA with grouped-query attention done by the kernel.

transformers' own ``sdpa`` path expands the KV heads of a GQA model (``repeat_kv``) whenever an
attention mask is passed, which our padded batched decoding always does: for SmolLM2 that copies
every layer's whole cache three times per generated token. ``enable_gqa=True`` lets the kernel
share the KV heads instead; the output is bitwise the same, the decode step ~10x cheaper on CPU.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "lorakv_sdpa"


def sdpa_gqa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                       is_causal=None, **kwargs):
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
