"""``lorakv-bench export-adapter``: one document's adapter of a result, as a peft folder to share.

The harness caches every trained adapter in peft's format (:class:`benchmark.protocol.adapters.AdapterStore`);
a result file records each document's adapter key. Exporting copies that entry into a folder that
``PeftModel.from_pretrained(base_model, folder)`` loads, with ``base_model_name_or_path`` naming the
model it was trained on (the spec model's Hub id; a model of one's own: its folder or Hub id) and
``lorakv.json`` beside it naming the document, the recipe, the submission and the spec.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

from ..config import CONDITIONS
from ..paths import stable_hash
from ..protocol.adapters import AdapterStore
from ..protocol.results import load_result
from ..protocol.spec import SpecError, load_spec, spec_name

METADATA = "lorakv.json"


def export_adapter(result: str | Path, doc_id: str, out: str | Path, model_path: str | Path | None = None) -> Path:
    """Write the adapter of document ``doc_id`` of ``result`` to the peft folder ``out``; returns it.

    ``model_path``: the folder of a model of one's own (``evaluate --model PATH``), which its
    result does not record; checked against the result's model id and revision."""
    result, out = Path(result), Path(out)
    data = load_result(result)
    record = _document(result, data, doc_id)
    key = record["adapter"]["key"]
    store = AdapterStore()
    if not store.has(key) or not (store.path(key) / store.CONFIG).exists():
        raise SpecError(f"{result}: the adapter of document {doc_id} (key {key}) is not in the adapter cache "
                        f"{store.root}; train it with: {train_command(data)}")
    base = base_model_name(result, data, model_path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SpecError(f"{out}: exists and is not an empty folder; choose a new OUT")
    entry = store.path(key)
    info = json.loads((entry / "train_info.json").read_text())
    config = json.loads((entry / store.CONFIG).read_text())
    config["base_model_name_or_path"] = base
    out.mkdir(parents=True, exist_ok=True)
    (out / store.CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shutil.copyfile(entry / store.WEIGHTS, out / store.WEIGHTS)
    metadata = {
        "document": {"doc_id": doc_id, "dataset": data["dataset"]},
        "recipe": {"name": data["submission"]["adapter"].get("recipe"), "hash": stable_hash(info["recipe"]),
                   "fingerprint": info["recipe"]},
        "submission": {"name": data["submission"]["name"], "hash": data["submission"]["hash"]},
        "spec_version": data["spec_version"], "spec_hash": data["spec_hash"], "tier": data["tier"],
        "model": data["model"], "base_model_name_or_path": base, "adapter_key": key,
        "training": {k: info.get(k) for k in ("steps", "first_loss", "final_loss", "seconds")},
    }
    (out / METADATA).write_text(json.dumps(metadata, indent=1, sort_keys=True) + "\n")
    return out


def _document(result: Path, data: dict, doc_id: str) -> dict:
    """The result's record of ``doc_id``, which must have an adapter."""
    records = {d["doc_id"]: d for d in data["documents"]}
    if doc_id not in records:
        have = ", ".join(list(records)[:8]) + (" ..." if len(records) > 8 else "")
        raise SpecError(f"{result}: no document '{doc_id}' (have: {have})")
    if records[doc_id]["adapter"] is None:
        adapter_conds = [c for c in data["conditions"] if "adapter" in CONDITIONS[c].values()]
        why = (f"recipe {data['submission']['adapter'].get('recipe', 'none')}" if not adapter_conds
               else f"conditions {', '.join(data['conditions'])}")
        raise SpecError(f"{result}: document {doc_id} has no adapter ({why}); nothing to export")
    return records[doc_id]


def base_model_name(result: Path, data: dict, model_path: str | Path | None) -> str:
    """``base_model_name_or_path``: a spec model's Hub id (its ``upstream`` or Hub repo); a Hub
    model of one's own: its id; a local folder: ``model_path``, which must be that model (its name
    and revision as recorded)."""
    spec = load_spec(spec_name(data))
    model = data["model"]
    if model["id"] in {m.id for m in spec.models}:
        hub = spec.model(model["id"]).hub_id
        if hub is None:
            raise SpecError(f"spec {spec.spec_version}: model '{model['id']}' names no Hub id (upstream)")
        return hub
    if model.get("source") == "hub":
        return model["id"]
    if model_path is None:
        raise SpecError(f"{result}: model '{model['id']}' is a local folder the result does not record; pass its "
                        "folder with --model PATH")
    from ..protocol.models import folder_revision

    folder = Path(model_path).expanduser().resolve()
    if folder.name != model["id"] or not (folder / "config.json").is_file():
        raise SpecError(f"--model {model_path}: not the folder of model '{model['id']}' (a folder of that name "
                        "with config.json)")
    if folder_revision(folder) != model["revision"]:
        raise SpecError(f"--model {model_path}: its revision {folder_revision(folder)} is not the result's "
                        f"{model['revision']}; the weights or config changed since the run")
    return str(folder)


def train_command(data: dict) -> str:
    """The ``evaluate`` that trains the result's adapters again (the same model, data slice, split
    and dtype, so the same cache keys), at one cheap cell, into a result file of its own."""
    model = data["model"]["id"] if data["model"].get("source") != "local" else f"PATH/TO/{data['model']['id']}"
    args = ["lorakv-bench", "evaluate", f"submissions/{data['submission']['name']}", "--tier", data["tier"],
            "--model", model, "--dataset", data["dataset"]["id"]]
    if data["dataset"]["split"] != "test":
        args += ["--split", data["dataset"]["split"]]
    for flag, key in (("--docs", "docs"), ("--questions", "questions")):
        if (data.get("slice") or {}).get(key) is not None:
            args += [flag, str(data["slice"][key])]
    if data["environment"].get("dtype") not in (None, "float32"):
        args += ["--dtype", data["environment"]["dtype"]]
    args += ["--conditions", "adapter_all", "--rhos", "0", "--out", "runs-adapters"]  # a file of its own
    return " ".join(shlex.quote(a) for a in args)
