"""The runner: conditions use the adapter exactly where the spec says, prefills happen once per
weights, results resume, and bad inputs fail with messages naming file and field."""

import json

import pytest

from benchmark.protocol import runner as R
from benchmark.protocol.evaluator import Loaders
from benchmark.protocol.spec import CONDITIONS, SpecError, load_spec
from benchmark.protocol.submission import load_submission
from benchmark.protocol.tiny import tiny_model

SUB = """name: {name}
authors: [test]
description: test submission
compressor: {{press: SnapKVPress, kwargs: {{window_size: 8}}}}
adapter:
  recipe: {recipe}
"""
LORA = """  lora: {r: 4, alpha: 8, target_modules: [gate_proj, up_proj, down_proj], use_dora: true}
  train: {lr: 5.0e-2, epochs: 1, batch_size: 4}
"""


def make_submission(tmp_path, recipe="qa", name="tsub"):
    d = tmp_path / "submissions" / name
    d.mkdir(parents=True)
    (d / "submission.yaml").write_text(SUB.format(name=name, recipe=recipe) + (LORA if recipe != "none" else ""))
    return load_submission(d)


def make_run(tmp_path, qa_prompt, recipe="qa"):
    model, tok = tiny_model("llama")
    sub = make_submission(tmp_path, recipe)
    return R.DocumentRun.build(model, tok, load_spec("mini"), sub, model_key="tiny", prompt=qa_prompt, progress=False)


def _adapter_on(model) -> bool:
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    return bool(layers) and not layers[0].disable_adapters


def test_adapter_is_on_exactly_where_the_condition_says(tmp_path, qa_prompt, document, monkeypatch):
    run = make_run(tmp_path, qa_prompt)
    seen = {"prefill": [], "decode": []}
    real_prefill, real_decode = R.prefill, R.greedy_decode

    def spy_prefill(model, *a, **k):
        seen["prefill"].append(_adapter_on(model))
        return real_prefill(model, *a, **k)

    def spy_decode(model, tok, rows, **k):
        seen["decode"].append((_adapter_on(model), len(rows)))
        return real_decode(model, tok, rows, **k)

    monkeypatch.setattr(R, "prefill", spy_prefill)
    monkeypatch.setattr(R, "greedy_decode", spy_decode)
    rhos = [0.0, 0.5, 1.0]
    for cond, c in CONDITIONS.items():
        seen = {"prefill": [], "decode": []}
        _, preds = run.evaluate(document, rhos, [cond])
        assert len(preds) == len(rhos) * len(document.questions)
        expected_prefills = sorted({c["prefill"], c["score"]})
        assert sorted("adapter" if on else "base" for on in seen["prefill"]) == expected_prefills
        assert seen["decode"] == [(c["decode"] == "adapter", len(preds))]


def test_one_prefill_per_weights_for_the_whole_grid(tmp_path, qa_prompt, document):
    run = make_run(tmp_path, qa_prompt)
    rec, preds = run.evaluate(document, [0.0, 0.25, 0.5, 0.75, 0.9, 1.0], list(CONDITIONS))
    assert run.stats["prefills"] == 2  # base and adapter, never |rho| x |conditions|
    assert len(preds) == 6 * 4 * len(document.questions)
    # base and base_kv_adapter_decode read the same cache
    for p in preds:
        if p["condition"] == "base_kv_adapter_decode":
            twin = next(x for x in preds if x["condition"] == "base" and x["rho"] == p["rho"]
                        and x["question_id"] == p["question_id"])
            assert twin["kv_entries"] == p["kv_entries"]


def test_no_adapter_recipe_runs_only_base(tmp_path, qa_prompt, document):
    run = make_run(tmp_path, qa_prompt, recipe="none")
    rec, preds = run.evaluate(document, [0.0, 1.0], list(CONDITIONS))
    assert {p["condition"] for p in preds} == {"base"} and rec["adapter"] is None


