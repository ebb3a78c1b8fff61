"""Head-wise budgets (AdaKVPress, CriticalAdaKVPress): kvpress's own compress() picks the evicted
entries across KV heads on the document slice; heads keep different counts, the total is rho's;
the padding of shorter heads is never attended to and never counted as memory."""

from __future__ import annotations

import pytest
import torch

from benchmark.protocol.compression import RaggedKV, build_compressor, evict, kv_bytes, kv_entries, prefill
from benchmark.protocol.generation import Row, greedy_decode
from benchmark.protocol.models import PromptRenderer
from benchmark.protocol.tiny import tiny_model

ADA = {"press": {"press": "SnapKVPress", "kwargs": {"window_size": 8}}}


def _setup(kind, qa_prompt, document, press):
    model, tok = tiny_model(kind)
    r = PromptRenderer(tok, qa_prompt)
    doc_ids = r.doc_ids(document.text)
    span = (len(r.prefix_ids), len(r.prefix_ids) + len(doc_ids))
    kv, scores = prefill(model, r.prefix_ids + doc_ids, span, press, [0.0, 0.5, 0.8, 1.0])
    return model, tok, r, span, kv, scores


@pytest.mark.parametrize("name", ["AdaKVPress", "CriticalAdaKVPress"])
def test_headwise_budget_total_is_rhos_and_heads_differ(name, qa_prompt, document):
    model, _, _, span, kv, scores = _setup("llama", qa_prompt, document, build_compressor(name, ADA))
    n_doc = span[1] - span[0]
    heads = model.config.num_key_value_heads
    uneven = False
    for rho in (0.5, 0.8):
        pruned, n_keep = evict(kv, scores, span, rho)
        assert isinstance(pruned, RaggedKV)
        for keep in pruned.keep:
            per_head = keep[:, span[0]:].sum(dim=-1)
            assert int(per_head.sum()) == heads * n_keep  # the total budget is rho's
            assert bool(keep[:, : span[0]].all())  # the prefix is never evicted
            uneven |= len(set(per_head.tolist())) > 1
        # memory is what is kept, not the padded tensor's shape
        per_entry = 2 * pruned[0][0].shape[-1] * pruned[0][0].element_size()
        assert kv_entries(pruned) == len(pruned) * heads * (span[0] + n_keep)
        assert kv_bytes(pruned) == kv_entries(pruned) * per_entry
    assert uneven, "head-wise budgets should differ between heads somewhere"
    full, n = evict(kv, scores, span, 0.0)
    assert n == n_doc and not isinstance(full, RaggedKV)


def test_kept_entries_match_kvpress_masked_indices(qa_prompt, document):
    """The entries kept per head are exactly those kvpress's AdaKV compress() leaves unmasked."""
    press = build_compressor("AdaKVPress", ADA)
    model, _, _, span, kv, scores = _setup("llama", qa_prompt, document, press)
    keep = scores.for_rho(0.5)[0] > 0.5  # layer 0: (heads, n_doc)
    pruned, _ = evict(kv, scores, span, 0.5)
    k_doc = kv[0][0][0, :, span[0]:span[1]]
    for h in range(keep.shape[0]):
        n_h = int(keep[h].sum())
        assert torch.equal(pruned[0][0][0, h, span[0]:span[0] + n_h], k_doc[h][keep[h]])


def test_padding_is_never_attended_and_rows_stay_independent(qa_prompt, document):
    model, tok, r, span, kv, scores = _setup("qwen3", qa_prompt, document, build_compressor("AdaKVPress", ADA))
    pruned, _ = evict(kv, scores, span, 0.8)
    q = [r.suffix_ids(x.question) for x in document.questions]
    rows = [Row(pruned, span[1], s) for s in q]
    clean = greedy_decode(model, tok, rows, max_new_tokens=8)
    # garbage in the padding of the shorter heads changes nothing
    garbage = RaggedKV((k.clone(), v.clone()) for k, v in pruned)
    garbage.keep = pruned.keep
    for (k, v), keep in zip(garbage, garbage.keep):
        k[0][~keep], v[0][~keep] = 1e3, -1e3
    assert greedy_decode(model, tok, [Row(garbage, span[1], s) for s in q], max_new_tokens=8) == clean
    # batched with uniform rows (no head mask) and one at a time: the same answers
    uniform, _ = evict(*prefill(model, r.prefix_ids + r.doc_ids(document.text), span,
                                build_compressor("SnapKVPress", {"window_size": 8}), [0.8]), span, 0.8)
    mixed = rows + [Row(uniform, span[1], s) for s in q]
    assert greedy_decode(model, tok, mixed, max_new_tokens=8, batch_size=len(mixed)) == [
        greedy_decode(model, tok, [row], max_new_tokens=8)[0] for row in mixed]
    # and the head masks really act: dropping them (attending to the padding) changes the answers
    unmasked = list(garbage)
    assert greedy_decode(model, tok, [Row(unmasked, span[1], s) for s in q], max_new_tokens=8) != clean


