"""The paper tier as the paper ran it: metric, extraction, kept count, Compactor on the document,
prompt, shared-A init, optimiser options and training formats (tiny models, no downloads)."""

import random
import re
import string

import pytest
import torch

from benchmark.protocol import metrics
from benchmark.protocol.adapters import (
    _LATER_OPTIONS,
    LoraSettings,
    Recipe,
    TrainSettings,
    adapter_key,
    build_examples,
    init_shared_svd_a,
    shared_a_matrices,
    train_adapter,
)
from benchmark.protocol.compression import build_compressor, evict, n_kept, prefill, score_depends_on_rho
from benchmark.protocol.models import PromptRenderer
from benchmark.protocol.spec import load_spec
from benchmark.protocol.tiny import tiny_model

# ---------------------------------------------------------------- metric: an independent implementation


def _paper_norm(text):
    # From the paper's definition, written out: lowercase, articles, punctuation, whitespace.
    text = text.lower().strip()
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    text = "".join(c for c in text if c not in string.punctuation)
    return text.split()


def _lcs(x, y):
    table = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i, a in enumerate(x):
        for j, b in enumerate(y):
            table[i + 1][j + 1] = table[i][j] + 1 if a == b else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def _paper_rouge(pred, golds):
    p = _paper_norm(pred)
    if not p:
        return 0.0
    best = 0.0
    for g in map(_paper_norm, golds):
        if not g:
            continue
        lcs = _lcs(p, g)
        if lcs:
            prec, rec = lcs / len(p), lcs / len(g)
            best = max(best, 2 * prec * rec / (prec + rec))
    return best


WORDS = ["the", "a", "an", "The", "cat", "Cat.", "sat", "on", "mat", "", "!", "an.", "the,", "dog's", "42", "x-ray",
         "Paris}.", "{", "}", "  ", "\n", "café"]


def _random_text(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 6)))


def test_paper_rouge_equals_an_independent_implementation_on_random_cases_with_empties():
    rng = random.Random(0)
    n_empty_pred = n_all_empty_golds = 0
    for _ in range(3000):
        pred = _random_text(rng)
        golds = [_random_text(rng) for _ in range(rng.randint(1, 3))]
        n_empty_pred += not _paper_norm(pred)
        n_all_empty_golds += all(not _paper_norm(g) for g in golds)
        assert metrics.rouge_l_paper(pred, golds) == pytest.approx(_paper_rouge(pred, golds), abs=1e-12), (pred, golds)
    assert n_empty_pred > 50 and n_all_empty_golds > 50  # the empty cases were exercised


def test_paper_rouge_empty_rules_and_normalisation_order():
    assert metrics.rouge_l_paper("", [""]) == 0.0  # the SQuAD-style metric says 1 here
    assert metrics.rouge_l("", [""]) == 1.0
    assert metrics.rouge_l_paper("Tollervik", ["", "in Tollervik"]) == pytest.approx(2 / 3)
    # articles go before punctuation: in "the-end" the paper drops "the"; punctuation first joins it to "theend"
    assert metrics.normalize_answer_paper("The-End") == "end"
    assert metrics.normalize_answer("The-End") == "theend"


@pytest.mark.parametrize("generation,expected", [
    ("Paris}.", "Paris}."),
    ("I think \\boxed{Oslo} is right", "Oslo"),
    ("first line\n\nlast line  \n", "last line"),
    ("\\boxed{a {b} c}", "a {b"),  # the paper's regex stops at the first closing brace
    ("   ", ""),
])
def test_paper_extraction_boxed_else_last_non_empty_line(generation, expected):
    assert metrics.extract_answer_paper(generation, "The answer is \\boxed{") == expected


def test_paper_spec_selects_the_paper_metric_extraction_generation_and_budget():
    paper, mini = load_spec("paper"), load_spec("mini")
    assert (paper.metric.normalization, paper.metric.extraction, paper.budget) == (
        "paper", "boxed_or_last_line", "paper_floor")
    assert paper.generation.max_new_tokens == 128 and paper.generation.stop == ()
    assert (mini.metric.normalization, mini.metric.extraction, mini.budget) == (
        "squad", "boxed_or_first_line", "kvpress")
    for m in paper.models:
        assert re.fullmatch(r"[0-9a-f]{40}", m.source["revision"]), m.id


# ---------------------------------------------------------------- kept count


@pytest.mark.parametrize("n,rho,kept", [(10, 0.9, 1), (50, 0.99, 0), (1000, 0.995, 5), (7, 0.0, 7), (7, 1.0, 0),
                                        (200, 0.8, 40)])
def test_paper_floor_budget(n, rho, kept):
    assert n_kept(n, rho, "paper_floor") == kept


def test_kvpress_budget_keeps_at_least_one():
    assert n_kept(50, 0.99) == 1 and n_kept(50, 1.0) == 0


