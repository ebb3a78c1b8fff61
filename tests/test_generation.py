"""Batched decoding from shared compressed caches equals one question at a time."""

import pytest

from benchmark.protocol.compression import build_compressor, evict, prefill
from benchmark.protocol.generation import Row, greedy_decode
from benchmark.protocol.models import PromptRenderer
from benchmark.protocol.tiny import tiny_model


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_batched_equals_one_at_a_time(kind, qa_prompt, document):
    model, tok = tiny_model(kind)
    r = PromptRenderer(tok, qa_prompt)
    doc_ids = r.doc_ids(document.text)
    span = (len(r.prefix_ids), len(r.prefix_ids) + len(doc_ids))
    kv, scores = prefill(model, r.prefix_ids + doc_ids, span, build_compressor("KnormPress"), [0.0, 0.5, 0.9, 1.0])
    rows = []
    for rho in (0.0, 0.5, 0.9, 1.0):  # caches of different lengths and questions of different lengths, mixed
        pruned, _ = evict(kv, scores, span, rho)
        for q in document.questions:
            rows.append(Row(pruned, span[1] if rho < 1 else span[0], r.suffix_ids(q.question)))
    batched = greedy_decode(model, tok, rows, max_new_tokens=8, batch_size=len(rows))
    single = [greedy_decode(model, tok, [row], max_new_tokens=8)[0] for row in rows]
    assert batched == single
    assert len(set(batched)) > 1  # the rows really differ


def test_stop_strings_cut_the_answer(qa_prompt, document):
    model, tok = tiny_model("llama")
    r = PromptRenderer(tok, qa_prompt)
    doc_ids = r.doc_ids(document.text)
    span = (len(r.prefix_ids), len(r.prefix_ids) + len(doc_ids))
    kv, _ = prefill(model, r.prefix_ids + doc_ids, span)
    row = Row(kv, span[1], r.suffix_ids(document.questions[0].question))
    full = greedy_decode(model, tok, [row], max_new_tokens=10)[0]
    assert len(full) > 2
    stop = full.strip()[1]
    cut = greedy_decode(model, tok, [row], max_new_tokens=10, stop=(stop,))[0]
    assert stop not in cut and full.startswith(cut)
