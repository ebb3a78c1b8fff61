"""Worker setup for tests (``worker_setup="worker_setup:install"``): the worker is a separate
process, so a test's monkeypatching does not reach it; this installs the tiny random llama there."""

from __future__ import annotations


def install() -> None:
    from benchmark import runner
    from benchmark.tiny import tiny_model

    model, tok = tiny_model("llama")
    runner.load_model = lambda *a, **k: (model, tok)