def test_evaluate_writes_and_resumes(tmp_path, qa_prompt, document, monkeypatch):
    from benchmark.protocol.spec import DataFile

    data = tmp_path / "docs.jsonl"
    row = {"doc_id": document.doc_id, "text": document.text,
           "questions": [{"id": q.id, "question": q.question, "answers": list(q.answers)} for q in document.questions],
           "train_qa": [{"question": q, "answer": a} for q, a in document.train_qa]}
    data.write_text(json.dumps(row) + "\n" + json.dumps({**row, "doc_id": "d1", "questions": [
        {**q, "id": q["id"] + "b"} for q in row["questions"]]}) + "\n")
    model, tok = tiny_model("llama")
    spec = load_spec("mini")
    ds = spec.datasets[0]
    import dataclasses

    spec = dataclasses.replace(spec, datasets=(dataclasses.replace(ds, test=DataFile(data, None)),))
    loaders = Loaders(load_spec=lambda tier: spec, load_model=lambda *a: (model, tok))
    sub = make_submission(tmp_path)
    out = tmp_path / "results"
    calls = []
    real = R.DocumentRun.evaluate
    monkeypatch.setattr(R.DocumentRun, "evaluate",
                        lambda self, doc, *a, **k: calls.append(doc.doc_id) or real(self, doc, *a, **k))
    kwargs = dict(rhos=[0.0, 1.0], conditions=["base", "base_kv_adapter_decode"], out=out, progress=False,
                  loaders=loaders)
    monkeypatch.setattr(R.DocumentRun, "evaluate", lambda self, doc, *a, **k: calls.append(doc.doc_id) or (
        real(self, doc, *a, **k) if doc.doc_id == "d0" else (_ for _ in ()).throw(KeyboardInterrupt)))
    with pytest.raises(KeyboardInterrupt):  # interrupted after the first document
        R.evaluate(sub.path, **kwargs)
    [path] = list((out / "tsub").rglob("*.json"))
    first = json.loads(path.read_text())
    assert len(first["predictions"]) == 2 * 2 * 3 and calls == ["d0", "d1"]
    monkeypatch.setattr(R.DocumentRun, "evaluate",
                        lambda self, doc, *a, **k: calls.append(doc.doc_id) or real(self, doc, *a, **k))
    [path] = R.evaluate(sub.path, **kwargs)  # resumes: d0 is done, only d1 runs
    assert calls == ["d0", "d1", "d1"]
    with pytest.raises(SpecError, match=r"field 'slice'"):  # another slice does not resume this file
        R.evaluate(sub.path, docs=1, **kwargs)
    data2 = json.loads(path.read_text())
    assert len(data2["predictions"]) == 2 * 2 * 3 * 2
    assert [p for p in data2["predictions"] if p["doc_id"] == "d0"] == first["predictions"]
    cell = next(c for c in data2["cells"] if c["rho"] == 0.0 and c["condition"] == "base")
    assert cell["n_documents"] == 2 and cell["rouge_l_ci95"][0] <= cell["rouge_l"] <= cell["rouge_l_ci95"][1]


def test_bad_submission_names_file_and_field(tmp_path):
    d = tmp_path / "submissions" / "bad"
    d.mkdir(parents=True)
    (d / "submission.yaml").write_text(SUB.format(name="bad", recipe="qa") + "  lora: {r: 0}\n")
    with pytest.raises(SpecError, match=r"submission.yaml: field 'adapter/lora/r'"):
        load_submission(d)


