"""Compression: exact budgets, document scoping, rho = 0 / rho = 1 equivalences, kvpress parity."""

import pytest
import torch
from kvpress import KnormPress, SnapKVPress, StreamingLLMPress
from kvpress.utils import compute_n_kept
from transformers import DynamicCache

from benchmark.protocol.compression import build_compressor, evict, prefill, score_depends_on_rho
from benchmark.protocol.generation import Row, greedy_decode
from benchmark.protocol.models import PromptRenderer
from benchmark.protocol.tiny import tiny_model

RHOS = [0.0, 0.25, 0.5, 0.8, 0.95, 1.0]


@pytest.fixture(params=["llama", "qwen3"])
def model_tok(request):
    return tiny_model(request.param)


def _setup(model_tok, qa_prompt, document):
    model, tok = model_tok
    r = PromptRenderer(tok, qa_prompt)
    doc_ids = r.doc_ids(document.text)
    span = (len(r.prefix_ids), len(r.prefix_ids) + len(doc_ids))
    return model, tok, r, r.prefix_ids + doc_ids, span


@pytest.mark.parametrize("press", ["SnapKVPress", "KnormPress", "StreamingLLMPress", "ExpectedAttentionPress"])
def test_budget_exact_and_non_document_entries_kept(model_tok, qa_prompt, document, press):
    model, tok, r, ids, span = _setup(model_tok, qa_prompt, document)
    kwargs = {"window_size": 8} if press == "SnapKVPress" else {}
    if press == "ExpectedAttentionPress":
        kwargs = {"n_future_positions": 8, "n_sink": 2}
    comp = build_compressor(press, kwargs)
    kv, scores = prefill(model, ids, span, comp, RHOS)
    n_doc = span[1] - span[0]
    for rho in RHOS:
        pruned, n_keep = evict(kv, scores, span, rho)
        expected = compute_n_kept(n_doc, rho) if rho < 1 else 0
        assert n_keep == expected
        for (k, v), (pk, pv) in zip(kv, pruned):
            assert pk.shape[2] == span[0] + expected  # every head keeps exactly the budget
            assert torch.equal(pk[:, :, : span[0]], k[:, :, : span[0]])  # prefix never evicted
            assert torch.equal(pv[:, :, : span[0]], v[:, :, : span[0]])
            # kept document entries are real document entries, each at most once, in order
            for h in range(k.shape[1]):
                rows = pk[0, h, span[0]:]
                idx = [int((k[0, h] == row).all(-1).nonzero()[0]) for row in rows]
                assert all(span[0] <= i < span[1] for i in idx)
                assert idx == sorted(set(idx))


def test_rho_zero_and_one_match_plain_prompts(model_tok, qa_prompt, document):
    model, tok, r, ids, span = _setup(model_tok, qa_prompt, document)
    kv, scores = prefill(model, ids, span, build_compressor("KnormPress"), RHOS)
    for q in document.questions:
        for rho, reference_ids in ((0.0, r.full_ids(document.text, q.question)), (1.0, r.no_doc_ids(q.question))):
            pruned, _ = evict(kv, scores, span, rho)
            offset = span[1] if rho < 1 else span[0]
            ours = greedy_decode(model, tok, [Row(pruned, offset, r.suffix_ids(q.question))], max_new_tokens=6)[0]
            ref = torch.tensor([reference_ids])
            out = model.generate(ref, attention_mask=torch.ones_like(ref), max_new_tokens=6, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            assert ours == tok.decode(out[0, ref.shape[1]:], skip_special_tokens=True).lstrip()


def test_rho_zero_cache_is_the_uncompressed_cache(model_tok, qa_prompt, document):
    model, tok, r, ids, span = _setup(model_tok, qa_prompt, document)
    kv, scores = prefill(model, ids, span, build_compressor("SnapKVPress", {"window_size": 8}), [0.0])
    pruned, _ = evict(kv, scores, span, 0.0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(kv, pruned))


def _kvpress_kept(model, ids, press):
    """Kept positions per (layer, head) from kvpress's own hook on a document-only context."""
    cache = DynamicCache()
    with torch.no_grad(), press(model):
        model.model(input_ids=torch.tensor([ids]), past_key_values=cache)
    return [(layer.keys, layer.values) for layer in cache.layers]


def _positions(full_keys, kept_keys):
    out = []
    for h in range(full_keys.shape[1]):
        out.append(sorted(int((full_keys[0, h] == row).all(-1).nonzero()[0]) for row in kept_keys[0, h]))
    return out


@pytest.mark.parametrize("press_cls,kwargs", [(SnapKVPress, {"window_size": 8}), (KnormPress, {}),
                                              (StreamingLLMPress, {"n_sink": 4})])
@pytest.mark.parametrize("rho", [0.25, 0.5, 0.75, 0.9])
def test_parity_with_kvpress_on_document_only_context(model_tok, document, press_cls, kwargs, rho):
    model, tok = model_tok
    ids = tok.encode(document.text, add_special_tokens=False)
    span = (0, len(ids))
    ours_press = press_cls(**kwargs)
    kv, scores = prefill(model, ids, span, ours_press, [rho])
    ours, _ = evict(kv, scores, span, rho)
    theirs = _kvpress_kept(model, ids, press_cls(compression_ratio=rho, **kwargs))
    for (k, _), (ok, _), (tk, _) in zip(kv, ours, theirs):
        assert _positions(k, ok) == _positions(k, tk)


def test_ratio_dependence_is_detected():
    assert score_depends_on_rho(StreamingLLMPress())
    assert not score_depends_on_rho(KnormPress())
    assert not score_depends_on_rho(SnapKVPress())


def test_unknown_press_is_a_clear_error():
    with pytest.raises(ValueError, match="no press named 'NopePress'"):
        build_compressor("NopePress")
