"""Adapters: trained once then loaded; on/off switching is exact; the trainer never sees eval questions."""

import pytest
import torch

from benchmark.protocol import adapters as A
from benchmark.protocol.adapters import (
    AdapterStore,
    LoraSettings,
    Recipe,
    TrainSettings,
    adapter_key,
    adapter_state,
    build_examples,
)
from benchmark.protocol.models import PromptRenderer
from benchmark.protocol.tiny import tiny_model

RECIPE = Recipe("qa", LoraSettings(r=4, alpha=8, use_dora=True), TrainSettings(lr=5e-2, epochs=2, batch_size=2))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


def test_adapter_trained_once_then_loaded(tmp_path, qa_prompt, document, monkeypatch):
    model, tok = tiny_model("llama")
    r = PromptRenderer(tok, qa_prompt)
    view = document.training_view()
    store = AdapterStore(tmp_path / "adapters")
    key = adapter_key("tiny", view, RECIPE, "test-1.0")
    ids = r.full_ids(document.text, "Where?")
    before = _logits(model, ids)

    info = store.attach(model, "doc", key, RECIPE, lambda: build_examples(view, RECIPE, r), tok.pad_token_id,
                        progress=False)
    assert not info["cached"] and info["steps"] == 4 and info["final_loss"] < info["first_loss"]
    trained = _logits(model, ids)
    with adapter_state(model, False):
        assert torch.equal(_logits(model, ids), before)  # disabled adapter = exactly the base model
    assert not torch.allclose(trained, before)
    model.delete_adapter("doc")

    calls = []
    monkeypatch.setattr(A, "train_adapter", lambda *a, **k: calls.append(1))
    info = store.attach(model, "doc", key, RECIPE, lambda: build_examples(view, RECIPE, r), tok.pad_token_id,
                        progress=False)
    assert info["cached"] and not calls
    assert torch.allclose(_logits(model, ids), trained, atol=1e-6)


def test_examples_are_answer_only_and_use_no_document(qa_prompt, document):
    _, tok = tiny_model("llama")
    r = PromptRenderer(tok, qa_prompt)
    ex = build_examples(document.training_view(), RECIPE, r)
    assert len(ex) == len(document.train_qa)
    doc_ids = r.doc_ids(document.text)
    for e, (q, a) in zip(ex, document.train_qa):
        target = [t for t, lab in zip(e.input_ids, e.labels) if lab != -100]
        assert tok.decode(target, skip_special_tokens=True).strip() == a
        assert e.input_ids[: len(r.no_doc_ids(q))] == r.no_doc_ids(q)
        assert not any(e.input_ids[i:i + 8] == doc_ids[:8] for i in range(len(e.input_ids)))
    ntp = build_examples(document.training_view(),
                         Recipe("ntp", train=TrainSettings(objective="ntp", chunk_tokens=16)), r)
    assert sum(len(e.input_ids) for e in ntp) == len(doc_ids)


def test_training_view_hides_evaluation_questions(document):
    view = document.training_view()
    assert not hasattr(view, "questions")
    assert all(q.question not in repr(view) for q in document.questions)


def test_key_changes_with_recipe_and_document(document):
    view = document.training_view()
    other = Recipe("qa", LoraSettings(r=8), RECIPE.train)
    assert adapter_key("m", view, RECIPE, "v") != adapter_key("m", view, other, "v")
    assert adapter_key("m", view, RECIPE, "v") != adapter_key("m2", view, RECIPE, "v")
    assert adapter_key("m", view, RECIPE, "v") == adapter_key("m", document.training_view(), RECIPE, "v")


def test_synthesized_qa_source_is_wired_to_the_synthesis_recipe(qa_prompt, document, monkeypatch):
    """qa_source=synthesize trains on pairs the synthesis stage makes from the document text with
    the base model (the synthesis itself is tested end to end in test_synthesis.py)."""
    import benchmark.protocol.synthesis as S

    model, tok = tiny_model("llama")
    r = PromptRenderer(tok, qa_prompt)
    seen = {}

    def fake_cached(m, t, text, *, cache_dir, generator_id, **kw):
        seen.update(model=m, text=text, generator=generator_id)
        return [{"question": "Which town?", "answer": "Tollervik"}]

    monkeypatch.setattr(S, "cached_synthesize", fake_cached)
    recipe = Recipe("qa", train=TrainSettings(qa_source="synthesize"))
    ex = build_examples(document.training_view(), recipe, r, model, "tiny@1")
    assert seen == {"model": model, "text": document.text, "generator": "tiny@1"}
    assert len(ex) == 1
    assert (recipe.hash() != RECIPE.hash()
            and Recipe("qa").hash() == Recipe("qa", train=TrainSettings(qa_source="train_qa")).hash())


