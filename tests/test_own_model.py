"""``evaluate --model PATH``: a model of one's own (a local transformers folder, or a Hub id) runs the
tier with the spec's data and prompt; its KV shape and dtype come from its config, and the result's
checks read them for such a model only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.protocol.spec import current_version

REPO = Path(__file__).resolve().parents[1]
NO_ADAPTER = REPO / "submissions" / "snapkv-noadapter"


@pytest.fixture
def tiny_folder(tmp_path) -> Path:
    """A tiny random Llama saved as a transformers folder (config.json, safetensors, tokenizer)."""
    from benchmark.protocol.tiny import tiny_model

    model, tok = tiny_model("llama")
    folder = tmp_path / "my-tiny-llama"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_folder_becomes_a_model_of_its_own(tiny_folder):
    from benchmark.protocol.models import folder_revision, resolve_model
    from benchmark.protocol.spec import load_spec

    spec = load_spec("mini")
    m = resolve_model(spec, str(tiny_folder))
    assert (m.id, m.name, m.dtype) == ("my-tiny-llama", "my-tiny-llama", "float32")
    assert m.source["kind"] == "local" and m.source["kv_shape"] == [2, 2, 16]  # 2 layers, 2 KV heads, 64 / 4
    assert len(m.source["revision"]) == 64
    assert resolve_model(spec, "smollm2-135m") is spec.model("smollm2-135m")  # spec ids stay the spec's

    # the revision follows the weights and the config
    (tiny_folder / "model.safetensors").write_bytes((tiny_folder / "model.safetensors").read_bytes() + b" ")
    assert folder_revision(tiny_folder) != m.source["revision"]


@pytest.mark.parametrize("arg, says", [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "and the Hugging Face Hub is offline (HF_HUB_OFFLINE=1)"),
    ("no-such-model", "(a Hub id is ORG/NAME)"),
])
def test_unknown_model_is_one_line(arg, says, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["evaluate", str(NO_ADAPTER), "--model", arg, "--docs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    version = current_version("mini")
    assert err.startswith(f"error: --model {arg}: neither a model id of spec {version} (smollm2-135m, "
                          "qwen2.5-0.5b) nor a local folder") and says in err


def test_folder_problems_are_one_line(tmp_path, tiny_folder, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", str(NO_ADAPTER), "--model", str(empty)]) == 2
    assert "a folder without config.json" in capsys.readouterr().err
    named = tiny_folder.rename(tmp_path / "smollm2-135m")  # would be taken for the spec's model
    assert main(["evaluate", str(NO_ADAPTER), "--model", str(named), "--docs", "1", "--rhos", "0.5",
                 "--dataset", "mini-health"]) == 2
    err = capsys.readouterr().err
    assert f"'smollm2-135m' is a model id of spec {current_version('mini')}; rename the folder" in err


def _own_result(tiny_folder, tmp_path) -> Path:
    from benchmark.protocol.runner import evaluate

    [path] = evaluate(str(NO_ADAPTER), model_id=str(tiny_folder), datasets=["mini-health"], docs=1, questions=2,
                      rhos=[0.5, 0.9], device="cpu", out=tmp_path / "runs", progress=False)
    return path


def test_tiny_folder_end_to_end_validates(tiny_folder, tmp_path):
    from benchmark.protocol.models import chat_template_sha256
    from benchmark.protocol.tiny import tiny_tokenizer
    from benchmark.trust.conformance import check_result_file

    path = _own_result(tiny_folder, tmp_path)
    assert path.parts[-2:] == ("my-tiny-llama", "mini-health.json")
    data = json.loads(path.read_text())
    assert data["model"] == {"id": "my-tiny-llama", "name": "my-tiny-llama", "source": "local",
                             "revision": data["model"]["revision"], "dtype": "float32", "kv_shape": [2, 2, 16],
                             "chat_template_sha256": chat_template_sha256(tiny_tokenizer())}
    assert check_result_file(path, submissions_dir=REPO / "submissions", full_protocol=False) == []
    from benchmark.protocol.spec import SpecError
    from benchmark.trust.verify import verify_result

    with pytest.raises(SpecError, match="verify re-runs results of the spec's models only"):
        verify_result(path, 1, seed="1", submissions_dir=REPO / "submissions", device="cpu")

    # the checks read the recorded shape: another shape makes every kv_entries wrong ...
    data["model"]["kv_shape"] = [3, 2, 16]
    path.write_text(json.dumps(data))
    assert any("kv_entries" in p for p in check_result_file(path, submissions_dir=REPO / "submissions",
                                                              full_protocol=False))
    # ... and a spec model's result may not carry one (its shape is config.KV_SHAPES')
    data["model"] = {"id": "smollm2-135m", "name": data["model"]["name"], "kv_shape": [2, 2, 16], "source": "local"}
    spec_path = path.parents[1] / "smollm2-135m" / path.name
    spec_path.parent.mkdir()
    spec_path.write_text(json.dumps(data))
    problems = check_result_file(spec_path, submissions_dir=REPO / "submissions", full_protocol=False)
    assert any("field 'model/kv_shape': not a field of a result file" in p for p in problems)


def test_leaderboard_groups_own_models_apart(tiny_folder, tmp_path):
    from benchmark.board.leaderboard import group_entries, load_entries

    _own_result(tiny_folder, tmp_path)
    groups = group_entries(load_entries(tmp_path / "runs"))
    assert ("mini", "mini-health", "my-tiny-llama", "float32") in groups


@pytest.mark.slow
def test_converted_smollm2_as_a_folder(tmp_path, capsys):
    """SmolLM2 as the harness converts it into the model cache, passed as ``--model PATH`` end to end (CLI), and
    the result passes ``validate`` but for the protocol's full-split rules (one document here)."""
    from transformers import AutoConfig

    from benchmark.config import KV_SHAPES
    from benchmark.protocol.models import kv_shape_of, provision
    from benchmark.protocol.spec import load_spec
    from benchmark.trust.conformance import check_result_file

    folder = provision(load_spec("mini").model("smollm2-135m"))  # converted from its wheel where not yet
    # the KV shape read from a config (what an own model records) agrees with the spec's table
    assert kv_shape_of(AutoConfig.from_pretrained(folder)) == KV_SHAPES["smollm2-135m"]
    out = tmp_path / "runs"
    assert main(["evaluate", str(NO_ADAPTER), "--model", str(folder), "--dataset", "mini-narrative", "--docs", "1",
                 "--questions", "2", "--rhos", "0.5", "0.9", "--device", "cpu", "--out", str(out)]) == 0
    [path] = out.rglob("*.json")
    data = json.loads(path.read_text())
    assert data["model"]["id"] == folder.name and tuple(data["model"]["kv_shape"]) == KV_SHAPES["smollm2-135m"]
    assert len(data["predictions"]) == 4
    assert check_result_file(path, submissions_dir=REPO / "submissions", full_protocol=False) == []
    capsys.readouterr()
    assert main(["validate", str(path)]) == 1  # only the leaderboard's full-protocol rules fail
    err = capsys.readouterr().err
    assert {line.split("field ")[1].split(":")[0] for line in err.splitlines() if line.startswith("FAIL ")} == {
        "'rhos'", "'slice'", "'documents'"}