# ---------------------------------------------------------------- Compactor on the document

DOC = "Maren Oskvik opened a bakery in Tollervik in 1987. Her brother Anders moved to Quillsby. " * 6


@pytest.mark.parametrize("budget", ["paper_floor", "kvpress"])
def test_document_compactor_keeps_exactly_the_budget_and_leaves_the_rng_alone(budget):
    model, tok = tiny_model("qwen3")
    press = build_compressor("DocumentCompactorPress", {"chunk_size": 256})
    assert score_depends_on_rho(press) and press.sink_size_start == press.sink_size_end == 0
    r = PromptRenderer(tok, load_spec("paper").prompt)
    ids = r.prefix_ids + r.doc_ids(DOC)
    span = (len(r.prefix_ids), len(ids))
    n_doc = span[1] - span[0]
    rhos = [0.5, 0.9, 0.99, 0.995]
    before = torch.random.get_rng_state()
    kv, scores = prefill(model, ids, span, press, rhos)
    assert torch.equal(before, torch.random.get_rng_state())
    assert set(scores.by_rho) == set(rhos)
    for rho in rhos:
        pkv, kept = evict(kv, scores, span, rho, budget)
        assert kept == n_kept(n_doc, rho, budget)
        for (k, v), (k0, _) in zip(pkv, kv):
            assert k.shape[2] == v.shape[2] == span[0] + kept
            assert torch.equal(k[:, :, : span[0]], k0[:, :, : span[0]])  # the prefix is never evicted
    # deterministic: the same scores again
    _, again = prefill(model, ids, span, press, rhos)
    assert all(torch.equal(a, b) for a, b in zip(scores.for_rho(0.9), again.for_rho(0.9)))


def test_document_compactor_falls_back_to_attention_when_leverage_fails(monkeypatch):
    model, tok = tiny_model("llama")
    press = build_compressor("DocumentCompactorPress", {})
    r = PromptRenderer(tok, load_spec("paper").prompt)
    ids = r.prefix_ids + r.doc_ids(DOC)
    span = (len(r.prefix_ids), len(ids))

    def broken(**kwargs):
        raise RuntimeError("Cholesky failed after 5 tries.")

    attention_only = build_compressor("DocumentCompactorPress", {"blending": 0.0})  # 0 * leverage + attention
    _, expected = prefill(model, ids, span, attention_only, [0.9])
    monkeypatch.setattr(press._leverage_press, "score", broken)
    n_before = type(press).leverage_fallbacks
    _, scores = prefill(model, ids, span, press, [0.9])
    assert all(torch.equal(a, b) for a, b in zip(scores.for_rho(0.9), expected.for_rho(0.9)))
    assert type(press).leverage_fallbacks - n_before == len(model.model.layers)


