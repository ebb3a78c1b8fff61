"""Presses of our own, for the paper tier. A submission names them like a kvpress class
(``press: DocumentCompactorPress``); :func:`benchmark.protocol.compression.build_compressor` looks here
after kvpress.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch
from kvpress import CompactorPress

log = logging.getLogger(__name__)


@dataclass
class DocumentCompactorPress(CompactorPress):
    """Compactor as the paper runs it on the document (arXiv 2606.05698; Compactor:
    https://arxiv.org/abs/2507.08143): ``blending * leverage + non-causal chunked attention``
    with ``chunk_size`` 256 and ``blending = rho`` (``blending=None``).

    The framework hands the press the document alone, and the paper's context-only mode
    protects nothing inside the document, so the sinks default to 0 (kvpress's CompactorPress
    would keep 8 + 4 document entries outside the budget). When the leverage step fails (its
    Cholesky solve, or non-finite scores) the layer falls back to the attention scores alone,
    as the paper's code does. The leverage sketch is seeded per layer (``leverage_seed +
    layer_idx``, the paper's 1729) in a forked RNG, so the kept set does not depend on what ran
    before, and the global RNG is left as it was."""

    sink_size_start: int = 0
    sink_size_end: int = 0
    chunk_size: int = 256
    leverage_seed: int | None = 1729
    #: blending = rho: each rho needs its own scores (compression.score_depends_on_rho reads this)
    score_depends_on_rho: ClassVar[bool] = True
    leverage_fallbacks: ClassVar[int] = 0

    def _leverage(self, module, hs, keys, values, attentions, kwargs) -> torch.Tensor | None:
        devices = [keys.device.index or 0] if keys.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices, enabled=self.leverage_seed is not None):
                if self.leverage_seed is not None:
                    torch.manual_seed(self.leverage_seed + int(getattr(module, "layer_idx", 0)))
                scores = self._leverage_press.score(module=module, hidden_states=hs, keys=keys, values=values,
                                                    attentions=attentions, kwargs=kwargs)
            if not torch.isfinite(scores).all():
                raise RuntimeError("leverage scores contain non-finite values")
            return scores
        except RuntimeError as exc:
            if "Cholesky failed" not in str(exc) and "non-finite" not in str(exc):
                raise
            type(self).leverage_fallbacks += 1
            log.warning("Compactor leverage step failed on layer %s (%s); attention scores only",
                        getattr(module, "layer_idx", "?"), exc)
            return None

    def score(self, module, hidden_states, keys, values, attentions, kwargs) -> torch.Tensor:
        n = hidden_states.shape[-2]
        assert keys.shape[-2] == n, "Compactor scores a prefill only"
        left = min(self.sink_size_start, n)
        right = min(self.sink_size_end, max(0, n - left))
        end = None if right == 0 else -right
        cos, sin = kwargs["position_embeddings"]
        sliced = {"position_embeddings": (cos[..., left:end, :], sin[..., left:end, :])}
        hs, k, v = hidden_states[:, left:end], keys[..., left:end, :], values[..., left:end, :]
        lev = self._leverage(module, hs, k, v, attentions, sliced)
        attn = self._non_causal_press.score(module=module, hidden_states=hs, keys=k, values=v,
                                            attentions=attentions, kwargs=sliced)
        if lev is None:
            scores = attn
        else:
            blending = self.blending if self.blending is not None else self.compression_ratio
            scores = (0.35 if blending is None else blending) * lev + attn
        return torch.nn.functional.pad(scores, (left, right), value=scores.detach().max())
