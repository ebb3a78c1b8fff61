"""Side effects stay in their scope: scoring leaves the model and the press as they were, and an
evaluation leaves torch's global RNG as it was. (Submission modules leaving ``sys.modules``:
``test_conformance.py::test_submission_modules_do_not_stay_in_sys_modules``.)"""

from __future__ import annotations

import pytest
import torch

from benchmark.protocol.compression import build_compressor, prefill
from benchmark.protocol.models import PromptRenderer
from benchmark.protocol.runner import DocumentRun
from benchmark.protocol.spec import load_spec
from benchmark.protocol.submission import load_submission
from benchmark.protocol.tiny import tiny_model

PRESSES = {
    "StreamingLLMPress": {"n_sink": 2},  # scored once per rho: compression_ratio set in the hook
    "AdaKVPress": {"press": {"press": "SnapKVPress", "kwargs": {"window_size": 4}}},  # head-wise: compress() per rho
    "KnormPress": {},  # scored once for every rho
}


def _attention_state(model):
    return [(name, type(m).__name__) for name, m in model.named_modules()], \
        [hasattr(layer.self_attn, "rotary_emb") for layer in model.model.layers]


@pytest.mark.parametrize("name", PRESSES)
def test_scoring_restores_the_model_and_the_press(qa_prompt, document, name):
    model, tok = tiny_model("llama")
    r = PromptRenderer(tok, qa_prompt)
    doc_ids = r.doc_ids(document.text)
    span = (len(r.prefix_ids), len(r.prefix_ids) + len(doc_ids))
    press = build_compressor(name, PRESSES[name])
    ratio = press.compression_ratio
    before = _attention_state(model)
    _, scores = prefill(model, r.prefix_ids + doc_ids, span, press, [0.0, 0.5, 0.9, 1.0])
    assert scores.by_rho  # it did score
    assert press.compression_ratio == ratio
    assert _attention_state(model) == before  # no rotary_emb left on the attention layers


def test_scoring_restores_a_rotary_emb_the_layer_had(qa_prompt, document):
    model, tok = tiny_model("llama")
    own = torch.nn.Identity()
    model.model.layers[0].self_attn.rotary_emb = own
    r = PromptRenderer(tok, qa_prompt)
    doc_ids = r.doc_ids(document.text)
    span = (len(r.prefix_ids), len(r.prefix_ids) + len(doc_ids))
    prefill(model, r.prefix_ids + doc_ids, span, build_compressor("StreamingLLMPress", {"n_sink": 2}), [0.5])
    assert model.model.layers[0].self_attn.rotary_emb is own


def _random_run(tmp_path, qa_prompt):
    folder = tmp_path / "submissions" / "rand"
    folder.mkdir(parents=True)
    (folder / "submission.yaml").write_text("name: rand\nauthors: [t]\ndescription: t\n"
                                            "compressor: {press: RandomPress}\nadapter: {recipe: none}\n")
    model, tok = tiny_model("llama")
    return DocumentRun.build(model, tok, load_spec("mini"), load_submission(folder), model_key="tiny",
                             prompt=qa_prompt, progress=False)


def test_evaluation_leaves_the_global_rng_as_it_was(tmp_path, qa_prompt, document):
    run = _random_run(tmp_path, qa_prompt)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    run.evaluate(document, [0.5], ["base"])
    assert torch.equal(torch.get_rng_state(), state)


def test_unseeded_random_press_is_reproducible_whatever_ran_before(tmp_path, qa_prompt, document):
    run = _random_run(tmp_path, qa_prompt)
    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        _, preds = run.evaluate(document, [0.5, 0.9], ["base"])
        out.append([(p["rho"], p["question_id"], p["generation"], p["kv_entries"]) for p in preds])
    assert out[0] == out[1]


@pytest.mark.parametrize("include", [False, True])
def test_lm_eval_cli_leaves_argv_and_task_manager_as_they_were(include, monkeypatch, tmp_path):
    """``lorakv-lm-eval`` hands lm-eval's CLI its arguments (sys.argv) and, with the user's own
    --include_path, a TaskManager that also scans our tasks; both only for that call."""
    import sys

    import lm_eval.__main__
    import lm_eval.tasks

    from benchmark.integrations.lm_eval_model import cli_main
    from benchmark.integrations.lm_eval_tasks import TASK_DIR

    seen = {}

    def probe():  # stands in for lm-eval's CLI run: records what it would read
        seen["argv"] = list(sys.argv)
        seen["manager"] = lm_eval.tasks.TaskManager

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", probe)
    argv, manager = list(sys.argv), lm_eval.tasks.TaskManager
    args = (["--model", "hf", "--tasks", "lorakv_mini_narrative"]
            + (["--include_path", str(tmp_path)] if include else []))
    assert cli_main(args) == 0
    assert seen["argv"][1:] == (args if include else [*args, "--include_path", str(TASK_DIR)])
    assert (seen["manager"] is not manager) == include and issubclass(seen["manager"], manager)
    assert sys.argv == argv and lm_eval.tasks.TaskManager is manager