def test_document_compactor_reraises_other_errors(monkeypatch):
    model, tok = tiny_model("llama")
    press = build_compressor("DocumentCompactorPress", {})
    r = PromptRenderer(tok, load_spec("paper").prompt)
    ids = r.prefix_ids + r.doc_ids(DOC)

    def broken(**kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(press._leverage_press, "score", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        prefill(model, ids, (len(r.prefix_ids), len(ids)), press, [0.9])


# ---------------------------------------------------------------- prompt


def test_paper_prompt_whitespace_and_no_context_prompt():
    _, tok = tiny_model("llama")
    r = PromptRenderer(tok, load_spec("paper").prompt)
    text = tok.decode(r.full_ids("DOC", "Q?"))
    assert "Here is a context: \n\nDOC\nQuestion: Q? \nAnswer the question (one word or a few words) by putting " \
           "the answer inside the brackets of the \"\\boxed{}\" notation." in text
    assert text.endswith("The answer is \\boxed{")
    nc = tok.decode(r.no_doc_ids("Q?"))
    assert "Here is a context" not in nc and "<|user|>\nQuestion: Q? \nAnswer the question" in nc


def test_no_context_prompt_is_tokenized_as_one_string():
    """The paper's code encodes the no-context prompt whole: ': Who' is one token pair, never ':', ' ',
    'Who' as encoding 'Question: ' apart from the question gives (every rho = 1 prompt and every
    paper-format QA training example)."""
    _, tok = tiny_model("llama")
    r = PromptRenderer(tok, load_spec("paper").prompt)
    for q in ("Who opened the bakery?", "Where did Maren open her bakery?"):
        assert r.no_doc_ids(q) == r.encode(r.no_context.prefix + q + r.no_context.tail)
    # the split it replaces: 'Question: ' apart from 'Where...' ends in a lone 'Ġ' the whole string merges
    q = "Where did Maren open her bakery?"
    assert r.encode(r.no_context.prefix) + r.encode(q + r.no_context.tail) != r.no_doc_ids(q)


def test_chat_template_is_called_without_thinking():
    _, tok = tiny_model("llama")
    tok = tok.__class__(tokenizer_object=tok.backend_tokenizer, eos_token="<eos>", pad_token="<pad>")
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n"
                         "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
                         "{% endif %}")
    r = PromptRenderer(tok, load_spec("paper").prompt)
    assert r.template.tail.endswith("<|assistant|>\n<think>\n\n</think>\n\nThe answer is \\boxed{")


# ---------------------------------------------------------------- shared-A init


def test_shared_svd_a_leaves_base_weights_bit_identical_and_a_frozen(document, qa_prompt):
    model, tok = tiny_model("llama")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    lora = LoraSettings(r=4, alpha=8, dropout=0.1, use_dora=True, init="shared_svd_a")
    recipe = Recipe("qa", lora, TrainSettings(lr=5e-2, epochs=2, batch_size=2))
    r = PromptRenderer(tok, qa_prompt)
    train_adapter(model, "doc", build_examples(document.training_view(), recipe, r), recipe, tok.pad_token_id,
                  progress=False)
    state = model.state_dict()
    for k, v in base.items():  # every base weight, under its peft name
        peft_name = next(n for n in (k, k.replace(".weight", ".base_layer.weight"),
                                     k.replace(".bias", ".base_layer.bias")) if n in state)
        assert torch.equal(state[peft_name], v), k
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert layers
    shared = shared_a_matrices(model, "doc")
    for n, m in model.named_modules():
        if m not in layers:
            continue
        a = m.lora_A["doc"].weight
        assert torch.equal(a, shared[n].float())  # unchanged by training: frozen
        assert not a.requires_grad
        assert m.lora_B["doc"].weight.abs().sum() > 0  # B trained


def _paper_shared_a(model, svd_lowrank=torch.svd_lowrank):
    """The paper's computation written out: seed 42 once, then per target weight in module order
    (read in bf16, as float32) ``svd_lowrank(W, q=r, niter=4)``, A = V^T in float16."""
    from peft.tuners.lora import LoraLayer

    torch.manual_seed(42)
    out = {}
    for n, m in model.named_modules():
        if isinstance(m, LoraLayer):
            w = m.get_base_layer().weight.detach().bfloat16().float()
            _, _, v = svd_lowrank(w, q=m.r["doc"], niter=4)
            out[n] = v.T.to(torch.float16).float()
    return out


def test_shared_a_is_the_papers_seeded_svd_lowrank_in_fp16_computed_once(monkeypatch):
    from peft.tuners.lora import LoraLayer

    model, _ = tiny_model("llama")
    recipe = Recipe("qa", LoraSettings(r=4, alpha=8, use_dora=True, init="shared_svd_a",
                                       target_modules=("q_proj", "v_proj", "gate_proj", "down_proj")))
    model.add_adapter(recipe.lora.peft_config(), adapter_name="doc")
    calls = []
    real = torch.svd_lowrank
    monkeypatch.setattr(torch, "svd_lowrank", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    torch.manual_seed(7)
    before = torch.get_rng_state()
    n = init_shared_svd_a(model, "doc")
    assert torch.equal(torch.get_rng_state(), before)  # the seed was set in a fork
    assert n == len(calls) == 8  # 2 layers x 4 targets
    expected = _paper_shared_a(model, real)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert expected.keys() == layers.keys()
    for name, m in layers.items():
        a = m.lora_A["doc"].weight
        assert torch.equal(a, expected[name]), name
        assert a.dtype == torch.float32 and not a.requires_grad
        _, _, vh = torch.linalg.svd(m.get_base_layer().weight.float(), full_matrices=False)
        assert not torch.allclose(a, vh[:4], atol=1e-3)  # not the exact SVD
    # a second adapter on the same model reuses the matrices: no new SVD
    model.add_adapter(recipe.lora.peft_config(), adapter_name="doc2")
    assert init_shared_svd_a(model, "doc2") == 8 and len(calls) == 8
    for m in layers.values():
        assert torch.equal(m.lora_A["doc2"].weight, m.lora_A["doc"].weight)
    # another model (different weights) gets its own
    other, _ = tiny_model("llama", seed=1)
    other.add_adapter(recipe.lora.peft_config(), adapter_name="doc")
    init_shared_svd_a(other, "doc")
    assert len(calls) == 16
    first = next(m for m in other.modules() if isinstance(m, LoraLayer))
    assert not torch.equal(first.lora_A["doc"].weight, next(iter(layers.values())).lora_A["doc"].weight)


def test_peft_pissa_is_still_refused():
    with pytest.raises(ValueError, match="rewrites the base weights"):
        LoraSettings(init="pissa").peft_config()


# ---------------------------------------------------------------- optimiser options


def test_new_train_options_enter_the_adapter_key_only_when_set(document):
    view = document.training_view()
    plain = Recipe("qa", LoraSettings(), TrainSettings())
    key = adapter_key("m", view, plain, "s")
    assert not set(_LATER_OPTIONS) & set(plain.fingerprint()["train"])
    cosine = Recipe("qa", LoraSettings(), TrainSettings(schedule="cosine", warmup_ratio=0.05, max_grad_norm=1.0))
    assert adapter_key("m", view, cosine, "s") != key
    assert cosine.fingerprint()["train"]["schedule"] == "cosine"


def test_cosine_schedule_warmup_and_clipping_follow_transformers(document, qa_prompt, monkeypatch):
    model, tok = tiny_model("llama")
    s = TrainSettings(lr=1e-2, epochs=4, batch_size=1, schedule="cosine", warmup_ratio=0.25, max_grad_norm=1e-3)
    recipe = Recipe("qa", LoraSettings(r=4, alpha=8), s)
    lrs, norms = [], []
    real_step = torch.optim.AdamW.step

    def step(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in self.param_groups[0]["params"]
                                                    if p.grad is not None]).item())
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    r = PromptRenderer(tok, qa_prompt)
    info = train_adapter(model, "doc", build_examples(document.training_view(), recipe, r), recipe, tok.pad_token_id,
                         progress=False)
    assert info["steps"] == 12 and len(lrs) == 12
    assert lrs[0] == 0.0 and lrs[2] == pytest.approx(1e-2 * 2 / 3) and lrs[3] == pytest.approx(1e-2)  # 3 warmup steps
    assert lrs[-1] < lrs[4] and all(b <= a + 1e-12 for a, b in zip(lrs[3:], lrs[4:]))  # cosine decay
    assert max(norms) <= 1e-3 * (1 + 1e-4)  # clipped


