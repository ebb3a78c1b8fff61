"""Decoding over shared caches (each distinct cache read once per batch, in place) answers exactly as
the copying decode (every row's cache copied into its own padded slot), over rows that mix caches
of several lengths and offsets, a head-wise (RaggedKV) cache, rho = 1 and an empty cache; and the
sharing really happens."""

import pytest
import torch

from benchmark.protocol import attention
from benchmark.protocol import generation as G
from benchmark.protocol.compression import build_compressor, evict, prefill
from benchmark.protocol.generation import Row, greedy_decode
from benchmark.protocol.models import PromptRenderer
from benchmark.protocol.tiny import tiny_model

ADA = {"press": {"press": "SnapKVPress", "kwargs": {"window_size": 8}}}
MODELS = {  # 4 query heads on 2 KV heads unless said otherwise
    "llama": ("llama", {}),
    "qwen3": ("qwen3", {}),
    "qwen2": ("qwen2", {}),  # q/k/v biases
    "llama-gqa4": ("llama", {"num_attention_heads": 8}),  # groups of 4 query heads per KV head
    "qwen3-mha": ("qwen3", {"num_key_value_heads": 4}),  # no grouping
}


def _caches(model, tok, qa_prompt, document):
    """(cache, position_offset, suffixes) per distinct cache: rho 0, 0.5, 0.9 (KnormPress), rho 1
    (the prefix only), a head-wise AdaKV cache at rho 0.5, and an empty cache."""
    r = PromptRenderer(tok, qa_prompt)
    doc_ids = r.doc_ids(document.text)
    span = (len(r.prefix_ids), len(r.prefix_ids) + len(doc_ids))
    ids = r.prefix_ids + doc_ids
    kv, scores = prefill(model, ids, span, build_compressor("KnormPress"), [0.5, 0.9])
    ada_kv, ada_scores = prefill(model, ids, span, build_compressor("AdaKVPress", ADA), [0.5])
    ragged = evict(ada_kv, ada_scores, span, 0.5)[0]
    assert getattr(ragged, "keep", None) is not None
    suffixes = [r.suffix_ids(q.question) for q in document.questions]
    return [
        (kv, span[1], suffixes),
        (evict(kv, scores, span, 0.5)[0], span[1], suffixes),
        (evict(kv, scores, span, 0.9)[0], span[1], suffixes),
        (evict(kv, scores, span, 1.0)[0], span[0], suffixes),
        (ragged, span[1], suffixes),
        ([(k[:, :, :0], v[:, :, :0]) for k, v in kv], 0, suffixes[:2]),
    ]


def _first_logits(model, fn, *args):
    """fn's result and the logits of its first model call (the question prefill's last position)."""
    seen = []
    hook = model.register_forward_hook(lambda m, a, out: seen.append(out.logits[:, -1].clone()) if not seen else None)
    try:
        return fn(*args), seen[0]
    finally:
        hook.remove()


@pytest.mark.parametrize("name", list(MODELS))
def test_shared_decode_equals_the_copying_decode(name, qa_prompt, document):
    kind, config = MODELS[name]
    model, tok = tiny_model(kind, **config)
    caches = _caches(model, tok, qa_prompt, document)

    # one batch, rows grouped by cache (the order the shared decode uses, so logits line up row for row)
    grouped = [Row(kv, offset, s) for kv, offset, suffixes in caches for s in suffixes]
    shared, shared_logits = _first_logits(model, G.decode_batch_shared, model, tok, grouped, 8, ())
    copied, copied_logits = _first_logits(model, G.decode_batch_copy, model, tok, grouped, 8, ())
    assert shared == copied
    assert torch.isfinite(shared_logits).all()
    torch.testing.assert_close(shared_logits, copied_logits, rtol=0, atol=1e-5)
    assert len(set(shared)) > 2  # the rows really differ

    # rows interleaved across caches, through greedy_decode in small batches; reference: the same
    # greedy_decode with the copying batch decode
    mixed = [Row(kv, offset, s) for i in range(3) for kv, offset, suffixes in caches
             for s in suffixes[i:i + 1]]
    got = greedy_decode(model, tok, mixed, max_new_tokens=8, batch_size=5)
    assert got == greedy_decode(model, tok, mixed, max_new_tokens=8, batch_size=5, batch_decode=G.decode_batch_copy)


