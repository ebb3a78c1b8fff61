"""Configuration is torch-free, and each list of allowed values is kept once: the JSON Schemas'
enums equal the Python constants they repeat, and the condition names, which the schema files leave
out, come from config when a schema is loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark import config
from benchmark.protocol import metrics
from benchmark.protocol.spec import SCHEMA_DIR, SpecError, load_schema, validate_against

ROOT = Path(__file__).resolve().parents[1]


def test_config_and_submission_import_without_torch():
    # a fresh interpreter: this test process has torch loaded already. (Loading a submission still
    # imports kvpress, and so torch, to check that its press name is a kvpress press.)
    code = ("import sys; import benchmark.config, benchmark.protocol.submission, benchmark.protocol.spec; "
            "from benchmark.config import LoraSettings, Recipe, TrainSettings; "
            "Recipe('qa', LoraSettings(r=8), TrainSettings(lr=2e-3)).hash(); "
            "print(sorted(m for m in ('torch', 'peft', 'transformers', 'kvpress') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_old_import_paths_still_work():
    from benchmark.protocol import adapters, spec

    for name in ("LoraSettings", "TrainSettings", "Recipe", "OBJECTIVES", "LORA_INITS", "SCHEDULES", "QA_FORMATS",
                 "NTP_FORMATS", "_LATER_OPTIONS"):
        assert getattr(adapters, name) is getattr(config, name), name
    for name in ("CONDITIONS", "CONDITION_HELP", "TIERS", "BUDGETS"):
        assert getattr(spec, name) is getattr(config, name), name


def _at(schema: str, *path: str):
    node = json.loads((SCHEMA_DIR / schema).read_text())  # the file as written
    for key in path:
        node = node[key]
    return node


#: (schema file, path to the enum inside it, the Python constant it must equal)
ENUMS = [
    ("submission.schema.json", ("properties", "adapter", "properties", "recipe", "enum"), config.RECIPES),
    ("submission.schema.json", ("properties", "adapter", "properties", "lora", "properties", "init", "enum"),
     config.LORA_INITS),
    ("submission.schema.json", ("$defs", "train", "properties", "qa_source", "enum"), config.QA_SOURCES),
    ("submission.schema.json", ("$defs", "train", "properties", "schedule", "enum"), config.SCHEDULES),
    ("submission.schema.json", ("$defs", "train", "properties", "qa_format", "enum"), config.QA_FORMATS),
    ("submission.schema.json", ("$defs", "train", "properties", "synthesis", "enum"), config.SYNTHESES),
    ("submission.schema.json", ("$defs", "train", "properties", "ctx_window", "enum"), config.CTX_WINDOWS),
    ("submission.schema.json", ("$defs", "train", "properties", "ntp_format", "enum"), config.NTP_FORMATS),
    ("submission.schema.json", ("$defs", "train", "properties", "early_stop", "enum"), config.EARLY_STOPS),
    ("submission.schema.json", ("$defs", "train", "properties", "chunk_next_data", "enum"), config.CHUNK_NEXT_DATA),
    ("spec.schema.json", ("properties", "tier", "enum"), config.TIERS),
    ("spec.schema.json", ("properties", "budget", "enum"), config.BUDGETS),
    ("spec.schema.json", ("properties", "metric", "properties", "normalization", "enum"), tuple(metrics.SCORERS)),
    ("spec.schema.json", ("properties", "metric", "properties", "extraction", "enum"), tuple(metrics.EXTRACTORS)),
    ("result.schema.json", ("properties", "tier", "enum"), config.TIERS),
]


@pytest.mark.parametrize("schema, path, constant", ENUMS, ids=[f"{s}:{p[-2]}" for s, p, _ in ENUMS])
def test_schema_enum_equals_python_constant(schema, path, constant):
    assert tuple(_at(schema, *path)) == tuple(constant)


CONDITION_SCHEMAS = ["spec.schema.json", "submission.schema.json", "result.schema.json"]


@pytest.mark.parametrize("schema", CONDITION_SCHEMAS)
def test_schema_files_name_no_condition_and_loading_fills_them_from_config(schema):
    text = (SCHEMA_DIR / schema).read_text()
    assert not [c for c in config.CONDITION_NAMES if f'"{c}"' in text], f"{schema} spells a condition name"
    assert "enum" not in _at(schema, "$defs", "condition")
    assert load_schema(schema)["$defs"]["condition"]["enum"] == list(config.CONDITIONS)


def _with_condition(schema: str, name: str):
    """A document of ``schema`` that names the condition ``name``, built from a committed file."""
    from benchmark.protocol.spec import load_yaml

    if schema == "spec.schema.json":
        raw = load_yaml(ROOT / "benchmark" / "specs" / "mini.yaml", schema)
        return raw | {"conditions": [name]}, "conditions/0"
    if schema == "submission.schema.json":
        raw = load_yaml(ROOT / "submissions" / "snapkv" / "submission.yaml", schema)
        return raw | {"headline_condition": name}, "headline_condition"
    path = next((ROOT / "leaderboard" / "results").rglob("*.json"))
    raw = json.loads(path.read_text())
    return raw | {"conditions": [name]}, "conditions/0"


@pytest.mark.parametrize("schema", CONDITION_SCHEMAS)
def test_every_condition_of_config_passes_and_another_name_fails_naming_file_and_field(schema):
    for name in config.CONDITION_NAMES:
        validate_against(schema, _with_condition(schema, name)[0], "doc.yaml")
    bad, field = _with_condition(schema, "adapter_only")
    with pytest.raises(SpecError) as err:
        validate_against(schema, bad, "doc.yaml")
    assert f"doc.yaml: field '{field}': 'adapter_only' is not one of" in str(err.value)


def test_objectives_are_the_recipes_that_train():
    assert config.RECIPES == ("none",) + config.OBJECTIVES


def test_condition_names_and_help_are_one_list():
    assert (config.BASE, config.ADAPTER_ALL, config.BASE_KV_ADAPTER_DECODE,
            config.BASE_SCORE_ADAPTER_PREFILL) == config.CONDITION_NAMES == tuple(config.CONDITION_HELP)
    assert [c for c in config.CONDITION_NAMES if not config.uses_adapter(c)] == [config.BASE]


def test_only_base_runs_without_an_adapter():
    from benchmark.protocol.submission import load_submission

    names = list(reversed(config.CONDITION_NAMES))
    assert config.active_conditions(names, has_adapter=False) == [config.BASE]
    assert config.active_conditions(names, has_adapter=True) == names
    assert load_submission(ROOT / "submissions" / "snapkv").active_conditions(names) == names
    assert load_submission(ROOT / "submissions" / "snapkv-noadapter").active_conditions(names) == [config.BASE]


def test_train_for_lays_a_models_overrides_over_train():
    from benchmark.protocol.submission import load_submission

    adapter = {"train": {"lr": 1e-3, "epochs": 6}, "per_model": {"big": {"lr": 5e-4}, "none": None}}
    assert config.train_for(adapter, "big") == {"lr": 5e-4, "epochs": 6}
    assert config.train_for(adapter, "other") == config.train_for(adapter, "none") == {"lr": 1e-3, "epochs": 6}
    assert list(config.train_blocks(adapter)) == ["adapter/train", "adapter/per_model/big", "adapter/per_model/none"]
    sub = load_submission(ROOT / "submissions" / "snapkv")
    for model_id in sub.raw["adapter"]["per_model"]:
        merged = config.train_for(sub.raw["adapter"], model_id)
        assert all(getattr(sub.for_model(model_id).recipe.train, k) == v for k, v in merged.items())


def test_paper_datasets_are_the_paper_specs():
    from benchmark.protocol.spec import load_spec

    assert config.PAPER_DATASETS == tuple(d.id for d in load_spec("paper").datasets)


def test_cli_choices_are_the_constants():
    from benchmark.cli import build_parser

    def choices(command: str, dest: str):
        sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
        return next(a for a in sub._actions if a.dest == dest).choices

    assert tuple(choices("evaluate", "split")) == config.SPLITS
    assert tuple(choices("evaluate", "executor")) == config.EXECUTORS
    assert tuple(choices("evaluate", "dtype")) == config.RUN_DTYPES
    assert tuple(choices("prepare-data", "name")) == config.PAPER_DATASETS


def test_set_offline_defaults_the_hub_variables(monkeypatch):
    from benchmark.paths import OFFLINE_ENV, set_offline

    for var in OFFLINE_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the user's value wins
    set_offline(hub=True)
    assert [os.environ.get(v) for v in OFFLINE_ENV] == ["0", None, None]
    set_offline()
    assert [os.environ.get(v) for v in OFFLINE_ENV] == ["0", "1", "1"]


# ---------------------------------------------------------------- EvalRequest: one object from the CLI down


#: evaluate's flags that are not options of the run itself (how or whether it runs)
CLI_ONLY = {"func", "command", "executor", "ray_address", "dry_run", "preset"}
#: flag dest -> EvalRequest field, where the names differ
RENAMED = {"model": "model_id", "dataset": "datasets", "rehearse": "tier"}  # --rehearse picks the rehearsal tier


def _evaluate_dests() -> set[str]:
    import argparse

    from benchmark.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest for a in sub.choices["evaluate"]._actions if a.dest != "help"}


def test_every_evaluate_flag_is_a_request_field():
    import dataclasses

    fields = {f.name for f in dataclasses.fields(config.EvalRequest)}
    missing = {RENAMED.get(d, d) for d in _evaluate_dests() - CLI_ONLY} - fields
    assert not missing, f"evaluate flags without an EvalRequest field: {missing}"


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_cli_passes_one_request(executor, monkeypatch, capsys):
    from benchmark.integrations import executors
    from benchmark.protocol import runner

    seen = []
    target, name = (executors, "run_on_ray") if executor == "ray" else (runner, "evaluate")
    monkeypatch.setattr(target, name, lambda request, **kw: seen.append((request, kw)) or [])
    argv = ["evaluate", str(ROOT / "submissions" / "snapkv"), "--docs", "2", "--questions", "3", "--rhos", "0", "0.5",
            "--conditions", "base", "--split", "dev", "--device", "cpu", "--dtype", "bfloat16", "--batch-size", "7",
            "--out", "somewhere", "--worker-timeout", "30", "--executor", executor]
    if executor == "local":
        argv += ["--shard", "1/3"]
    from benchmark.cli import main

    assert main(argv) == 0
    [(req, kw)] = seen
    assert req == config.EvalRequest(
        submission=str(ROOT / "submissions" / "snapkv"), docs=2, questions=3, rhos=[0.0, 0.5], conditions=["base"],
        split="dev", device="cpu", dtype="bfloat16", batch_size=7, out="somewhere", worker_timeout=30.0,
        shard=(1, 3) if executor == "local" else None)
    from benchmark.protocol.evaluator import LOADERS

    assert kw == {"loaders": LOADERS} | ({"address": None} if executor == "ray" else {})


def test_as_request_lays_options_over_a_request():
    req = config.as_request("submissions/snapkv", rhos=[0.0], progress=False)
    assert req == config.EvalRequest("submissions/snapkv", rhos=[0.0], progress=False)
    assert config.as_request(req, shard=(0, 2)).shard == (0, 2)
    with pytest.raises(TypeError):
        config.as_request("submissions/snapkv", rho=[0.0])  # a misspelt option fails, never silently ignored
