"""Fixtures of the sandbox attack tests: a one-document dataset whose first answer is the
secret, and loaders of the tiny model and the mini spec over it."""

from __future__ import annotations

import dataclasses
import json

import pytest
from attack_kit import SECRET

from benchmark.protocol.evaluator import Loaders
from benchmark.protocol.tiny import tiny_model


@pytest.fixture()
def data(tmp_path, document):
    """A one-document dataset whose first question's gold answer is SECRET."""
    path = tmp_path / "data" / "docs.jsonl"
    path.parent.mkdir()
    row = {"doc_id": "d0", "text": document.text,
           "questions": [{"id": "q-secret", "question": "What is the vault code?", "answers": [SECRET]},
                         {"id": "q-town", "question": "Where is the bakery?", "answers": ["Tollervik"]}],
           "train_qa": [{"question": q, "answer": a} for q, a in document.train_qa]}
    path.write_text(json.dumps(row) + "\n")
    return path


@pytest.fixture()
def tiny(data):
    """Loaders of the tiny model and of the mini spec with ``data`` as its first dataset."""
    from benchmark.protocol.spec import DataFile, load_spec

    spec = load_spec("mini")
    spec = dataclasses.replace(spec, datasets=(dataclasses.replace(spec.datasets[0], test=DataFile(data, None)),))
    model, tok = tiny_model("llama")
    return Loaders(load_spec=lambda tier: spec, load_model=lambda *a: (model, tok))