def test_constant_default_keeps_the_rate(document, qa_prompt, monkeypatch):
    model, tok = tiny_model("llama")
    recipe = Recipe("qa", LoraSettings(r=4, alpha=8), TrainSettings(lr=3e-3, epochs=1, batch_size=1))
    lrs = []
    real_step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step",
                        lambda self, *a, **k: (lrs.append(self.param_groups[0]["lr"]), real_step(self, *a, **k))[1])
    r = PromptRenderer(tok, qa_prompt)
    train_adapter(model, "doc", build_examples(document.training_view(), recipe, r), recipe, tok.pad_token_id,
                  progress=False)
    assert lrs == [3e-3] * 3


def test_max_steps_and_early_stop_on_token_accuracy(document, qa_prompt):
    model, tok = tiny_model("llama")
    r = PromptRenderer(tok, qa_prompt)
    s = TrainSettings(objective="ntp", lr=5e-2, epochs=1, batch_size=1, ntp_format="document", max_steps=30)
    recipe = Recipe("ntp", LoraSettings(r=8, alpha=16), s)
    ex = build_examples(document.training_view(), recipe, r)
    assert len(ex) == 1 and ex[0].input_ids == r.doc_ids(document.text)
    assert train_adapter(model, "a", ex, recipe, tok.pad_token_id, progress=False)["steps"] == 30  # epochs ignored
    model.delete_adapter("a")
    stop = Recipe("ntp", LoraSettings(r=8, alpha=16),
                  TrainSettings(objective="ntp", lr=5e-2, epochs=1, batch_size=1, ntp_format="document", max_steps=1000,
                                early_stop_accuracy=0.3))
    info = train_adapter(model, "b", ex, stop, tok.pad_token_id, progress=False)
    assert info["stopped_early"] and info["steps"] < 1000 and info["steps"] % 100 == 0


@pytest.mark.parametrize("high_logs, stop_step",
                         [((3, 4), None), ((3, 4, 5), None), ((5, 6), 60), ((5, 7), None), ((6, 7), 70)])
