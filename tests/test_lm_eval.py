"""lm-evaluation-harness integration: the lorakv_* tasks and the ``lorakv`` model give the runner's answers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.integrations.lm_eval_tasks import TASK_DIR

REPO = Path(__file__).resolve().parents[1]
TASK = "lorakv_mini_narrative"
SUBMISSION = """\
name: {name}
authors: [lorakv-bench tests]
description: SnapKV on the document, tiny QA LoRA adapter.
compressor: {{press: SnapKVPress, kwargs: {{window_size: 8}}}}
adapter:
  recipe: qa
  lora: {{r: 4, alpha: 8}}
  train: {{lr: 1.0e-3, epochs: 1, batch_size: 8}}
"""


def write_submission(root: Path, name: str = "tiny-snapkv") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "submission.yaml").write_text(SUBMISSION.format(name=name))
    return folder


@pytest.fixture
def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASK_DIR), include_defaults=False)


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    """A DocumentRun on a tiny random Llama with the mini spec and a SnapKV + QA-LoRA submission."""
    from benchmark.protocol.runner import DocumentRun
    from benchmark.protocol.spec import load_spec
    from benchmark.protocol.submission import load_submission
    from benchmark.protocol.tiny import tiny_model

    monkeypatch.setenv("LORAKV_CACHE", str(tmp_path))
    spec = load_spec("mini")
    sub = load_submission(write_submission(tmp_path / "submissions"))
    model, tok = tiny_model("llama")
    return DocumentRun.build(model, tok, spec, sub, model_key="tiny-llama@test", progress=False)


def test_task_files_listed(task_manager):
    names = set(task_manager.all_tasks)
    assert {"lorakv", "lorakv_paper", "lorakv_mini_narrative", "lorakv_mini_health", "lorakv_narrativeqa",
            "lorakv_longhealth", "lorakv_paper_rehearsal", "lorakv_rehearsal_narrativeqa",
            "lorakv_rehearsal_longhealth"} <= names


def test_rows_flatten_the_package_data(task_manager):
    from benchmark.integrations.lm_eval_tasks.utils import documents

    task = task_manager.load(["lorakv_mini_health"])["tasks"]["lorakv_mini_health"]
    rows = list(task.test_docs())
    docs = documents("mini", "mini-health")
    assert len(rows) == sum(len(d.questions) for d in docs)
    first = rows[0]
    assert (first["doc_id"], first["question_id"]) == (docs[0].doc_id, docs[0].questions[0].id)
    assert first["document"] == docs[0].text and first["answers"] == list(docs[0].questions[0].answers)
    assert first["answer_prefix"] == "Answer:"


def test_paper_task_without_prepared_data_says_what_to_run(task_manager, tmp_path, monkeypatch):
    monkeypatch.setenv("LORAKV_CACHE", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"lorakv-bench prepare-data narrativeqa"):
        task_manager.load(["lorakv_narrativeqa"])


@pytest.mark.parametrize("condition", ["base_kv_adapter_decode", "base"])
def test_simple_evaluate_equals_document_run(tiny_run, task_manager, condition):
    import lm_eval

    from benchmark.integrations.lm_eval_model import LorakvLM
    from benchmark.integrations.lm_eval_tasks.utils import documents


    docs = documents("mini", "mini-narrative")
    rho, limit = 0.9, len(docs[0].questions) + 2  # the questions of the first document, 2 of the second
    lm = LorakvLM.from_run(tiny_run, rho=rho, condition=condition)
    out = lm_eval.simple_evaluate(model=lm, tasks=[TASK], task_manager=task_manager, limit=limit, log_samples=True,
                                  bootstrap_iters=0)
    metrics = out["results"][TASK]
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    assert len(samples) == limit

    # The runner's own answers for the same documents / questions / rho / condition.
    expected = {}
    for doc, n in ((docs[0], len(docs[0].questions)), (docs[1], 2)):
        _, preds = tiny_run.evaluate(doc, [rho], [condition], doc.questions[:n])
        expected |= {p["question_id"]: p for p in preds}
    assert [s["doc"]["question_id"] for s in samples] == list(expected)
    for s in samples:
        ref = expected[s["doc"]["question_id"]]
        assert s["resps"][0][0] == ref["generation"]  # the raw generation ...
        assert s["filtered_resps"][0] == ref["prediction"]  # ... and the extracted answer the metrics read
        # lm-eval's 0-1 scale (the runner's result files are in points)
        assert (s["rougeL"] == pytest.approx(ref["rouge_l"] / 100)
                and s["exact_match"] == pytest.approx(ref["exact_match"] / 100))
    assert metrics["rougeL,extract"] == pytest.approx(sum(p["rouge_l"] for p in expected.values()) / limit / 100)
    assert metrics["exact_match,extract"] == pytest.approx(
        sum(p["exact_match"] for p in expected.values()) / limit / 100)
    assert 0.0 <= metrics["rougeL,extract"] <= 1.0
    assert len(lm.records) == 2  # one DocumentRun.evaluate per document

    # Other lm-eval models get the spec's prompt as text: the runner's plain-text rendering.
    from benchmark.protocol.models import build_template

    t = build_template(type("NoChat", (), {"chat_template": None})(), tiny_run.spec.prompt)
    row = samples[0]["doc"]
    assert samples[0]["arguments"][0][0] == t.prefix + row["document"] + t.middle + row["question"] + t.tail


def test_group_runs_both_mini_tasks(tiny_run, task_manager):
    import lm_eval

    from benchmark.integrations.lm_eval_model import LorakvLM

    lm = LorakvLM.from_run(tiny_run, rho=0.5, condition="base")
    out = lm_eval.simple_evaluate(model=lm, tasks=["lorakv"], task_manager=task_manager, limit=2, bootstrap_iters=0)
    assert {"lorakv_mini_narrative", "lorakv_mini_health"} <= set(out["results"])
    assert "rougeL,extract" in out["groups"]["lorakv"] and "exact_match,extract" in out["groups"]["lorakv"]
    assert sorted(p["doc_id"] for p in lm.predictions) == ["health-test-00"] * 2 + ["narr-test-00"] * 2


def test_only_generation(tiny_run):
    from benchmark.integrations.lm_eval_model import LorakvLM

    lm = LorakvLM.from_run(tiny_run, rho=0.5, condition="adapter_all")
    with pytest.raises(NotImplementedError, match="generate_until only"):
        lm.loglikelihood([])
    with pytest.raises(NotImplementedError, match="generate_until only"):
        lm.loglikelihood_rolling([])
    with pytest.raises(ValueError, match="unknown condition"):
        LorakvLM.from_run(tiny_run, rho=0.5, condition="nope")


def test_batch_size_and_include_path():
    from benchmark.integrations.lm_eval_model import _decode_batch_size, _with_task_dir

    assert _decode_batch_size(None, 1) is None  # lm-eval's default leaves the runner's batch size alone
    assert (_decode_batch_size(None, "8") == 8 and _decode_batch_size(4, "8") == 4
            and _decode_batch_size(None, "auto") is None)
    args = ["--model", "lorakv", "--tasks", TASK]
    assert _with_task_dir(args) == [*args, "--include_path", str(TASK_DIR)]


@pytest.mark.slow
def test_console_script_on_smollm2(tmp_path):
    """``lorakv-lm-eval`` end to end on the real mini model (provisioned into $LORAKV_CACHE on first use)."""
    sub = REPO / "submissions" / "snapkv"
    if not (sub / "submission.yaml").exists():
        sub = write_submission(tmp_path / "submissions", "snapkv")
    script = Path(sys.executable).with_name("lorakv-lm-eval")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "benchmark.integrations.lm_eval_model"]
    cmd += ["--model", "lorakv", "--model_args",
            f"submission={sub},rho=0.9,condition=base_kv_adapter_decode,device=cpu,model=smollm2-135m",
            "--tasks", TASK, "--limit", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"\|\s*rougeL\s*\|", proc.stdout), proc.stdout[-3000:]


def test_every_task_generates_as_its_spec_says():
    """A non-lorakv model (``lm_eval --model hf``) decodes with the task's generation_kwargs: they are
    the tier spec's generation (its max_new_tokens and stop strings), for every shipped task."""
    import yaml

    from benchmark.protocol.spec import load_spec

    tasks = sorted(Path(TASK_DIR).glob("lorakv_*.yaml"))
    assert len(tasks) == 6
    for path in tasks:
        task = yaml.safe_load(path.read_text())
        gen = load_spec(task["dataset_kwargs"]["lorakv_tier"]).generation
        kwargs = task["generation_kwargs"]
        assert (kwargs["max_gen_toks"], kwargs["until"], kwargs["do_sample"]) == (
            gen.max_new_tokens, list(gen.stop), False), path.name


