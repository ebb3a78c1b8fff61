"""Loaders of the tiny random llama and of the mini spec with a test's own data, built from
module-level functions so they pickle: the Ray executor sends them to its workers (tests/ is on
the workers' PYTHONPATH)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from benchmark.protocol.evaluator import Loaders


def tiny_spec(data: str | Path, tier: str = "mini"):
    """The ``tier`` spec with its first dataset's test split replaced by ``data``."""
    from benchmark.protocol.spec import DataFile, load_spec

    spec = load_spec(tier)
    return dataclasses.replace(spec, datasets=(dataclasses.replace(spec.datasets[0], test=DataFile(Path(data), None)),))


def tiny_llama(model_spec, device=None, dtype=None):
    """The tiny random llama (seeded: the same weights in every process), whatever model is asked for."""
    from benchmark.protocol.tiny import tiny_model

    return tiny_model("llama")


def tiny_loaders(data: str | Path) -> Loaders:
    """Loaders of the tiny llama and of the mini spec whose first dataset is the JSONL ``data``."""
    return Loaders(load_spec=functools.partial(tiny_spec, str(data)), load_model=tiny_llama)