def test_paper_early_stop_every_10_steps_2_in_a_row_from_step_50(document, qa_prompt, monkeypatch, high_logs,
                                                                   stop_step):
    """The paper's NTP rule: a log every 10 steps, each over the steps since the last; logs before step
    50 do not count; it stops at the second consecutive counted log with accuracy >= 0.95."""
    from benchmark.protocol import adapters as A

    model, tok = tiny_model("llama")
    steps = [0]
    real_loss = A.batch_loss

    def counted(*a, **k):
        steps[0] += 1
        return real_loss(*a, **k)

    def accuracy(model, batch, pad_id):  # step s belongs to log ceil(s / 10)
        log = -(-(steps[0] + 1) // 10)
        return (96, 100) if log in high_logs else (94, 100)

    monkeypatch.setattr(A, "batch_loss", counted)
    monkeypatch.setattr(A, "_token_accuracy", accuracy)
    recipe = Recipe("ntp", LoraSettings(r=2, alpha=4),
                    TrainSettings(objective="ntp", lr=1e-3, batch_size=1, ntp_format="document", max_steps=90,
                                  early_stop_accuracy=0.95, early_stop="paper"))
    ex = build_examples(document.training_view(), recipe, PromptRenderer(tok, qa_prompt))
    ex = [A.Example(e.input_ids[:32], e.labels[:32]) for e in ex]
    info = train_adapter(model, "doc", ex, recipe, tok.pad_token_id, progress=False)
    assert info["steps"] == (stop_step or 90) and info["stopped_early"] == (stop_step is not None)


def test_paper_early_stop_reads_accuracy_only_for_counted_logs():
    from benchmark.protocol.adapters import PaperEarlyStop

    rule = PaperEarlyStop(0.95)
    assert [s for s in range(1, 61) if rule.wants_accuracy(s)] == list(range(41, 61))  # log 50 reads steps 41-50
    assert not PaperEarlyStop(0.95).after_step(1, 100, 100)  # the first-step log, before step 50


def test_early_stop_option_leaves_existing_fingerprints_alone():
    plain = Recipe("ntp", LoraSettings(), TrainSettings(objective="ntp", early_stop_accuracy=0.95))
    assert "early_stop" not in plain.fingerprint()["train"]
    paper = Recipe("ntp", LoraSettings(), TrainSettings(objective="ntp", early_stop_accuracy=0.95, early_stop="paper"))
    assert paper.fingerprint()["train"]["early_stop"] == "paper" and paper.hash() != plain.hash()
    with pytest.raises(ValueError, match="early_stop"):
        TrainSettings(early_stop="sometimes")


def test_chunked_document_loss_equals_the_plain_loss_and_gradients(document, qa_prompt):
    from benchmark.protocol import adapters as A

    model, tok = tiny_model("llama")
    recipe = Recipe("ntp", LoraSettings(r=4, alpha=8, use_dora=True),
                    TrainSettings(objective="ntp", ntp_format="document", batch_size=1))
    model.add_adapter(recipe.lora.peft_config(), adapter_name="doc")
    with torch.no_grad():  # a non-zero update, so the adapter's gradients are all non-trivial
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    ex = build_examples(document.training_view(), recipe, PromptRenderer(tok, qa_prompt))
    ids, labels, mask = A._collate([(e.input_ids, e.labels) for e in ex], tok.pad_token_id, model.device)
    labels[0, :5] = -100  # some unlabelled positions too
    params = [p for n, p in model.named_parameters() if ".doc." in n]

    def run(fn):
        for p in params:
            p.grad = None
        loss = fn()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in params]

    ref, ref_grads = run(lambda: model(input_ids=ids, attention_mask=mask, labels=labels).loss)
    got, grads = run(lambda: A.chunked_lm_loss(model, ids, labels, mask, chunk=7))
    assert ids.shape[1] > 7 * 3
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_document_training_with_gradient_checkpointing_has_the_same_losses(document, qa_prompt, monkeypatch):
    """A CPU smoke test of the CUDA setting: training with checkpointing on gives the same losses."""
    from benchmark.protocol import adapters as A

    recipe = Recipe("ntp", LoraSettings(r=4, alpha=8, dropout=0.1, use_dora=True),
                    TrainSettings(objective="ntp", ntp_format="document", batch_size=1, lr=1e-2, max_steps=3))
    losses, seen, real_loss = {}, [], A.chunked_lm_loss

    def watched(*a, **k):
        seen.append(a[0].is_gradient_checkpointing)
        return real_loss(*a, **k)

    monkeypatch.setattr(A, "chunked_lm_loss", watched)
    for on in (False, True):
        monkeypatch.setattr(A, "_checkpoint_activations", lambda model, s: on)
        model, tok = tiny_model("llama")
        seen.clear()
        ex = build_examples(document.training_view(), recipe, PromptRenderer(tok, qa_prompt))
        info = train_adapter(model, "doc", ex, recipe, tok.pad_token_id, progress=False)
        assert seen == [on] * 3 and not model.is_gradient_checkpointing  # switched off again
        losses[on] = (info["first_loss"], info["final_loss"])
    assert losses[True] == pytest.approx(losses[False], rel=1e-6)


# ---------------------------------------------------------------- training formats


def test_paper_qa_format_uses_the_no_context_prompt_and_ends_the_turn(document):
    _, tok = tiny_model("llama")
    r = PromptRenderer(tok, load_spec("paper").prompt)
    recipe = Recipe("qa", LoraSettings(), TrainSettings(qa_format="paper"))
    ex = build_examples(document.training_view(), recipe, r)
    (q, a), e = document.train_qa[0], ex[0]
    n = len(r.no_doc_ids(q))
    assert e.input_ids[:n] == r.no_doc_ids(q) and set(e.labels[:n]) == {-100}
    assert tok.decode(e.input_ids[n:]) == a + "}.<|end|>\n" and e.labels[n:] == e.input_ids[n:]
    assert "Question: " + q in tok.decode(e.input_ids) and "Here is a context" not in tok.decode(e.input_ids)