# ---------------------------------------------------------------------- sweeps (lorakv-lm-eval)


@pytest.mark.parametrize("model_args, says", [
    ("submission={sub},condition=base", "--model_args: rho is missing"),
    ("submission={sub},rho=0.5", "--model_args: condition is missing"),
    ("submission={sub},rho=0.5|2,condition=base", "--model_args rho [2.0]: each rho once, in [0, 1]"),
    ("submission={sub},rho=0.5|x,condition=base", "--model_args rho: not numbers"),
    ("submission={sub},rho=0.5,condition=base|nope", "--model_args condition nope: each condition once, of base,"),
    ("submission={sub},rho=0.5,condition=base,colour=red", "--model_args colour: not a lorakv model_arg"),
    ("submission={nosub},rho=0.5,condition=base", "no-adapter"),
    ("submission={nosub},rho=0.5,condition=base|adapter_all",
     "--model_args condition adapter_all: {nosub}/submission.yaml has recipe: none"),
    ("submission={sub},rho=0.5,condition=base,model=nope", "--model nope: neither a model id of spec"),
])
def test_sweep_argument_errors_come_first(model_args, says, tmp_path, capsys):
    """Exit code 2 comes only from parse_sweep's checks, which run before lm-eval makes a model:
    no model is loaded for a bad argument."""
    from benchmark.integrations.lm_eval_model import cli_main

    sub = write_submission(tmp_path / "submissions")
    nosub = tmp_path / "submissions" / "no-adapter"
    nosub.mkdir()
    (nosub / "submission.yaml").write_text(SUBMISSION.format(name="no-adapter").split("adapter:")[0]
                                          + "adapter: {recipe: none}\n")
    args = model_args.format(sub=sub, nosub=nosub)
    if says == "no-adapter":  # a valid call: the checks pass it
        from benchmark.integrations.lm_eval_model import parse_sweep

        assert parse_sweep(["--model", "lorakv", "--model_args", args]).cells() == [(0.5, "base")]
        return
    assert cli_main(["--model", "lorakv", "--model_args", args, "--tasks", TASK]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and says.format(nosub=nosub) in err, err


def test_sweep_cells_paths_and_device(tmp_path):
    from benchmark.integrations.lm_eval_model import parse_sweep

    sub = write_submission(tmp_path / "submissions")
    sweep = parse_sweep(["--model", "lorakv", "-a", f"submission={sub},rho=0.5|0.9", "condition=base|adapter_all",
                         "--tasks", TASK, "--output_path", str(tmp_path / "out")])
    assert sweep.cells() == [(0.5, "base"), (0.5, "adapter_all"), (0.9, "base"), (0.9, "adapter_all")]
    assert sweep.device == "cpu"  # no CUDA here: the device used, not lm-eval's default cuda:0
    argv = sweep.argv(0.9, "adapter_all")
    assert argv[:2] == ["--tasks", TASK] and argv[argv.index("--device") + 1] == "cpu"
    assert argv[argv.index("--output_path") + 1] == str(tmp_path / "out" / "tiny-snapkv" / "rho-0.9_adapter_all")
    assert json.loads(argv[argv.index("--model_args") + 1]) == {
        "submission": str(sub), "rho": 0.9, "condition": "adapter_all", "device": "cpu", "model": "qwen2.5-0.5b"}
    assert parse_sweep(["--model", "hf", "--tasks", TASK]) is None  # other models: lm-eval's arguments as given


@pytest.mark.slow  # lm-eval indexes its task folders once per cell: about 40 s on 2 cores
def test_sweep_end_to_end_on_a_model_folder(tmp_path, monkeypatch):
    """One call, 2 rhos x 2 conditions, on a tiny model folder (``model=PATH``): four lm-eval result
    files named by submission, rho and condition, the model loaded once, the device recorded."""
    import benchmark.integrations.lm_eval_model as M
    from benchmark.protocol.tiny import tiny_model

    model, tok = tiny_model("llama")
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    sub = write_submission(tmp_path / "submissions")
    opened = []
    real_open = M._open
    monkeypatch.setattr(M, "_open", lambda *a: opened.append(a) or real_open(*a))
    out = tmp_path / "out"
    assert M.cli_main(["--model", "lorakv", "--model_args",
                       f"submission={sub},rho=0.5|0.9,condition=base|adapter_all,model={folder}",
                       "--tasks", TASK, "--limit", "2", "--output_path", str(out)]) == 0
    assert len(opened) == 1
    files = sorted(out.rglob("results_*.json"))
    assert [f.relative_to(out).parts[:2] for f in files] == [
        ("tiny-snapkv", "rho-0.5_adapter_all"), ("tiny-snapkv", "rho-0.5_base"),
        ("tiny-snapkv", "rho-0.9_adapter_all"), ("tiny-snapkv", "rho-0.9_base")]
    for f in files:
        config = json.loads(f.read_text())["config"]
        rho, cond = f.relative_to(out).parts[1].removeprefix("rho-").split("_", 1)
        assert (config["lorakv"]["rho"], config["lorakv"]["condition"]) == (float(rho), cond)
        assert config["device"] == "cpu" and config["lorakv"]["device"] == "cpu"
        assert config["lorakv"]["model_key"].startswith("tiny-llama@")
    assert M.LorakvLM.shared_runs is None  # the sweep's runs are closed and forgotten


def test_plain_lm_eval_discovers_no_entry_points():
    """Why ``lorakv-lm-eval`` exists: lm-eval finds no model a package declares (it reads no
    entry-point group). When a release starts to, declare ``lorakv`` there and say so in docs/usage.md."""
    import lm_eval

    root = Path(lm_eval.__file__).parent
    calls = [p.relative_to(root).as_posix() for p in root.rglob("*.py")
             if "tasks" not in p.relative_to(root).parts and "entry_points(" in p.read_text(encoding="utf-8")]
    assert calls == [], f"lm-eval now reads entry points ({calls}): register the lorakv model through one"
    code = ("from lm_eval.api.registry import get_model\ntry:\n    get_model('lorakv')\n"
            "except ValueError:\n    print('absent')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "absent", proc.stderr[-2000:]


@pytest.mark.slow
def test_the_docs_hf_excerpt_is_what_the_command_prints(tmp_path):
    """docs/usage.md's ``lm_eval --model hf`` excerpt: the same command, run on the converted mini model,
    prints the excerpt's rougeL and exact_match rows (value and stderr)."""
    from benchmark.protocol.models import provision
    from benchmark.protocol.spec import load_spec

    doc = (REPO / "docs" / "usage.md").read_text()
    rows = re.findall(r"^# (\|.*\|(?:exact_match|rougeL)\s*\|.*)$", doc, flags=re.M)
    assert len(rows) == 2, "docs/usage.md: the lm_eval --model hf excerpt's two metric rows"
    spec = load_spec("mini")
    folder = provision(spec.model("smollm2-135m"))
    script = Path(sys.executable).with_name("lm_eval")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "lm_eval"]
    cmd += ["--model", "hf", "--model_args", f"pretrained={folder},dtype=float32", "--device", "cpu",
            "--apply_chat_template", "--include_path", str(TASK_DIR), "--tasks", "lorakv_mini_narrative",
            "--limit", "4"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def cells(row: str) -> tuple[str, ...]:  # metric, value, stderr: the columns that carry the claim
        parts = [c.strip() for c in row.strip().strip("|").split("|")]
        return parts[4], parts[6], parts[8]

    printed = [cells(line) for line in proc.stdout.splitlines() if re.search(r"\|(exact_match|rougeL)\s*\|", line)]
    assert printed == [cells(r) for r in rows], proc.stdout[-3000:]
