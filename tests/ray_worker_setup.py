"""Runner hook for the Ray executor test (``runner_hook="ray_worker_setup:install"``).

Ray workers are separate processes, so the test's monkeypatching does not reach them; this module
is imported in each worker (tests/ is on the workers' PYTHONPATH) and patches ``benchmark.runner``
there: the tiny random model, and a spec whose first dataset is the JSONL named by ``$LORAKV_TEST_RAY_DATA``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

DATA_ENV = "LORAKV_TEST_RAY_DATA"


def tiny_spec(data: str | Path):
    """The mini spec with its first dataset's test split replaced by ``data``."""
    from benchmark.spec import DataFile, load_spec

    spec = load_spec("mini")
    return dataclasses.replace(spec, datasets=(dataclasses.replace(spec.datasets[0], test=DataFile(Path(data), None)),))


def install() -> None:
    """Make this process's ``benchmark.runner`` load the tiny llama and the tiny spec."""
    from benchmark import runner
    from benchmark.tiny import tiny_model

    model, tok = tiny_model("llama")
    spec = tiny_spec(os.environ[DATA_ENV])
    runner.load_model = lambda *a, **k: (model, tok)
    runner.load_spec = lambda tier: spec