def _submission(root, name, compressor):
    d = root / "submissions" / name
    d.mkdir(parents=True)
    (d / "submission.yaml").write_text(f"name: {name}\nauthors: [t]\ndescription: head-wise test\n"
                                       f"compressor: {compressor}\nadapter: {{recipe: none}}\n")
    return d


def test_headwise_submission_conforms_and_counts_memory_as_kept_entries(tmp_path, qa_prompt, document):
    from benchmark.protocol.runner import DocumentRun
    from benchmark.protocol.spec import load_spec
    from benchmark.protocol.submission import load_submission
    from benchmark.trust.conformance import check_submission

    ada = _submission(tmp_path, "ada", "{press: AdaKVPress, kwargs: {press: {press: ExpectedAttentionPress}}}")
    snap = _submission(tmp_path, "snap", "{press: SnapKVPress, kwargs: {window_size: 8}}")
    assert check_submission(ada) == []
    assert check_submission(_submission(tmp_path, "kvzip", "{press: KVzipPress}")) == []
    assert check_submission(_submission(tmp_path, "kvgrad", "{press: KVgradPress}")) == []
    model, tok = tiny_model("llama")
    preds = {}
    for d in (ada, snap):
        sub = load_submission(d)
        run = DocumentRun.build(model, tok, load_spec("mini"), sub, model_key="tiny", prompt=qa_prompt, progress=False)
        _, preds[d.name] = run.evaluate(document, [0.0, 0.5, 1.0], ["base"])
    for a, s in zip(preds["ada"], preds["snap"]):  # same budget: same kept entries and bytes, whatever the heads
        assert (a["rho"], a["kv_entries"], a["kv_bytes"]) == (s["rho"], s["kv_entries"], s["kv_bytes"])


@pytest.mark.parametrize("name,layerwise", [("KVzipPress", False), ("KVzipPress", True), ("KVgradPress", False)])
def test_replay_presses_replay_the_document_only_and_keep_rhos_budget(name, layerwise, qa_prompt, document,
                                                                       monkeypatch):
    """KVzip / KVgrad scoped to the document: the replay reconstructs the document tokens (never
    the prefix), the prefill's cache comes back unchanged, and rho's budget is kept over all
    layers and heads (per layer with layerwise)."""
    press = build_compressor(name, {"layerwise": layerwise})
    replayed = []
    real_prepare = type(press).prepare
    monkeypatch.setattr(type(press), "prepare", lambda self, *a, **k: replayed.extend(real_prepare(self, *a, **k))
                        or replayed)
    model, tok = tiny_model("llama")
    r = PromptRenderer(tok, qa_prompt)
    doc_ids = r.doc_ids(document.text)
    ids = r.prefix_ids + doc_ids
    span = (len(r.prefix_ids), len(ids))
    plain, _ = prefill(model, ids, span)
    kv, scores = prefill(model, ids, span, press, [0.0, 0.5, 1.0], tokenizer=tok)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(kv, plain))
    chunks = [c[0].tolist() for c, _ in replayed]
    assert sum(chunks, []) == doc_ids  # chunks that together are exactly the document
    assert replayed[0][1][0, -len(doc_ids):].tolist() == doc_ids
    pruned, n_keep = evict(kv, scores, span, 0.5)
    heads, layers = model.config.num_key_value_heads, model.config.num_hidden_layers
    per_layer = [int(m[:, span[0]:].sum()) for m in pruned.keep]
    assert sum(per_layer) == layers * heads * n_keep
    if layerwise:
        assert per_layer == [heads * n_keep] * layers
    rows = [Row(pruned, span[1], r.suffix_ids(q.question)) for q in document.questions]
    assert len(greedy_decode(model, tok, rows, max_new_tokens=4)) == len(rows)