def test_bad_data_names_file_line_and_field(tmp_path):
    from benchmark.protocol.datasets import DataError, load_documents

    f = tmp_path / "bad.jsonl"
    f.write_text('{"doc_id": "a", "text": "t", "questions": [{"id": "q", "question": "?", "answers": []}]}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'questions/0/answers'"):
        load_documents(f)
    f.write_text("{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: not valid JSON"):
        load_documents(f)


def test_sharded_run_merges_to_exactly_the_unsharded_result(tmp_path, qa_prompt, document):
    import dataclasses

    from benchmark.protocol.results import merge_shards
    from benchmark.protocol.spec import DataFile

    rows = []
    for i in range(3):
        rows.append({"doc_id": f"d{i}", "text": document.text + f" Extra fact number {i}.",
                     "questions": [{"id": f"d{i}-{q.id}", "question": q.question, "answers": list(q.answers)}
                                   for q in document.questions[:2]],
                     "train_qa": [{"question": q, "answer": a} for q, a in document.train_qa]})
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model, tok = tiny_model("llama")
    spec = load_spec("mini")
    spec = dataclasses.replace(spec, datasets=(dataclasses.replace(spec.datasets[0], test=DataFile(data, None)),))
    sub = make_submission(tmp_path)
    kw = dict(rhos=[0.0, 0.5, 1.0], conditions=["base", "base_kv_adapter_decode"], progress=False,
              loaders=Loaders(load_spec=lambda tier: spec, load_model=lambda *a: (model, tok)))
    [whole] = R.evaluate(sub.path, out=tmp_path / "whole", **kw)
    shards = [R.evaluate(sub.path, out=tmp_path / "shards", shard=(i, 2), **kw)[0] for i in range(2)]
    merged = json.loads(merge_shards(shards, tmp_path / "merged.json").read_text())
    single = json.loads(whole.read_text())
    for key in ("predictions", "cells"):
        assert merged[key] == single[key]
    assert [d["doc_id"] for d in merged["documents"]] == [d["doc_id"] for d in single["documents"]]
    with pytest.raises(SpecError, match="also in"):
        merge_shards([shards[0], shards[0]], tmp_path / "bad.json")


def test_per_model_train_overrides(tmp_path):
    """adapter.per_model lays one model's train fields over adapter.train; the hash covers them."""
    from benchmark.protocol.spec import SpecError
    from benchmark.protocol.submission import load_submission

    folder = tmp_path / "sub"
    folder.mkdir()
    base = ("name: sub\nauthors: [a]\ndescription: d\ncompressor: {press: KnormPress}\n"
            "adapter:\n  recipe: qa\n  train: {lr: 3.0e-3, epochs: 6}\n")
    (folder / "submission.yaml").write_text(base + "  per_model: {qwen2.5-0.5b: {lr: 1.0e-3, schedule: cosine}}\n")
    sub = load_submission(folder)
    qwen, smol = sub.for_model("qwen2.5-0.5b"), sub.for_model("smollm2-135m")
    assert (qwen.recipe.train.lr, qwen.recipe.train.epochs, qwen.recipe.train.schedule) == (1e-3, 6, "cosine")
    assert smol.recipe == sub.recipe and smol.recipe.train.lr == 3e-3
    assert qwen.hash() == sub.hash()
    (folder / "submission.yaml").write_text(base)
    assert load_submission(folder).hash() != sub.hash()  # the overrides are part of the identity
    (folder / "submission.yaml").write_text(base + "  per_model: {qwen2.5-0.5b: {schedule: zigzag}}\n")
    with pytest.raises(SpecError, match="schedule"):
        load_submission(folder)


@pytest.mark.parametrize("protocol, implementation", [
    ("DocumentEvaluator", "benchmark.protocol.runner:DocumentRun"),
    ("SubmissionCode", "benchmark.trust.worker:SubmissionProcess"),
])
def test_the_run_and_the_sandbox_implement_their_interfaces(protocol, implementation):
    """Every method of the interface is on the implementation with the same parameters; every
    attribute is a field or a property of it."""
    import dataclasses
    import importlib
    import inspect

    from benchmark.protocol import evaluator

    proto = getattr(evaluator, protocol)
    module, _, name = implementation.partition(":")
    impl = getattr(importlib.import_module(module), name)
    members = {k: v for k, v in vars(proto).items() if not k.startswith("_") or k in ("__enter__", "__exit__")}
    fields = {f.name for f in dataclasses.fields(impl)}
    for attr in proto.__annotations__:
        assert attr in fields or isinstance(getattr(impl, attr, None), property), attr
    for key, member in members.items():
        if isinstance(member, property):
            assert isinstance(getattr(impl, key), property), key
        elif inspect.isfunction(member):
            want = list(inspect.signature(member).parameters)
            assert list(inspect.signature(getattr(impl, key)).parameters) == want, key


def test_open_run_loads_the_requests_model_with_the_loaders_given(tmp_path):
    from benchmark.config import EvalRequest

    model, tok = tiny_model("llama")
    asked = []
    loaders = Loaders(load_model=lambda *a: asked.append(a) or (model, tok))
    sub = make_submission(tmp_path, recipe="none")
    request = EvalRequest(submission=str(sub.path), model_id="smollm2-135m", device="cpu", dtype="float32",
                          batch_size=3, progress=False)
    with R.open_run(load_spec("mini"), sub, request, loaders=loaders) as run:
        assert isinstance(run, R.DocumentEvaluator)
        assert (run.model, run.batch_size, run.progress, run.sandbox) == (model, 3, False, "no code")
    [(model_spec, device, dtype)] = asked
    assert (model_spec.id, device, dtype) == ("smollm2-135m", "cpu", "float32")


def test_the_real_loaders_pickle_as_references_for_ray_tasks():
    import pickle

    from benchmark.protocol.evaluator import LOADERS
    from benchmark.protocol.models import load_model

    assert pickle.loads(pickle.dumps(LOADERS)) == LOADERS and LOADERS.load_model is load_model


def test_a_model_left_in_training_mode_is_refused(tmp_path, qa_prompt, document, monkeypatch):
    """Dropout live in evaluation would make the answers random: the runner stops, naming a module."""
    monkeypatch.setenv("LORAKV_CACHE", str(tmp_path / "cache"))
    run = make_run(tmp_path, qa_prompt, recipe="none")
    run.model.model.layers[1].mlp.train()
    with pytest.raises(RuntimeError, match=r"in training mode before evaluation, e\.g\. model\.layers\.1\.mlp"):
        run.evaluate(document, [0.5], ["base"])
    run.model.eval()
    _, preds = run.evaluate(document, [0.5], ["base"], document.questions[:1])
    assert len(preds) == 1
