"""Decoding identical rows once, batching longest cache first and reading shared caches in place
changes no answer: the runner's predictions over the whole grid equal those of the plain path
(every row decoded, batches in row order, caches copied), and the rows that are identical by
construction are really decoded once."""

import pytest

from benchmark.protocol import generation as G
from benchmark.protocol import runner as R
from benchmark.protocol.compression import build_compressor, evict, prefill
from benchmark.protocol.generation import Row, greedy_decode
from benchmark.protocol.models import PromptRenderer
from benchmark.protocol.spec import CONDITIONS, load_spec
from benchmark.protocol.submission import load_submission
from benchmark.protocol.tiny import tiny_model

SNAPKV = "{press: SnapKVPress, kwargs: {window_size: 8}}"
SUB = """name: tsub
authors: [test]
description: test submission
compressor: """ + SNAPKV + """
adapter:
  recipe: qa
  lora: {r: 4, alpha: 8, target_modules: [gate_proj, up_proj, down_proj], use_dora: true}
  train: {lr: 5.0e-2, epochs: 1, batch_size: 4}
"""


def plain_decode(model, tok, rows, *, max_new_tokens, stop=(), batch_size=16, batching=None):
    """The decode before deduplication, length ordering and shared caches: every row, batches in row
    order, each row's cache copied into the batch buffer."""
    out = []
    for i in range(0, len(rows), batch_size):
        out.extend(G.decode_batch_copy(model, tok, rows[i:i + batch_size], max_new_tokens, stop))
    return out


@pytest.fixture
def counted(monkeypatch):
    """Rows that reach the model, per decode_batch_shared call."""
    seen = []
    real = G.decode_batch_shared

    def spy(model, tok, rows, *a, **kw):
        seen.append(len(rows))
        return real(model, tok, rows, *a, **kw)

    monkeypatch.setattr(G, "decode_batch_shared", spy)
    return seen


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_duplicates_and_order_change_no_answer(kind, qa_prompt, document, counted):
    model, tok = tiny_model(kind)
    r = PromptRenderer(tok, qa_prompt)
    doc_ids = r.doc_ids(document.text)
    span = (len(r.prefix_ids), len(r.prefix_ids) + len(doc_ids))
    kv, scores = prefill(model, r.prefix_ids + doc_ids, span, build_compressor("KnormPress"), [0.5, 0.9])
    rows = []
    for rho in (0.9, 0.0, 1.0, 0.5, 0.0):  # short and long caches interleaved; rho = 0 twice on one cache
        pruned = kv if rho == 0 else evict(kv, scores, span, rho)[0]
        for q in document.questions:
            rows.append(Row(pruned, span[1] if rho < 1 else span[0], r.suffix_ids(q.question)))
    got = greedy_decode(model, tok, rows, max_new_tokens=8, batch_size=3)
    n_decoded = sum(counted)
    assert got == plain_decode(model, tok, rows, max_new_tokens=8, batch_size=3)
    assert got == [plain_decode(model, tok, [row], max_new_tokens=8)[0] for row in rows]
    assert n_decoded == len(rows) - len(document.questions)  # the repeated rho = 0 block, once
    assert len(set(got)) > 1


@pytest.mark.parametrize("press, reads_weights", [(SNAPKV, True), ("{press: RandomPress}", False)],
                         ids=["snapkv", "random"])
def test_runner_grid_equals_the_plain_decode(press, reads_weights, tmp_path, qa_prompt, document, monkeypatch,
                                             counted):
    d = tmp_path / "submissions" / "tsub"
    d.mkdir(parents=True)
    (d / "submission.yaml").write_text(SUB.replace(SNAPKV, press))
    sub = load_submission(d)
    model, tok = tiny_model("llama")
    run = R.DocumentRun.build(model, tok, load_spec("mini"), sub, model_key="tiny", prompt=qa_prompt, progress=False,
                              batch_size=5)
    rhos = [0.0, 0.5, 0.9, 1.0]
    record, fast = run.evaluate(document, rhos, list(CONDITIONS))
    n_decoded = sum(counted)
    monkeypatch.setattr(R, "greedy_decode", plain_decode)
    _, plain = run.evaluate(document, rhos, list(CONDITIONS))
    key = lambda p: (p["rho"], p["condition"], p["question_id"])  # noqa: E731
    assert sorted(fast, key=key) == sorted(plain, key=key)
    n_q = len(document.questions)
    assert len(fast) == len(rhos) * len(CONDITIONS) * n_q
    # rho = 0: adapter_all and base_score_adapter_prefill keep the same full adapter cache; the
    # no-document cache (rho = 1, an adapter prefill) likewise: one decode each, not two
    # At 0 < rho < 1, base_score_adapter_prefill's cache is adapter_all's exactly when the base and
    # adapter scores keep the same entries: always for random eviction (it reads no weights), not
    # for SnapKV; then its rows are decoded once too
    interior = [r for r in rhos if 0 < r < 1]
    same = [r for r in interior
            if record["plans"][f"{r}|adapter_all"] == record["plans"][f"{r}|base_score_adapter_prefill"]]
    assert same == ([] if reads_weights else interior)
    assert n_decoded == len(fast) - (2 + len(same)) * n_q
