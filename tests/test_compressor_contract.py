"""The compressor contract (``compression.Compressor``): whether a press's scores depend on rho is
declared (``press_catalog.CATALOG``), never read off its source, and the declaration is what the
press does."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import pytest
import torch

from benchmark.protocol.compression import build_compressor, prefill, score_depends_on_rho
from benchmark.protocol.models import PromptRenderer
from benchmark.protocol.press_catalog import CATALOG, RUNS
from benchmark.protocol.tiny import tiny_model

#: constructor arguments that make a press deterministic or small enough for the tiny model
KWARGS = {"RandomPress": {"seed": 0}, "SnapKVPress": {"window_size": 4},
          "ExpectedAttentionPress": {"n_future_positions": 8, "n_sink": 2},
          "CriticalKVPress": {"press": {"press": "SnapKVPress", "kwargs": {"window_size": 4}}}}
SCORERS = sorted(n for n, s in CATALOG.items() if s.status == RUNS) + ["CriticalKVPress"]


def _scores_at(name, ratio, model, ids, span):
    press = build_compressor(name, KWARGS.get(name))
    press.compression_ratio = ratio
    press.score_depends_on_rho = False  # scored once, at the ratio set here
    torch.manual_seed(0)  # as the runner does: presses drawing from the global RNG (LeverageScorePress) repeat
    _, scores = prefill(model, ids, span, press, [0.5])
    return scores.for_rho(0.5)


@pytest.mark.parametrize("name", SCORERS)
def test_declared_rho_dependence_is_what_the_press_does(name, qa_prompt, document):
    """The catalog's ``rho_dependent`` is a declaration; this is its check: a press declared so scores
    differently at another compression_ratio, any other scores the same."""
    model, tok = tiny_model("llama")
    r = PromptRenderer(tok, qa_prompt)
    doc_ids = r.doc_ids(document.text)
    ids, span = r.prefix_ids + doc_ids, (len(r.prefix_ids), len(r.prefix_ids) + len(doc_ids))
    low, high = (_scores_at(name, ratio, model, ids, span) for ratio in (0.25, 0.75))
    differs = any(not torch.equal(a, b) for a, b in zip(low, high))
    assert differs == CATALOG[name].rho_dependent
    assert score_depends_on_rho(build_compressor(name, KWARGS.get(name))) == CATALOG[name].rho_dependent


@dataclass
class OwnPress:
    """A submission's own press (not kvpress's): its score reads compression_ratio."""

    compression_ratio: float = 0.0

    def score(self, module, hidden_states, keys, values, attentions, kwargs):
        return keys.norm(dim=-1) * (1 + self.compression_ratio)


@dataclass
class OwnOnceScoredPress(OwnPress):
    score_depends_on_rho = False  # declared: scored once for all rhos


def test_rho_dependence_is_declared_not_read_from_source(monkeypatch):
    def no_source(*a, **k):
        raise AssertionError("score_depends_on_rho read a press's source")

    monkeypatch.setattr(inspect, "getsource", no_source)
    assert score_depends_on_rho(OwnPress())  # undeclared: scored per rho (always right)
    assert not score_depends_on_rho(OwnOnceScoredPress())
    declared = OwnPress()
    declared.score_depends_on_rho = False  # as Submission.make_compressor sets compressor.score_depends_on_rho
    assert not score_depends_on_rho(declared)
    assert score_depends_on_rho(build_compressor("StreamingLLMPress"))
    assert not score_depends_on_rho(build_compressor("KnormPress"))
    assert score_depends_on_rho(build_compressor("DocumentCompactorPress"))  # ours declares it