def test_each_distinct_cache_is_stored_once(qa_prompt, document, monkeypatch):
    """Per layer and batch, the attention gets one entry per distinct cache object, the cache's own
    tensors (no copy), and the model's cache holds only the rows' own tokens."""
    model, tok = tiny_model("llama")
    caches = _caches(model, tok, qa_prompt, document)[:4]
    seen = []
    real = attention.shared_prefix_attention

    def spy(query, key, value, attention_mask, shared, scaling):
        seen.append((query.shape[0], key.shape[2], shared))
        return real(query, key, value, attention_mask, shared, scaling)

    monkeypatch.setattr(attention, "shared_prefix_attention", spy)
    rows = [Row(kv, offset, s) for kv, offset, suffixes in caches for s in suffixes]  # 4 caches x 3 questions
    max_new = 4
    greedy_decode(model, tok, rows, max_new_tokens=max_new, batch_size=len(rows))
    assert seen
    q_len = max(len(r.suffix_ids) for r in rows)
    layer0 = {kv[0][0].data_ptr() for kv, _, _ in caches}
    for bsz, own_len, shared in seen:
        assert bsz == len(rows) and len(shared.keys) == len(caches)
        assert [hi - lo for lo, hi in shared.bounds] == [3] * len(caches)
        assert own_len <= q_len + max_new  # never the caches' length
    first = seen[0][2]  # layer 0 of the first step: the caches' own storage
    assert {k.data_ptr() for k in first.keys} == layer0


def test_decode_refuses_another_attention_function(qa_prompt, document):
    """Under another attention function the shared caches would be ignored without a word."""
    model, tok = tiny_model("llama")
    kv, offset, suffixes = _caches(model, tok, qa_prompt, document)[0]
    model.config._attn_implementation = "sdpa"
    with pytest.raises(ValueError, match="attn_implementation"):
        greedy_decode(model, tok, [Row(kv, offset, suffixes[0])], max_new_tokens=2)


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_rows_that_stop_leave_the_batch_and_change_no_answer(name, qa_prompt, document, monkeypatch):
    """A row that has stopped leaves its batch before the next step (the batch shrinks, caches with
    no row left are dropped); every answer equals the row decoded alone, and the copying decode's."""
    kind, config = MODELS[name]
    model, tok = tiny_model(kind, **config)
    caches = _caches(model, tok, qa_prompt, document)
    rows = [Row(kv, offset, s) for kv, offset, suffixes in caches for s in suffixes]
    free = greedy_decode(model, tok, rows, max_new_tokens=8, batch_size=len(rows))
    # a stop string that ends some rows after a token or two and others later or never
    chars = sorted({c for t in free for c in t[1:6] if not c.isspace()}, key=lambda c: sum(c in t for t in free))
    stop = (chars[len(chars) // 2],)
    sizes = []
    real = attention.shared_prefix_attention

    def spy(query, key, value, attention_mask, shared, scaling):
        sizes.append((query.shape[0], len(shared.keys)))
        return real(query, key, value, attention_mask, shared, scaling)

    monkeypatch.setattr(attention, "shared_prefix_attention", spy)
    got = greedy_decode(model, tok, rows, max_new_tokens=8, stop=stop, batch_size=len(rows))
    monkeypatch.undo()
    alone = [greedy_decode(model, tok, [row], max_new_tokens=8, stop=stop)[0] for row in rows]
    assert got == alone
    assert got == greedy_decode(model, tok, rows, max_new_tokens=8, stop=stop, batch_size=len(rows),
                                batch_decode=G.decode_batch_copy)
    batch_sizes = [b for b, _ in sizes]
    assert batch_sizes[0] == len(rows) and min(batch_sizes) < len(rows)  # rows really left
    assert batch_sizes == sorted(batch_sizes, reverse=True)


def test_a_cache_whose_rows_all_stopped_is_dropped():
    k = [torch.full((2, 3, 4), float(i)) for i in range(3)]
    sp = attention.SharedPrefix([(0, 3), (3, 5), (5, 9)], k, [t + 10 for t in k], [None, torch.ones(2, 3).bool(), None])
    sp.take_groups([2, 0, 1])
    assert sp.bounds == [(0, 2), (2, 3)]
    assert [int(t[0, 0, 0]) for t in sp.keys] == [0, 2] and [int(t[0, 0, 0]) for t in sp.values] == [10, 12]
    assert sp.keep == [None, None]