@pytest.mark.parametrize("name", ["KVzipPress", "KVgradPress"])
def test_every_document_entry_gets_a_replay_score(name):
    from transformers import DynamicCache

    from benchmark.protocol.compression import language_model
    from benchmark.protocol.replay import replay_scores

    model, tok = tiny_model("llama")
    ids, span = list(range(5, 120)), (10, 110)
    kv, _ = prefill(model, ids, span)
    cache = DynamicCache()
    for i, (k, v) in enumerate(kv):
        cache.update(k, v, i)
    lm = language_model(model)
    for layer in lm.layers:
        layer.self_attn.rotary_emb = lm.rotary_emb
    s = replay_scores(model, tok, cache, ids, span, build_compressor(name))
    assert s.shape == (model.config.num_hidden_layers, model.config.num_key_value_heads, span[1] - span[0])
    assert bool((s > 0).all()) and float(s.std()) > 0  # every entry scored, and not all alike


@pytest.mark.parametrize("layerwise", [False, True])
def test_fastkvzip_gates_score_the_document(layerwise, qa_prompt, document):
    """FastKVzip with gates of the tiny model's shape (the released ones come from the Hub): the
    gates read the document's hidden states only and rho's budget is kept over layers and heads."""
    from kvpress.presses.fastkvzip_press import FastKVzipGate

    model, tok = tiny_model("llama")
    cfg = model.config
    torch.manual_seed(0)
    press = build_compressor("FastKVzipPress", {"layerwise": layerwise})
    press.gates = [FastKVzipGate(i, cfg.hidden_size, cfg.num_key_value_heads,
                                 cfg.num_attention_heads // cfg.num_key_value_heads, torch.float32)
                   for i in range(cfg.num_hidden_layers)]
    seen = []
    for g in press.gates:
        g.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    r = PromptRenderer(tok, qa_prompt)
    doc_ids = r.doc_ids(document.text)
    ids = r.prefix_ids + doc_ids
    span = (len(r.prefix_ids), len(ids))
    kv, scores = prefill(model, ids, span, press, [0.0, 0.5, 1.0], tokenizer=tok)
    assert seen == [len(doc_ids)] * cfg.num_hidden_layers  # each gate saw the document's tokens only
    pruned, n_keep = evict(kv, scores, span, 0.5)
    per_layer = [int(m[:, span[0]:].sum()) for m in pruned.keep]
    assert sum(per_layer) == cfg.num_hidden_layers * cfg.num_key_value_heads * n_keep
    if layerwise:
        assert per_layer == [cfg.num_key_value_heads * n_keep] * cfg.num_hidden_layers
    rows = [Row(pruned, span[1], r.suffix_ids(q.question)) for q in document.questions]
    assert len(greedy_decode(model, tok, rows, max_new_tokens=4)) == len(rows)


@pytest.mark.parametrize("budget,per_head", [("kvpress", 2), ("paper_floor", 3)])
def test_replay_keeps_the_specs_budget(budget, per_head, qa_prompt, document):
    """KVzip's masks keep the spec's budget: 30 entries at rho 0.9 are 2 per head by kvpress's
    int(30 * 0.0999...) and 3 by the paper's floor with its 1e-6."""
    press = build_compressor("KVzipPress", {"layerwise": False})
    model, tok = tiny_model("llama")
    r = PromptRenderer(tok, qa_prompt)
    ids = r.prefix_ids + r.doc_ids(document.text)[:30]
    span = (len(r.prefix_ids), len(ids))
    _, scores = prefill(model, ids, span, press, [0.9], tokenizer=tok, budget=budget)
    heads, layers = model.config.num_key_value_heads, model.config.num_hidden_layers
    assert sum(int(m.sum()) for m in scores.for_rho(0.9)) == layers * heads * per_head