@pytest.mark.parametrize("arch", ["llama", "qwen3", "qwen2"])
@pytest.mark.parametrize("objective", ["qa", "ctx_qa"])
def test_shared_prefix_batch_has_the_plain_batchs_loss_and_gradients(arch, objective, qa_prompt, document):
    model, tok = tiny_model(arch)
    r = PromptRenderer(tok, qa_prompt)
    recipe = Recipe("qa", RECIPE.lora, TrainSettings(objective=objective))
    batch = build_examples(document.training_view(), recipe, r)
    k = A.shared_prefix_len(batch)
    first_label = min(e.labels.index(next(lab for lab in e.labels if lab != -100)) for e in batch)
    assert 2 <= k < first_label  # the chat prefix (and, for ctx_qa, the document) is shared; no loss reads it
    torch.manual_seed(0)
    model.add_adapter(recipe.lora.peft_config(), adapter_name="a")
    for name, p in model.named_parameters():
        p.requires_grad_(".a." in name)
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # a non-zero adapter, so every LoRA weight has a gradient
    model.train()
    results = []
    for share in (False, True):
        loss, ran = A.batch_loss(model, batch, tok.pad_token_id, share_prefix=share)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        model.zero_grad(set_to_none=True)
        results.append((loss.item(), ran, grads))
    (plain_loss, plain_ran, plain), (shared_loss, shared_ran, shared) = results
    assert plain_ran == sum(len(e.input_ids) for e in batch)
    assert shared_ran == plain_ran - (len(batch) - 1) * k  # no padding, the prefix once
    assert shared_loss == pytest.approx(plain_loss, rel=1e-5)
    assert plain.keys() == shared.keys() and len(plain) > 0
    for n in plain:
        assert plain[n].abs().max() > 0, n
        torch.testing.assert_close(shared[n], plain[n], rtol=1e-4, atol=1e-6, msg=n)


def test_ntp_chunks_share_nothing(qa_prompt, document):
    _, tok = tiny_model("llama")
    r = PromptRenderer(tok, qa_prompt)
    ntp = build_examples(document.training_view(),
                         Recipe("ntp", train=TrainSettings(objective="ntp", chunk_tokens=16)), r)
    assert A.shared_prefix_len(ntp[:4]) == 0


@pytest.mark.parametrize("first,final,diverged", [(4.0, 0.5, False), (4.0, 4.0, True), (4.0, 9.4, True),
                                                   (4.0, float("nan"), True), (float("inf"), 1.0, True),
                                                   (None, None, False)])
def test_training_diverged(first, final, diverged):
    from benchmark.protocol.adapters import training_diverged

    assert training_diverged(first, final) is diverged


def _trained_in_store(tmp_path, qa_prompt, document, recipe):
    """A tiny model with ``recipe`` trained and attached through a fresh AdapterStore; also an
    untouched copy of the base model, the store, the adapter's key and a prompt's ids."""
    import copy

    model, tok = tiny_model("llama")
    base = copy.deepcopy(model)
    r = PromptRenderer(tok, qa_prompt)
    view = document.training_view()
    store = AdapterStore(tmp_path / "adapters")
    key = adapter_key("tiny", view, recipe, "test-1.0")
    store.attach(model, "doc", key, recipe, lambda: build_examples(view, recipe, r), tok.pad_token_id, progress=False)
    return model, base, store, key, r.full_ids(document.text, "Where?")


@pytest.mark.parametrize("eval_scale", [1.0, 0.5])
def test_cached_adapter_opens_with_peft_from_pretrained(tmp_path, qa_prompt, document, eval_scale):
    """A cached entry is a peft save_pretrained folder: PeftModel.from_pretrained on the same base
    gives the logits the benchmark evaluated (eval_scale included)."""
    import json

    from peft import PeftModel

    recipe = Recipe("qa", LoraSettings(r=4, alpha=8, use_dora=True, eval_scale=eval_scale),
                    TrainSettings(lr=5e-2, epochs=1, batch_size=2))
    model, base, store, key, ids = _trained_in_store(tmp_path, qa_prompt, document, recipe)
    evaluated = _logits(model, ids)

    folder = store.path(key)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert not torch.allclose(_logits(base, ids), evaluated, atol=1e-3)  # the adapter changes the output
    peft_model = PeftModel.from_pretrained(base, str(folder)).eval()
    assert torch.allclose(_logits(peft_model, ids), evaluated, atol=1e-5)