def test_ntp_chunk_next_is_a_chat_turn_per_chunk_with_loss_on_the_next_chunk(document):
    _, tok = tiny_model("llama")
    r = PromptRenderer(tok, load_spec("paper").prompt)
    recipe = Recipe("ntp", LoraSettings(), TrainSettings(objective="ntp", ntp_format="chunk_next", chunk_tokens=16))
    ex = build_examples(document.training_view(), recipe, r)
    ids = r.doc_ids(document.text)
    assert len(ex) == (len(ids) + 15) // 16 - 1
    first = tok.decode(ex[0].input_ids)
    assert first.startswith("<|user|>\nHere is a chunk from a document:\n\n")
    assert "\n\nContinue the document with the next text.<|end|>\n<|assistant|>\n" in first
    target = tok.decode([t for t, lab in zip(ex[0].input_ids, ex[0].labels) if lab != -100])
    assert target == tok.decode(ids[16:32]).strip() + "<|end|>\n"


def _long_story(sentences: int = 120) -> str:
    return " ".join(f"Sentence {i} tells of the keeper and the lamp number {i} by the sea." for i in range(sentences))


def test_chunk_next_paper_data_is_the_sections_read_back_from_string_sorted_files(tmp_path):
    """The paper writes section i to <md5 stub>_chunk<i>.txt, reads the folder back with
    sorted(glob("*.txt")) and pairs each file with the next one in that order."""
    from benchmark.protocol.adapters import chunk_next_chunks, file_name_order
    from benchmark.protocol.datasets import Document
    from benchmark.protocol.synthesis import paper_sections

    _, tok = tiny_model("llama")
    text = _long_story()
    sections = paper_sections(text, 64)
    assert len(sections) > 20
    for i, section in enumerate(sections):  # the paper's materialisation, then its load_cluster_chunks
        (tmp_path / f"0123456789ab_chunk{i}.txt").write_text(section)
    read_back = [p.read_text().strip() for p in sorted(tmp_path.glob("*.txt"))]
    paper = chunk_next_chunks(text, TrainSettings(objective="ntp", ntp_format="chunk_next", chunk_next_data="paper"),
                              tok)
    assert paper == read_back
    assert file_name_order(12) == [0, 1, 10, 11, 2, 3, 4, 5, 6, 7, 8, 9]
    in_order = chunk_next_chunks(text, TrainSettings(objective="ntp", ntp_format="chunk_next",
                                                     chunk_next_data="sections"), tok)
    assert in_order == [s.strip() for s in sections] and sorted(in_order) == sorted(paper) and in_order != paper

    r = PromptRenderer(tok, load_spec("paper").prompt)
    recipe = Recipe("ntp", LoraSettings(),
                    TrainSettings(objective="ntp", ntp_format="chunk_next", chunk_next_data="paper"))
    ex = build_examples(Document("story", text, ()).training_view(), recipe, r)
    assert len(ex) == len(sections) - 1
    # the second example: chunk1 -> chunk10, not chunk1 -> chunk2
    user = tok.decode(ex[1].input_ids)
    target = tok.decode([t for t, lab in zip(ex[1].input_ids, ex[1].labels) if lab != -100])
    assert (tok.decode(r.encode(sections[1].strip())) in user
            and target == tok.decode(r.encode(sections[10].strip())) + "<|end|>\n")


def test_chunk_next_data_needs_chunk_next_and_tokens_keeps_the_fingerprint():
    with pytest.raises(ValueError, match="chunk_next_data"):
        TrainSettings(objective="ntp", ntp_format="document", chunk_next_data="paper")
    base = Recipe("ntp", LoraSettings(), TrainSettings(objective="ntp", ntp_format="chunk_next"))
    assert "chunk_next_data" not in base.fingerprint()["train"]
    paper = Recipe("ntp", LoraSettings(),
                   TrainSettings(objective="ntp", ntp_format="chunk_next", chunk_next_data="paper"))
    assert paper.hash() != base.hash()


# ---------------------------------------------------------------- the runner under the paper spec


