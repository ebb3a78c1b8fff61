"""Attacks on a result file's header, and on the page its strings reach.

Each attack keeps the rest of the file consistent (cells re-aggregated), so the only thing that
can catch it is the check of the field it changes: the submission's sections against its YAML,
the model's name against the spec, the environment and dates against fixed vocabularies,
``kv_bytes`` against the model's KV shape, each document's adapter against the recipe. Then the
same strings go through a real leaderboard regeneration, which must escape every one of them.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from benchmark.board import leaderboard
from benchmark.config import DTYPE_BYTES, KV_SHAPES
from benchmark.protocol.results import aggregate
from benchmark.protocol.runner import result_header
from benchmark.protocol.spec import load_spec
from benchmark.trust.conformance import check_result_file, kept_per_head

INJECTED = "\n\n# HACKED <script>alert(1)</script>"
MODEL_ID = "qwen2.5-0.5b"
ENVIRONMENT = {"lorakv_bench": "0.1.0", "python": "3.11.7", "torch": "2.13.0+cpu", "transformers": "5.2.0",
               "peft": "0.21.2", "kvpress": "0.5.5", "device": "cpu", "torch_threads": 2, "dtype": "float32",
               "sandbox": "bubblewrap"}
YAML = ("name: adapted\nauthors: [Test Author]\ndescription: header attacks\n"
        "compressor: {press: KnormPress}\nadapter: {recipe: qa, lora: {r: 4, alpha: 8}, train: {epochs: 1}}\n")


def write_result(root: Path) -> tuple[Path, Path]:
    """A conformant mini result with a QA adapter (base and base_kv_adapter_decode on every
    question of mini-narrative); returns (path, submissions dir)."""
    from benchmark.protocol.datasets import load_split
    from benchmark.protocol.results import ResultFile, result_path
    from benchmark.protocol.submission import load_submission

    folder = root / "submissions" / "adapted"
    folder.mkdir(parents=True)
    (folder / "submission.yaml").write_text(YAML)
    sub = load_submission(folder)
    spec = load_spec("mini")
    model, ds = spec.model(MODEL_ID), spec.dataset("mini-narrative")
    layers, kv_heads, head_dim = KV_SHAPES[MODEL_ID]
    header = result_header(sub, spec, model, ds, "test", sorted(spec.rhos), list(spec.conditions), dict(ENVIRONMENT))
    path = result_path(root / "leaderboard" / "results", sub.name, "mini", model.id, ds.id)
    rf = ResultFile(path, header)
    prefix = spec.prompt_for(model).answer_prefix
    docs, preds = [], []
    for d_i, doc in enumerate(load_split(ds.test)):
        docs.append({"doc_id": doc.doc_id, "n_prefix_tokens": 12, "n_doc_tokens": 300, "timings": {},
                     "adapter": {"bytes": 4096, "first_loss": 3.0, "final_loss": 1.0 + d_i / 10}})
        for q_i, q in enumerate(doc.questions):
            for rho in sorted(spec.rhos):
                for cond in ("base", "base_kv_adapter_decode"):
                    right = (q_i + d_i + (cond != "base")) % 3 != 0 and rho < 0.9
                    generation = f" {q.answers[0]}\n" if right else " I am not sure\n"
                    prediction = spec.scoring().extract(generation, prefix)
                    s = spec.scoring().score(prediction, q.answers)
                    entries = layers * kv_heads * kept_per_head(12, 300, rho, spec.scoring())
                    preds.append({"doc_id": doc.doc_id, "question_id": q.id, "question": q.question, "rho": rho,
                                  "condition": cond, "generation": generation, "prediction": prediction,
                                  "answers": list(q.answers), "rouge_l": s["rouge_l"],
                                  "exact_match": s["exact_match"], "kv_entries": entries,
                                  "kv_bytes": entries * 2 * head_dim * DTYPE_BYTES["float32"]}
                                 | ({"tags": list(q.tags)} if q.tags else {}))
    rf.data["documents"], rf.data["predictions"] = docs, preds
    rf.save()
    return path, root / "submissions"


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> tuple[Path, Path]:
    return write_result(tmp_path_factory.mktemp("header"))


def tampered(result, tmp_path: Path, change) -> Path:
    """A copy of the result at the same place under ``tmp_path``, changed, its cells re-aggregated."""
    path, subs = result
    data = json.loads(path.read_text())
    change(data)
    data["cells"] = aggregate(data["predictions"], data["documents"])
    copy = tmp_path / "leaderboard" / "results" / Path(*path.parts[-4:])
    copy.parent.mkdir(parents=True)
    copy.write_text(json.dumps(data, indent=1))
    return copy


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def change(data):
        obj = data
        for key in keys[:-1]:
            obj = obj[key]
        obj[keys[-1]] = value
    return change


def _each_prediction(fn):
    def change(data):
        for p in data["predictions"]:
            fn(p)
    return change


def _halve_kv(p):
    p["kv_bytes"] //= 2


def _halve_entries_and_bytes(p):  # as if the model had half its layer-heads: consistent within the file
    p["kv_entries"] //= 2
    p["kv_bytes"] //= 2


def _zero_kv(p):
    p["kv_bytes"] = 0


def _add_hook(data):
    data["submission"]["adapter"]["train"]["hook"] = "hooks:make_pairs"


def _drop_losses(data):
    for d in data["documents"]:
        del d["adapter"]["first_loss"], d["adapter"]["final_loss"]


ATTACKS = {
    "dtype-injection": (_set("environment", "dtype", "float32" + INJECTED), "environment/dtype"),
    "model-name": (_set("model", "name", "Qwen" + INJECTED), "model/name"),
    "gpu-name": (_set("environment", "gpu_name", "H100" + INJECTED), "environment/gpu_name"),
    "gpu-name-on-cpu": (_set("environment", "gpu_name", "NVIDIA H100 80GB HBM3"), "environment/gpu_name"),
    "unknown-environment-field": (_set("environment", "gpu", "H100"), "environment/gpu"),
    "sandbox-free-text": (_set("environment", "sandbox", "trust me"), "environment/sandbox"),
    "batching-free-text": (_set("environment", "batching", "suffix" + INJECTED), "environment/batching"),
    "device": (_set("environment", "device", "tpu" + INJECTED), "environment/device"),
    "version": (_set("environment", "torch", "2.13" + INJECTED), "environment/torch"),
    "threads": (_set("environment", "torch_threads", 0), "environment/torch_threads"),
    **{f"batch-size-{value!r}": (_set("environment", "batch_size", value), "environment/batch_size")
       for value in (0, -3, "64", 2.5, True, None)},
    "missing-dtype": (lambda d: d["environment"].pop("dtype"), "environment/dtype"),
    "other-press": (_set("submission", "compressor", {"press": "SnapKVPress"}), "submission/compressor"),
    "hook-added": (_add_hook, "submission/adapter"),
    "updated-injection": (_set("updated", "2026-11-29" + INJECTED), "updated"),
    "updated-before-created": (_set("updated", "2020-01-01T00:00:00+00:00"), "updated"),
    "free-adapter": (_set("documents", 0, "adapter", "bytes", 0), "documents/0/adapter/bytes"),
    "no-adapter": (_set("documents", 1, "adapter", None), "documents/1/adapter"),
    "no-losses": (_drop_losses, "documents/0/adapter/first_loss"),
    "kv-bytes-halved": (_each_prediction(_halve_kv), "predictions/0/kv_bytes"),
    "kv-bytes-zero": (_each_prediction(_zero_kv), "predictions/0/kv_bytes"),
    "kv-entries-halved": (_each_prediction(_halve_entries_and_bytes), "predictions/0/kv_entries"),
    "model-field-added": (_set("model", "note", "<b>best</b>"), "model/note"),
}


def test_untampered_result_conforms(result):
    path, subs = result
    assert check_result_file(path, submissions_dir=subs) == []


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_header_attack_is_refused_naming_file_and_field(result, tmp_path, attack):
    change, field = ATTACKS[attack]
    path = tampered(result, tmp_path, change)
    problems = check_result_file(path, submissions_dir=result[1])
    hits = [p for p in problems if f"field '{field}'" in p]
    assert hits, problems
    assert all(str(path) in p and "\n" not in p for p in hits)


def test_a_positive_batch_size_conforms(result, tmp_path):
    """The bad ``environment/batch_size`` values above are refused for their value, not the field."""
    path = tampered(result, tmp_path, _set("environment", "batch_size", 64))
    assert check_result_file(path, submissions_dir=result[1]) == []


def test_diverged_adapter_is_listed_not_refused(result, tmp_path):
    """A loss that is not finite is a diverged adapter: the file is conformant, and the leaderboard
    lists it apart instead of ranking it."""
    path = tampered(result, tmp_path, _set("documents", 0, "adapter", "final_loss", float("nan")))
    assert check_result_file(path, submissions_dir=result[1]) == []


def test_optional_plans_are_sha256_digests(result, tmp_path):
    good = tampered(result, tmp_path / "good", _set("documents", 0, "plans", {"rho=0.5": "ab" * 32}))
    assert check_result_file(good, submissions_dir=result[1]) == []
    bad = tampered(result, tmp_path / "bad", _set("documents", 0, "plans", {"rho=0.5": "not a digest"}))
    (problem,) = check_result_file(bad, submissions_dir=result[1])
    assert "documents/0/plans" in problem


# ---------------------------------------------------------------- the page


def _everything_injected(data):
    """Every string of the header that reaches the page, carrying markup (schema-valid still)."""
    data["environment"]["dtype"] = "float32" + INJECTED
    data["environment"]["gpu_name"] = "H100 | extra cell" + INJECTED
    data["model"]["name"] = "Qwen" + INJECTED
    data["submission"]["compressor"] = {"press": "KnormPress", "kwargs": {"note": "`x` |" + INJECTED}}
    data["submission"]["adapter"]["recipe"] = "qa |" + INJECTED
    data["spec_version"] = "mini" + INJECTED
    data["updated"] = "2026|11" + INJECTED
    old, new = data["documents"][0]["doc_id"], "doc" + INJECTED
    data["documents"][0]["doc_id"] = new  # a divergence reason names the document
    for p in data["predictions"]:
        if p["doc_id"] == old:
            p["doc_id"] = new


def _cells(row: str) -> int:
    return len(re.split(r"(?<!\\)\|", row.strip().strip("|")))


def test_every_string_on_the_page_is_escaped(result, tmp_path):
    path = tampered(result, tmp_path / "in", _everything_injected)
    # a second submission, whose name and dataset also carry markup, beside the first
    data = json.loads(path.read_text())
    data["submission"]["name"] = "x|y*_z"
    other = tmp_path / "in" / "leaderboard" / "results" / "x|y*_z" / "mini" / MODEL_ID / "mini-narrative.json"
    other.parent.mkdir(parents=True)
    other.write_text(json.dumps(data))
    data = json.loads(path.read_text())
    data["documents"][0]["adapter"]["final_loss"] = float("nan")  # diverged: listed apart with the reason
    path.write_text(json.dumps(data))
    out = tmp_path / "out"
    md = leaderboard.render(tmp_path / "in" / "leaderboard" / "results", out / "README.md", out / "plots")
    assert "<script>" not in md and "</script>" not in md
    assert [line for line in md.splitlines() if line.startswith("# ")] == ["# lorakv-bench leaderboard"]
    assert not [line for line in md.splitlines() if line.lstrip().startswith(("<", "#", "`")) and "HACKED" in line
                and not line.startswith("## ")]
    lines = md.splitlines()
    tables = 0
    for i, line in enumerate(lines):
        if line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|")):  # a table's header row
            tables += 1
            width = _cells(line)
            j = i + 1
            while j < len(lines) and lines[j].startswith("|"):
                assert _cells(lines[j]) == width, lines[j]
                j += 1
    assert tables >= 4
    assert "x\\|y\\*\\_z" in md and "float32 \\# HACKED &lt;script&gt;" in md
    assert "adapter training diverged" in md
    for svg in (out / "plots").glob("*.svg"):
        assert "<script>" not in svg.read_text()


def test_data_files_hold_the_strings_as_they_are(result, tmp_path):
    """leaderboard.json and leaderboard.csv are data, not a page: a hostile string comes back from
    them exactly as the result file holds it (no Markdown escaping), and the CSV keeps one row per
    entry however many newlines, quotes or separators the strings carry."""
    import csv

    path = tampered(result, tmp_path / "in", _everything_injected)
    data = json.loads(path.read_text())
    data["submission"]["name"] = 'x|y*_z, "q"\n<script>'
    other = tmp_path / "in" / "leaderboard" / "results" / "x-y" / "mini" / MODEL_ID / "mini-narrative.json"
    other.parent.mkdir(parents=True)
    other.write_text(json.dumps(data))
    out = tmp_path / "out"
    md = leaderboard.render(tmp_path / "in" / "leaderboard" / "results", out / "README.md", out / "plots")
    assert "<script>" not in md  # the page still escapes
    rows = json.loads((out / leaderboard.DATA_JSON).read_text(encoding="utf-8"))["rows"]
    assert sorted(r["submission"] for r in rows) == sorted(["adapted", data["submission"]["name"]])
    for r in rows:
        assert r["model_name"] == data["model"]["name"] and r["dtype"] == data["environment"]["dtype"]
        assert r["hardware"] == data["environment"]["gpu_name"] and r["spec_version"] == data["spec_version"]
        assert r["date"] == data["updated"][:10]
    with open(out / leaderboard.DATA_CSV, newline="", encoding="utf-8") as f:
        header, *lines = csv.reader(f)
    assert [dict(zip(header, line)) for line in lines] == [
        {k: "" if v is None else str(v) for k, v in r.items()} for r in rows]


def test_plot_text_with_dollar_signs_renders(result, tmp_path):
    """matplotlib reads $...$ as mathtext; a model id with an unbalanced one must not stop the render."""
    path = tampered(result, tmp_path / "in", _set("model", "id", "m$\\frac{$x"))
    leaderboard.render(path.parents[3], tmp_path / "out" / "README.md", tmp_path / "out" / "plots")
    written = sorted(p.name.split("__")[-1] for p in (tmp_path / "out" / "plots").glob("*.svg"))
    assert written == ["fig2_kv_vs_lora.svg", "fig3_conditions.svg", "memory.svg", "rho.svg"]


@pytest.mark.parametrize("text, shown", [
    ("Q4_1 model", "Q4_1 model"), ("_lead", "\\_lead"), ("a\n\n# b", "a \\# b"), ("<b>&", "&lt;b&gt;&amp;"),
    ("a|b", "a\\|b"), ("`c`", "\\`c\\`"), ("[l](u)", "\\[l\\](u)"), ("*e*", "\\*e\\*"),
    ("back\\slash", "back\\\\slash"),
])
def test_escape_md(text, shown):
    assert leaderboard.escape_md(text) == shown


# ---------------------------------------------------------------- the KV shapes are the models'


def test_every_spec_model_has_a_kv_shape():
    assert {m.id for tier in ("mini", "paper") for m in load_spec(tier).models} <= set(KV_SHAPES)


def _gguf_fields(path: Path, wanted_prefix: str = "") -> dict:
    """The scalar metadata of a GGUF file, read up to its tokenizer section (its header only)."""
    scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

    def read(fmt):
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

    def text():
        return f.read(read("<Q")).decode("utf-8")

    def value(kind):
        if kind == 8:
            return text()
        if kind == 9:
            item, n = read("<I"), read("<Q")
            return [value(item) for _ in range(n)]
        return read(scalar[kind])

    out = {}
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
        read("<I")
        read("<Q")
        for _ in range(read("<Q")):
            key = text()
            if key.startswith("tokenizer."):
                break
            out[key] = value(read("<I"))
    return out


@pytest.mark.parametrize("model_id", ["smollm2-135m", "qwen2.5-0.5b"])
def test_kv_shape_matches_the_gguf_the_spec_pins(model_id):
    import importlib.metadata as md

    model = load_spec("mini").model(model_id)
    first = model.source["wheels"][0]  # a split GGUF: its header is in the first part
    meta = _gguf_fields(Path(md.distribution(first["name"]).locate_file(first["file"])))
    arch = meta["general.architecture"]
    heads = meta[f"{arch}.attention.head_count"]
    head_dim = meta.get(f"{arch}.attention.key_length", meta[f"{arch}.embedding_length"] // heads)
    assert KV_SHAPES[model_id] == (meta[f"{arch}.block_count"], meta[f"{arch}.attention.head_count_kv"], head_dim)


@pytest.mark.parametrize("model_id", ["llama-3.1-8b", "qwen3-4b"])
def test_kv_shape_matches_the_hub_config_where_cached(model_id):
    from huggingface_hub import try_to_load_from_cache

    model = load_spec("paper").model(model_id)
    cfg = try_to_load_from_cache(model.source["repo"], "config.json", revision=model.source["revision"])
    if not isinstance(cfg, str):
        pytest.skip(f"{model.source['repo']} is not in the Hugging Face cache here")
    c = json.loads(Path(cfg).read_text())
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    assert KV_SHAPES[model_id] == (c["num_hidden_layers"], c["num_key_value_heads"], head_dim)