def test_entry_from_before_the_peft_format_is_loaded_and_rewritten(tmp_path, qa_prompt, document):
    """An old entry (weights without a config, keys without the peft prefix) still loads, and is
    rewritten in peft's format."""
    from peft import PeftModel
    from safetensors.torch import load_file, save_file

    model, base, store, key, ids = _trained_in_store(tmp_path, qa_prompt, document, RECIPE)
    tok_pad = model.config.pad_token_id
    trained = _logits(model, ids)
    model.delete_adapter("doc")
    folder = store.path(key)
    old = {k.removeprefix(AdapterStore.PREFIX): v for k, v in load_file(str(folder / AdapterStore.WEIGHTS)).items()}
    save_file(old, str(folder / AdapterStore.WEIGHTS))
    (folder / AdapterStore.CONFIG).unlink()

    info = store.attach(model, "doc", key, RECIPE, None, tok_pad, progress=False)  # None: must not train
    assert info["cached"] and torch.allclose(_logits(model, ids), trained, atol=1e-6)
    assert (folder / AdapterStore.CONFIG).exists()
    assert torch.allclose(_logits(PeftModel.from_pretrained(base, str(folder)).eval(), ids), trained, atol=1e-5)


@pytest.mark.parametrize("training", [True, False])
def test_direct_dora_update_equals_peft_and_is_restored(training):
    """``direct_dora_lora_weight`` gives the DoRA layers the same B @ A as peft's identity-matrix
    way (so the same outputs and gradients), and puts peft's method back afterwards."""
    from peft.helpers import DoraCaching
    from peft.tuners.lora import dora

    model, _ = tiny_model("llama")
    model.add_adapter(LoraSettings(r=4, alpha=8, use_dora=True).peft_config(), adapter_name="d")
    model.set_adapter("d")
    torch.manual_seed(1)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_()  # B = 0 at init would make both ways trivially equal
    model.train(training)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))

    def run():
        for m in model.modules():  # nothing cached from the other way
            if isinstance(m, dora.DoraLinearLayer):
                m._cache_clear()
        with DoraCaching(enabled=not training):
            model.zero_grad(set_to_none=True)
            out = model(input_ids=ids).logits
            out.square().mean().backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out.detach(), grads

    peft_method = dora.DoraLinearLayer.get_lora_weight
    ref_out, ref_grads = run()
    with A.direct_dora_lora_weight():
        assert dora.DoraLinearLayer.get_lora_weight is not peft_method
        out, grads = run()
    assert dora.DoraLinearLayer.get_lora_weight is peft_method
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and grads
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-6)


#: The paper's DoRA recipe at its learning rate, small enough to run in a second.
PAPER_DORA = Recipe("qa", LoraSettings(r=4, alpha=8, use_dora=True, dropout=0.1, init="shared_svd_a"),
                    TrainSettings(lr=1e-4, max_steps=20, batch_size=2, weight_decay=1e-3, max_grad_norm=1.0,
                                  early_stop_accuracy=1.0))


def _watch_training(monkeypatch):
    """Per training step (``batch_loss`` call): the autocast state, the dtypes of the trainable and
    of the base weights, and the DoRA magnitudes as they stand before the step."""
    seen = []
    real = A.batch_loss

    def watched(model, batch, pad_id, share_prefix=True):
        params = dict(model.named_parameters())
        seen.append({
            "autocast": torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"),
            "trainable": {p.dtype for p in params.values() if p.requires_grad},
            "base": {p.dtype for n, p in params.items() if "lora" not in n},
            "magnitude": {n: p.detach().float().clone() for n, p in params.items() if "lora_magnitude" in n},
        })
        return real(model, batch, pad_id, share_prefix)

    monkeypatch.setattr(A, "batch_loss", watched)
    return seen


def test_bf16_base_trains_float32_adapter_under_autocast(qa_prompt, document, monkeypatch):
    """On a bf16 base the adapter trains in float32 under bf16 autocast (the paper's mixed precision):
    at lr 1e-4 the DoRA magnitude moves, where bf16 weights stepped by AdamW stay exactly frozen (each
    update is below half a bf16 step of the magnitude). After training the adapter is bf16 again."""
    model, tok = tiny_model("qwen3")
    model.to(torch.bfloat16)
    seen = _watch_training(monkeypatch)
    ex = build_examples(document.training_view(), PAPER_DORA, PromptRenderer(tok, qa_prompt))
    info = A.train_adapter(model, "doc", ex, PAPER_DORA, tok.pad_token_id, progress=False)
    assert info["steps"] == 20 == len(seen)
    for step in seen:
        assert step["autocast"] == torch.bfloat16
        assert step["trainable"] == {torch.float32} and step["base"] == {torch.bfloat16}
    start = seen[0]["magnitude"]
    final = {n: p for n, p in model.named_parameters() if "lora_magnitude" in n}
    assert final.keys() == start.keys() and len(final) == 6
    assert {p.dtype for n, p in model.named_parameters() if ".doc." in n} == {torch.bfloat16}  # evaluated as bf16
    moved = torch.cat([(final[n].float() != start[n]).flatten() for n in start])
    assert moved.float().mean() > 0.5  # in bf16, a changed value has moved by at least one bf16 step


