"""``lorakv-bench export-adapter``: a document's cached adapter as a peft folder that peft loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.cli import main

SUBMISSION = """\
name: tiny-qa
authors: [lorakv-bench tests]
description: SnapKV on the document, tiny QA LoRA adapter.
compressor: {press: SnapKVPress, kwargs: {window_size: 8}}
adapter:
  recipe: qa
  lora: {r: 4, alpha: 8, eval_scale: 0.5}
  train: {lr: 1.0e-3, epochs: 1, batch_size: 8}
"""


@pytest.fixture
def trained(tmp_path):
    """A tiny Llama folder (a model of one's own), and a result of one document whose adapter the
    run trained into the (test's own) adapter cache."""
    from benchmark.protocol.runner import evaluate
    from benchmark.protocol.tiny import tiny_model

    model, tok = tiny_model("llama")
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    sub = tmp_path / "submissions" / "tiny-qa"
    sub.mkdir(parents=True)
    (sub / "submission.yaml").write_text(SUBMISSION)
    [result] = evaluate(str(sub), model_id=str(folder), datasets=["mini-health"], docs=1, questions=1, rhos=[0.5],
                        conditions=["adapter_all"], device="cpu", out=tmp_path / "runs", progress=False)
    return folder, result


def test_export_loads_in_peft_with_the_trained_weights(trained, tmp_path, capsys):
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from benchmark.protocol.adapters import AdapterStore

    folder, result = trained
    data = json.loads(result.read_text())
    doc = data["documents"][0]
    out = tmp_path / "exported"
    assert main(["export-adapter", str(result), doc["doc_id"], str(out), "--model", str(folder)]) == 0
    assert "wrote" in capsys.readouterr().out

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(folder.resolve())
    assert config["lora_alpha"] == 8 * 0.5  # the update evaluated: alpha x eval_scale
    meta = json.loads((out / "lorakv.json").read_text())
    assert meta["document"]["doc_id"] == doc["doc_id"] and meta["submission"]["name"] == "tiny-qa"
    assert meta["spec_version"] == data["spec_version"] and meta["adapter_key"] == doc["adapter"]["key"]
    from benchmark.protocol.submission import load_submission

    assert meta["recipe"] == meta["recipe"] | {
        "name": "qa", "hash": load_submission(tmp_path / "submissions" / "tiny-qa").recipe.hash()}

    cached = load_file(str(AdapterStore().path(doc["adapter"]["key"]) / AdapterStore.WEIGHTS))
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), str(out))
    loaded = get_peft_model_state_dict(peft_model)  # keys under base_model.model., as peft saves them
    assert loaded and set(loaded) == set(cached)
    for k, v in loaded.items():
        assert v.equal(cached[k]), k
    assert any(v.abs().sum() > 0 for k, v in loaded.items() if "lora_B" in k)  # trained, not peft's zero init


def test_export_errors_are_one_line(trained, tmp_path, capsys):
    import shutil

    from benchmark.protocol.adapters import AdapterStore

    folder, result = trained
    data = json.loads(result.read_text())
    doc_id = data["documents"][0]["doc_id"]

    assert main(["export-adapter", str(result), doc_id, str(tmp_path / "a")]) == 2  # a local model needs its folder
    assert "pass its folder with --model PATH" in capsys.readouterr().err
    assert main(["export-adapter", str(result), "nope", str(tmp_path / "b")]) == 2
    assert f"no document 'nope' (have: {doc_id})" in capsys.readouterr().err

    shutil.rmtree(AdapterStore().path(data["documents"][0]["adapter"]["key"]))
    assert main(["export-adapter", str(result), doc_id, str(tmp_path / "c"), "--model", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not in the adapter cache" in err
    assert "train it with: lorakv-bench evaluate submissions/tiny-qa --tier mini --model PATH/TO/tiny-llama " \
           "--dataset mini-health --docs 1 --questions 1 --conditions adapter_all" in err
    assert not (tmp_path / "c").exists()


def test_spec_models_are_named_by_their_hub_id():
    from benchmark.integrations.export import base_model_name

    names = {m: base_model_name(Path("r.json"), {"tier": tier, "model": {"id": m, "name": "x"}}, None)
             for tier, m in (("mini", "qwen2.5-0.5b"), ("mini", "smollm2-135m"), ("paper", "llama-3.1-8b"))}
    assert names == {"qwen2.5-0.5b": "Qwen/Qwen2.5-Coder-0.5B-Instruct-AWQ",
                     "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
                     "llama-3.1-8b": "meta-llama/Llama-3.1-8B-Instruct"}