def test_runner_answers_rho_1_from_the_no_context_prompt_and_scores_the_papers_way(tmp_path, document, monkeypatch):
    from benchmark.protocol import runner as R
    from benchmark.protocol.submission import load_submission

    d = tmp_path / "submissions" / "pt"
    d.mkdir(parents=True)
    (d / "submission.yaml").write_text(
        "name: pt\nauthors: [t]\ndescription: t\ncompressor: {press: DocumentCompactorPress}\n"
        "adapter: {recipe: none}\n")
    sub = load_submission(d)
    model, tok = tiny_model("llama")
    spec = load_spec("paper")
    run = R.DocumentRun.build(model, tok, spec, sub, model_key="tiny", progress=False)
    renderer = run.renderer
    seen = []
    real = R.greedy_decode
    monkeypatch.setattr(R, "greedy_decode", lambda m, t, rows, **k: seen.extend(rows) or real(m, t, rows, **k))
    _, preds = run.evaluate(document, [0.0, 0.9, 1.0], ["base"])
    q = document.questions[0].question
    rho1 = [row for row in seen if row.suffix_ids == renderer.no_doc_suffix_ids(q)]
    assert len(rho1) == 1 and rho1[0].position_offset == len(renderer.no_doc_prefix_ids)
    assert tok.decode(renderer.no_doc_prefix_ids).endswith("<|user|>\n")  # "Question: " goes with the question
    n = len(renderer.no_doc_prefix_ids)
    expected, _ = prefill(model, renderer.no_doc_prefix_ids, (n, n))
    assert all(torch.equal(k, ek) and torch.equal(v, ev) for (k, v), (ek, ev) in zip(rho1[0].kv, expected))
    for p in preds:
        assert p["prediction"] == metrics.extract_answer_paper(p["generation"])
        assert p["rouge_l"] == 100 * metrics.rouge_l_paper(p["prediction"], p["answers"])


# ---------------------------------------------------------------- hub access and prepared data


def test_cli_forces_offline_only_for_the_mini_tier(monkeypatch):
    from benchmark import cli

    parser = cli.build_parser()
    assert not cli._uses_hub(parser.parse_args(["evaluate", "submissions/snapkv"]))
    assert cli._uses_hub(parser.parse_args(["evaluate", "submissions/paper-tier-default", "--tier", "paper"]))
    assert cli._uses_hub(parser.parse_args(["prepare-data", "narrativeqa"]))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(cli, "dry_run", lambda args: 0)
    cli.main(["evaluate", "submissions/paper-tier-default", "--tier", "paper", "--dry-run"])
    assert "HF_HUB_OFFLINE" not in __import__("os").environ


def test_prepare_data_records_and_checks_the_sha256(tmp_path, monkeypatch, capsys):
    from benchmark import cli

    out = tmp_path / "narrativeqa.jsonl"
    out.write_text('{"doc_id": "x"}\n')
    from benchmark.paths import sha256_file

    digest = sha256_file(out)
    assert cli._record_prepared_sha256("narrativeqa", out, digest) == 0  # the spec pins nothing yet
    assert (tmp_path / "narrativeqa.jsonl.sha256").read_text().split()[0] == digest
    assert digest in capsys.readouterr().out
    import dataclasses

    spec = load_spec("paper")
    pinned = dataclasses.replace(spec, datasets=tuple(
        dataclasses.replace(d, test=dataclasses.replace(d.test, sha256="0" * 64)) for d in spec.datasets))
    monkeypatch.setattr("benchmark.protocol.spec.load_spec", lambda tier: pinned)
    assert cli._record_prepared_sha256("narrativeqa", out, digest) == 1
    assert "not the paper's selection" in capsys.readouterr().err


# --------------------------------------------------------------- the paper's synthesis chunking, prompt, ctx_qa context

STORY = " ".join(f"Sentence number {i} tells that item {i} sits in room {i}." for i in range(40))


def test_paper_sections_are_two_64_word_units_with_half_overlap_cut_at_sentences():
    from benchmark.protocol.synthesis import paper_sections

    sentences = [f"Sentence number {i} tells that item {i} sits in room {i}." for i in range(40)]
    assert {len(x.split()) for x in sentences} == {11}  # 5 sentences (55 words) fill a 64-word unit
    pieces = [x + " " for x in sentences[:-1]] + [sentences[-1]]
    units = ["".join(pieces[k:k + 5]) for k in range(0, 40, 5)]
    assert paper_sections(STORY) == [units[i] + units[i + 1] for i in range(7)]
    assert paper_sections("Short text without a full stop") == ["Short text without a full stop"]
    long_sentence = " ".join(["word"] * 100) + ". Next one."
    # a long sentence is one unit
    assert paper_sections(long_sentence) == [" ".join(["word"] * 100) + ". " + "Next one."]