def test_float32_training_takes_no_mixed_precision_step(qa_prompt, document, monkeypatch):
    """A float32 base (the mini tier's committed adapters) trains exactly as before: no autocast,
    no cast of the adapter either way."""
    import peft.functional

    def refuse(*a, **k):
        raise AssertionError("a float32 base must not cast its adapter")

    monkeypatch.setattr(peft.functional, "cast_adapter_dtype", refuse)
    monkeypatch.setattr(A, "cast_adapter", refuse)
    model, tok = tiny_model("qwen3")
    seen = _watch_training(monkeypatch)
    ex = build_examples(document.training_view(), PAPER_DORA, PromptRenderer(tok, qa_prompt))
    A.train_adapter(model, "doc", ex, PAPER_DORA, tok.pad_token_id, progress=False)
    assert seen and all(s["autocast"] is False and s["trainable"] == {torch.float32} for s in seen)


def test_bf16_adapter_is_cached_and_decodes_as_evaluated(tmp_path, qa_prompt, document):
    """The adapter a bf16 run evaluates is the one it caches: bf16 weights, a reload gives the same
    logits bit for bit, and greedy decoding runs on CPU without dtype errors."""
    from safetensors.torch import load_file

    model, tok = tiny_model("qwen3")
    model.to(torch.bfloat16)
    r = PromptRenderer(tok, qa_prompt)
    view = document.training_view()
    store = AdapterStore(tmp_path / "adapters")
    key = adapter_key("tiny", view, RECIPE, "test-1.0")
    ids = r.full_ids(document.text, "Where?")
    store.attach(model, "doc", key, RECIPE, lambda: build_examples(view, RECIPE, r), tok.pad_token_id, progress=False)
    trained = _logits(model, ids)
    assert trained.dtype == torch.bfloat16
    assert {v.dtype for v in load_file(str(store.path(key) / AdapterStore.WEIGHTS)).values()} == {torch.bfloat16}
    out = model.generate(torch.tensor([ids]), max_new_tokens=4, min_new_tokens=4, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    assert out.shape[1] == len(ids) + 4
    model.delete_adapter("doc")
    info = store.attach(model, "doc", key, RECIPE, None, tok.pad_token_id, progress=False)
    assert info["cached"] and torch.equal(_logits(model, ids), trained)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_loaded_adapter_evaluates_without_dropout(tmp_path, qa_prompt, document, dtype):
    """peft builds a new adapter's modules in training mode, LoRA dropout live. The paper tier's
    recipes set dropout 0.1, so an adapter loaded from the cache (a second run, verify) or in the
    sandbox (attach_saved) must leave the model in evaluation mode and give the trained adapter's
    logits exactly, on every call."""
    from benchmark.protocol.adapters import attach_saved, in_training_mode

    recipe = Recipe("qa", LoraSettings(r=4, alpha=8, dropout=0.5, use_dora=True), RECIPE.train)
    trained_model, tok = tiny_model("qwen2")
    trained_model.to(dtype)
    r = PromptRenderer(tok, qa_prompt)
    view = document.training_view()
    store = AdapterStore(tmp_path / "adapters")
    key = adapter_key("tiny", view, recipe, "test-1.0")
    ids = r.full_ids(document.text, "Where?")
    store.attach(trained_model, "doc", key, recipe, lambda: build_examples(view, recipe, r), tok.pad_token_id,
                 progress=False)
    assert in_training_mode(trained_model) == []
    trained = _logits(trained_model, ids)
    for attach in ("cache", "sandbox"):
        model, _ = tiny_model("qwen2")
        model.to(dtype)
        if attach == "cache":
            assert store.attach(model, "doc", key, recipe, None, tok.pad_token_id, progress=False)["cached"]
        else:
            attach_saved(model, "doc", store.path(key), recipe)
        assert in_training_mode(model) == [], attach
        assert torch.equal(_logits(model, ids), trained) and torch.equal(_logits(model, ids), trained), attach


def test_training_leaves_the_callers_rng_alone(qa_prompt, document):
    """Training seeds torch's RNG for itself only: the caller's stream continues where it was."""
    model, tok = tiny_model("llama")
    ex = build_examples(document.training_view(), RECIPE, PromptRenderer(tok, qa_prompt))
    torch.manual_seed(1234)
    torch.rand(3)
    state = torch.random.get_rng_state()
    A.train_adapter(model, "doc", ex, RECIPE, tok.pad_token_id, progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
