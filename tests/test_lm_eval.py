"""lm-evaluation-harness integration: the lorakv_* tasks and the ``lorakv`` model give the runner's answers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.lm_eval_tasks import TASK_DIR

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
    from benchmark.runner import DocumentRun
    from benchmark.spec import load_spec
    from benchmark.submission import load_submission
    from benchmark.tiny import tiny_model

    monkeypatch.setenv("LORAKV_CACHE", str(tmp_path))
    spec = load_spec("mini")
    sub = load_submission(write_submission(tmp_path / "submissions"))
    model, tok = tiny_model("llama")
    return DocumentRun.build(model, tok, spec, sub, model_key="tiny-llama@test", progress=False)


def test_task_files_listed(task_manager):
    names = set(task_manager.all_tasks)
    assert {"lorakv", "lorakv_paper", "lorakv_mini_narrative", "lorakv_mini_health", "lorakv_narrativeqa",
            "lorakv_longhealth"} <= names


def test_rows_flatten_the_package_data(task_manager):
    from benchmark.lm_eval_tasks.utils import documents

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

    from benchmark.lm_eval_model import LorakvLM
    from benchmark.lm_eval_tasks.utils import documents

    rho, limit = 0.9, 12  # the 10 questions of the first document, 2 of the second
    lm = LorakvLM.from_run(tiny_run, rho=rho, condition=condition)
    out = lm_eval.simple_evaluate(model=lm, tasks=[TASK], task_manager=task_manager, limit=limit, log_samples=True,
                                  bootstrap_iters=0)
    metrics = out["results"][TASK]
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    assert len(samples) == limit

    # The runner's own answers for the same documents / questions / rho / condition.
    docs = documents("mini", "mini-narrative")
    expected = {}
    for doc, n in ((docs[0], 10), (docs[1], 2)):
        _, preds = tiny_run.evaluate(doc, [rho], [condition], doc.questions[:n])
        expected |= {p["question_id"]: p for p in preds}
    assert [s["doc"]["question_id"] for s in samples] == list(expected)
    for s in samples:
        ref = expected[s["doc"]["question_id"]]
        assert s["resps"][0][0] == ref["generation"]  # the raw generation ...
        assert s["filtered_resps"][0] == ref["prediction"]  # ... and the extracted answer the metrics read
        # lm-eval's 0-1 scale (the runner's result files are in points)
        assert s["rougeL"] == pytest.approx(ref["rouge_l"] / 100) and s["exact_match"] == pytest.approx(ref["exact_match"] / 100)
    assert metrics["rougeL,extract"] == pytest.approx(sum(p["rouge_l"] for p in expected.values()) / limit / 100)
    assert metrics["exact_match,extract"] == pytest.approx(sum(p["exact_match"] for p in expected.values()) / limit / 100)
    assert 0.0 <= metrics["rougeL,extract"] <= 1.0
    assert len(lm.records) == 2  # one DocumentRun.evaluate per document

    # Other lm-eval models get the spec's prompt as text: the runner's plain-text rendering.
    from benchmark.models import build_template

    t = build_template(type("NoChat", (), {"chat_template": None})(), tiny_run.spec.prompt)
    row = samples[0]["doc"]
    assert samples[0]["arguments"][0][0] == t.prefix + row["document"] + t.middle + row["question"] + t.tail


def test_group_runs_both_mini_tasks(tiny_run, task_manager):
    import lm_eval

    from benchmark.lm_eval_model import LorakvLM

    lm = LorakvLM.from_run(tiny_run, rho=0.5, condition="base")
    out = lm_eval.simple_evaluate(model=lm, tasks=["lorakv"], task_manager=task_manager, limit=2, bootstrap_iters=0)
    assert {"lorakv_mini_narrative", "lorakv_mini_health"} <= set(out["results"])
    assert "rougeL,extract" in out["groups"]["lorakv"] and "exact_match,extract" in out["groups"]["lorakv"]
    assert sorted(p["doc_id"] for p in lm.predictions) == ["health-test-00"] * 2 + ["narr-test-00"] * 2


def test_only_generation(tiny_run):
    from benchmark.lm_eval_model import LorakvLM

    lm = LorakvLM.from_run(tiny_run, rho=0.5, condition="adapter_all")
    with pytest.raises(NotImplementedError, match="generate_until only"):
        lm.loglikelihood([])
    with pytest.raises(NotImplementedError, match="generate_until only"):
        lm.loglikelihood_rolling([])
    with pytest.raises(ValueError, match="unknown condition"):
        LorakvLM.from_run(tiny_run, rho=0.5, condition="nope")


def test_batch_size_and_include_path():
    from benchmark.lm_eval_model import _decode_batch_size, _with_task_dir

    assert _decode_batch_size(None, 1) is None  # lm-eval's default leaves the runner's batch size alone
    assert _decode_batch_size(None, "8") == 8 and _decode_batch_size(4, "8") == 4 and _decode_batch_size(None, "auto") is None
    args = ["--model", "lorakv", "--tasks", TASK]
    assert _with_task_dir(args) == [*args, "--include_path", str(TASK_DIR)]


@pytest.mark.slow
def test_console_script_on_smollm2(tmp_path):
    """``lorakv-lm-eval`` end to end on the real mini model (provisioned into $LORAKV_CACHE on first use)."""
    sub = REPO / "submissions" / "snapkv"
    if not (sub / "submission.yaml").exists():
        sub = write_submission(tmp_path / "submissions", "snapkv")
    script = Path(sys.executable).with_name("lorakv-lm-eval")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "benchmark.lm_eval_model"]
    cmd += ["--model", "lorakv", "--model_args", f"submission={sub},rho=0.9,condition=base_kv_adapter_decode,device=cpu,model=smollm2-135m",
            "--tasks", TASK, "--limit", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"\|\s*rougeL\s*\|", proc.stdout), proc.stdout[-3000:]


def test_every_task_generates_as_its_spec_says():
    """A non-lorakv model (``lm_eval --model hf``) decodes with the task's generation_kwargs: they are
    the tier spec's generation (its max_new_tokens and stop strings), for every shipped task."""
    import yaml

    from benchmark.spec import load_spec

    tasks = sorted(Path(TASK_DIR).glob("lorakv_*.yaml"))
    assert len(tasks) == 4
    for path in tasks:
        task = yaml.safe_load(path.read_text())
        gen = load_spec(task["dataset_kwargs"]["lorakv_tier"]).generation
        kwargs = task["generation_kwargs"]
        assert (kwargs["max_gen_toks"], kwargs["until"], kwargs["do_sample"]) == (
            gen.max_new_tokens, list(gen.stop), False), path.name