def test_paper_synthesis_prompt_and_pairs_remember_their_section(tmp_path, monkeypatch):
    from benchmark.protocol import synthesis as S

    _, tok = tiny_model("llama")
    prompts = []

    def fake_generate(model, tokenizer, batch, templated, settings, seeds):
        prompts.extend(batch)
        targets = [prompt.split("[Target passage]\n")[1].split("\n\n")[0] for prompt in batch]
        return ['[{"question": "What is first?", "answer": "%s"}]' % target.split()[2] for target in targets]

    monkeypatch.setattr(S, "_generate_texts", fake_generate)
    pairs = S.cached_synthesize(None, tok, STORY, cache_dir=tmp_path, generator_id="tiny", chunking="paper",
                                progress=False)
    sections = S.paper_sections(STORY)
    assert len(prompts) == len(sections) == len(pairs)
    assert [p["section"] for p in pairs] == list(range(len(sections)))
    first = prompts[0]
    assert ("Below is a target passage, preceded by surrounding context for background understanding only.\n\n"
            "[Background context]\n" + sections[1] + "\n\n" + sections[2]
            + "\n\n[Target passage]\n" + sections[0]) in first
    assert ("Generate 4 items whose questions and answers are drawn ONLY from facts stated in the "
            "[Target passage] above. "
            "Each answer must be a short factual phrase grounded in the passage. Prefer the passage's exact "
            "wording when "
            "possible. Return a JSON array where each element is an object with keys \"question\" and \"answer\". "
            "Do NOT include any explanation or text outside the JSON array.") in first
    # the default chunking's cache key is the one it had before the chunking fields existed
    import dataclasses
    import hashlib
    import json

    old = {k: v for k, v in dataclasses.asdict(S.SynthesisSettings()).items()
           if k not in ("chunking", "unit_words", "parser", "batch_size")}
    key = json.dumps(["g", hashlib.sha256(b"text").hexdigest(), old], sort_keys=True, separators=(",", ":"))
    assert S.synthesis_cache_path(tmp_path, "g", "text", S.SynthesisSettings()).name == \
        hashlib.sha256(key.encode()).hexdigest() + ".json"


def test_paper_synthesis_recipe_batches_sections_and_parses_the_papers_way(tmp_path, monkeypatch):
    from benchmark.protocol import synthesis as S
    from benchmark.protocol.datasets import Document

    batches = []
    dup = '[{"question": "Who?", "answer": "Mara"}, {"question": "Who?", "answer": "Mara"}]'
    monkeypatch.setattr(S, "_generate_texts",
                        lambda m, t, prompts, *a: batches.append(len(prompts)) or [dup] * len(prompts))
    model, tok = tiny_model("llama")
    r = PromptRenderer(tok, load_spec("paper").prompt)
    train = TrainSettings(objective="qa", qa_source="synthesize", synthesis="paper", qa_format="paper",
                          synthesis_batch_size=3)
    ex = build_examples(Document("s", STORY, (), ()).training_view(), Recipe("qa", LoraSettings(), train), r, model,
                        "tiny")
    n = len(S.paper_sections(STORY))
    assert n > 3 and batches == [3] * (n // 3) + ([n % 3] if n % 3 else [])
    assert len(ex) == 2 * n  # the paper's parser keeps both copies of a pair


def test_ctx_qa_neighbours_context_is_the_pairs_section_and_one_either_side(tmp_path, monkeypatch):
    from benchmark.protocol import synthesis as S
    from benchmark.protocol.datasets import Document

    monkeypatch.setattr(S, "_generate_texts",
                        lambda m, t, prompts, *a: ['[{"question": "Q%d?", "answer": "A"}]' % len(p) for p in prompts])
    model, tok = tiny_model("llama")
    r = PromptRenderer(tok, load_spec("paper").prompt)
    doc = Document("s", STORY, (), ())
    train = TrainSettings(objective="ctx_qa", qa_source="synthesize", synthesis="paper", ctx_window="neighbours",
                          qa_format="paper")
    ex = build_examples(doc.training_view(), Recipe("ctx_qa", LoraSettings(), train), r, model, "tiny")
    sections = S.paper_sections(STORY)
    assert len(ex) == len(sections)
    for i, e in enumerate(ex):
        ctx = S.section_context(sections, i, 1)
        assert e.input_ids[: len(r.prefix_ids) + len(r.doc_ids(ctx))] == r.prefix_ids + r.doc_ids(ctx)
    assert "\n\n".join(s.strip() for s in sections[0:2]) == S.section_context(sections, 0, 1)
    with pytest.raises(ValueError, match="neighbours"):
        TrainSettings(objective="ctx_qa", ctx_window="neighbours")


def test_an_impossible_recipe_combination_names_the_file_and_field(tmp_path):
    from benchmark.protocol.spec import SpecError
    from benchmark.protocol.submission import load_submission

    d = tmp_path / "submissions" / "bad"
    d.mkdir(parents=True)
    (d / "submission.yaml").write_text(
        "name: bad\nauthors: [t]\ndescription: t\ncompressor: {press: KnormPress}\n"
        "adapter: {recipe: qa, train: {ctx_window: neighbours}}\n")
    with pytest.raises(SpecError, match=r"submission.yaml: field 'adapter': train.ctx_window 'neighbours' needs"):
        load_submission(d)
