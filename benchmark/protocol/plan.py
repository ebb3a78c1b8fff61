"""Compression plans: which document entries stay, as data the harness checks before it evicts.

A plan is, for one prefill of one document and one rho, a keep mask per layer and KV head over
the document's entries: a bool tensor ``(n_layers, kv_heads, n_doc)``. A trusted press (kvpress,
or one of :mod:`benchmark.protocol.presses`) gets its plan from its scores in the harness
(:func:`plan_from_scores`); submission code computes its plan in the sandboxed process
(:mod:`benchmark.trust.worker`) and sends it as bytes. Either way the harness checks it
(:func:`check_plan`) and builds the cache from it itself (``compression.evict_planned``), so
what a submission's code can choose is which entries stay, never how many, and never what the
harness counts or decodes.

The budget a plan must meet is :func:`benchmark.protocol.compression.n_kept`; this module is where a
rho turns into a number of kept entries for every compressor.
"""

from __future__ import annotations

import base64
import hashlib

import numpy as np
import torch

from .compression import DocumentScores, keep_top, n_kept


class PlanError(ValueError):
    """A plan that is not a plan of this document at this rho (shape, type or budget)."""


def plan_from_scores(scores: DocumentScores, n_doc: int, rho: float, budget: str) -> torch.Tensor:
    """The plan of a trusted press at a rho that keeps some but not all of the document: its
    :func:`~benchmark.protocol.compression.keep_top` masks, stacked."""
    k = n_kept(n_doc, rho, budget)
    if not 0 < k < n_doc:
        raise ValueError(f"rho={rho} keeps {k} of {n_doc} entries: the scores choose nothing (full_plan)")
    return torch.stack(keep_top(scores, rho, k))


def full_plan(n_layers: int, kv_heads: int, n_doc: int, rho: float, budget: str) -> torch.Tensor | None:
    """The plan at a rho that keeps all or none of the document (the scores choose nothing), else None."""
    k = n_kept(n_doc, rho, budget)
    if 0 < k < n_doc:
        return None
    return torch.full((n_layers, kv_heads, n_doc), k > 0, dtype=torch.bool)


def check_plan(plan, *, n_layers: int, kv_heads: int, n_doc: int, rho: float, budget: str,
               where: str = "plan") -> torch.Tensor:
    """``plan`` as a bool tensor, if it is one of this document at this rho: shape ``(n_layers,
    kv_heads, n_doc)`` and exactly :func:`n_kept` kept entries in every layer and KV head. Raises
    :class:`PlanError` naming what is wrong."""
    if not isinstance(plan, torch.Tensor) or plan.dtype != torch.bool:
        raise PlanError(f"{where}: expected a bool tensor, got {type(plan).__name__}"
                        f"{' of ' + str(plan.dtype) if isinstance(plan, torch.Tensor) else ''}")
    if tuple(plan.shape) != (n_layers, kv_heads, n_doc):
        raise PlanError(f"{where}: shape {tuple(plan.shape)}, expected (layers, kv_heads, n_doc) = "
                        f"{(n_layers, kv_heads, n_doc)}")
    k = n_kept(n_doc, rho, budget)
    counts = plan.sum(dim=-1)
    if not bool((counts == k).all()):
        bad = (counts != k).nonzero()[0].tolist()
        raise PlanError(f"{where}: rho={rho} keeps {int(counts[bad[0], bad[1]])} entries in layer {bad[0]}, KV head "
                        f"{bad[1]}; the budget is exactly {k} of {n_doc} per layer and head")
    return plan


def check_headwise_plan(plan: torch.Tensor, *, n_doc: int, rho: float, budget: str, layerwise: bool,
                        where: str = "plan") -> torch.Tensor:
    """A head-wise plan of a trusted press (AdaKV, KVzip): the budget is shared across heads (and,
    unless ``layerwise``, across layers), the total kept is the same as a uniform plan's."""
    n_layers, heads = plan.shape[:2]
    k = n_kept(n_doc, rho, budget)
    totals = plan.sum(dim=(1, 2)) if layerwise else plan.sum().reshape(1)
    want = heads * k if layerwise else n_layers * heads * k
    if not bool((totals == want).all()):
        raise PlanError(f"{where}: rho={rho} keeps {totals.tolist()} entries, the budget is {want}")
    return plan


def digest(plan: torch.Tensor) -> str:
    """sha256 of the plan's shape and its packed bits: what a result file records per (rho, condition)."""
    h = hashlib.sha256(repr(tuple(plan.shape)).encode())
    h.update(np.packbits(plan.numpy().astype(np.uint8), axis=None).tobytes())
    return h.hexdigest()


def encode(plan: torch.Tensor) -> dict:
    """A plan as JSON-safe data (shape and base64 of the packed bits), for the sandbox's protocol."""
    bits = np.packbits(plan.numpy().astype(np.uint8), axis=None)
    return {"shape": list(plan.shape), "bits": base64.b64encode(bits.tobytes()).decode("ascii")}


def decode(data, where: str = "plan") -> torch.Tensor:
    """The plan :func:`encode` wrote; anything else raises :class:`PlanError` (the data is untrusted)."""
    try:
        shape = [int(x) for x in data["shape"]]
        if len(shape) != 3 or min(shape) < 0 or int(np.prod(shape)) > 1 << 31:
            raise ValueError(f"shape {shape}")
        bits = np.frombuffer(base64.b64decode(data["bits"], validate=True), dtype=np.uint8)
        n = int(np.prod(shape))
        if bits.size != (n + 7) // 8:
            raise ValueError(f"{bits.size} bytes for {n} entries")
        flat = np.unpackbits(bits, count=n).astype(bool)
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanError(f"{where}: not an encoded plan ({type(exc).__name__}: {exc})") from None
    return torch.from_numpy(flat.reshape(shape).copy())


