"""Submission code with bad intent, run the way the benchmark runs it: it cannot read an answer,
change what the harness generates, counts or checks, write where others read, or hold a run.

The harness (model, eviction, accounting, decoding, scoring) runs in the test's process; the
submission's press and hook run in the sandbox (benchmark.trust.worker) and return only data. Each test
is one attack; the probe test shows the spy would find the answer if it ran beside the harness.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from benchmark.paths import PACKAGE_DIR
from benchmark.protocol import runner as R
from benchmark.protocol.evaluator import Loaders
from benchmark.protocol.tiny import tiny_model
from benchmark.trust.worker import WorkerError, bwrap_works, sandbox_args

SECRET = "Zorblax-4417"  # a gold answer that is in no document text and no train_qa pair
CHECKOUT = PACKAGE_DIR.parent
needs_bwrap = pytest.mark.skipif(not bwrap_works(), reason="bubblewrap does not run here (CI installs it)")

SPY = """
    import gc, inspect, json, subprocess, sys
    from pathlib import Path

    # the gold answer reversed: the probe never builds the answer itself, so finding it is a real leak
    REV = {rev!r}
    FILES = {files!r}
    CHECKOUT = {checkout!r}

    def _hit(s):
        return isinstance(s, str) and REV in s[::-1]

    def _search(obj, seen, depth=0):
        if _hit(obj):
            return True
        if depth > 5 or id(obj) in seen or type(obj).__module__ == "torch":
            return False
        seen.add(id(obj))
        if isinstance(obj, dict):
            return any(_search(k, seen, depth + 1) or _search(v, seen, depth + 1) for k, v in list(obj.items()))
        if isinstance(obj, (list, tuple, set, frozenset)):
            return any(_search(x, seen, depth + 1) for x in list(obj))
        if not inspect.ismodule(obj) and isinstance(getattr(obj, "__dict__", None), dict):
            return _search(obj.__dict__, seen, depth + 1)
        return False

    def search(where):
        seen = set()
        stack = any(_search(f.frame.f_locals, seen) for f in inspect.stack()[1:])
        heap = False
        for o in gc.get_objects():
            try:
                if isinstance(o, dict):
                    heap = any(_hit(v) or _hit(k) for k, v in list(o.items()))
                elif isinstance(o, (list, tuple, set)):
                    heap = any(_hit(x) for x in list(o))
            except Exception:
                continue
            if heap:
                break
        disk = []
        for root in FILES:
            paths = [Path(root)] if Path(root).is_file() else list(Path(root).rglob("*")) if Path(root).is_dir() else []
            for p in paths:
                try:
                    if REV in p.read_text(errors="ignore")[::-1]:
                        disk.append(str(p))
                except OSError:
                    continue
        try:  # every gold answer of the mini tier is in git's history
            git = subprocess.run(["git", "-C", CHECKOUT, "show", "HEAD:benchmark/data/mini/mini-narrative.test.jsonl"],
                                 capture_output=True, text=True, timeout=30).stdout
        except Exception:
            git = ""
        report = {{"where": where, "stack": stack, "heap": heap, "disk": disk, "git_bytes": len(git)}}
        print("SPY " + json.dumps(report), file=sys.stderr, flush=True)
        return report
    """

PRESS = """
    from dataclasses import dataclass

    from kvpress import ScorerPress

    from spy import search


    @dataclass
    class SpyPress(ScorerPress):
        def score(self, module, hidden_states, keys, values, attentions, kwargs):
            search("press")
            return -keys.norm(dim=-1)
    """

PLAIN_PRESS = """
    from dataclasses import dataclass

    from kvpress import ScorerPress


    @dataclass
    class SpyPress(ScorerPress):  # the spy's scores without its search: for the attacks that need no probe
        score_depends_on_rho = False

        def score(self, module, hidden_states, keys, values, attentions, kwargs):
            return -keys.norm(dim=-1)
    """

HOOK = """
    from spy import search


    def make_pairs(view):
        search("hook")
        return [{"question": q, "answer": a} for q, a in view.train_qa]
    """

YAML = """
    name: {name}
    authors: [Mallory]
    description: an attack
    compressor: {{press: 'press:SpyPress'}}
    adapter:
      recipe: {recipe}
    """
TRAIN = """  lora: {{r: 2, alpha: 4}}
  train: {{epochs: 1, batch_size: 4{hook}}}
"""

KW = dict(rhos=[0.0, 0.5], conditions=["base", "base_kv_adapter_decode"], progress=False)


@pytest.fixture()
def data(tmp_path, document):
    """A one-document dataset whose first question's gold answer is SECRET."""
    path = tmp_path / "data" / "docs.jsonl"
    path.parent.mkdir()
    row = {"doc_id": "d0", "text": document.text,
           "questions": [{"id": "q-secret", "question": "What is the vault code?", "answers": [SECRET]},
                         {"id": "q-town", "question": "Where is the bakery?", "answers": ["Tollervik"]}],
           "train_qa": [{"question": q, "answer": a} for q, a in document.train_qa]}
    path.write_text(json.dumps(row) + "\n")
    return path


@pytest.fixture()
def tiny(data):
    """Loaders of the tiny model and of the mini spec with ``data`` as its first dataset."""
    from benchmark.protocol.spec import DataFile, load_spec

    spec = load_spec("mini")
    spec = dataclasses.replace(spec, datasets=(dataclasses.replace(spec.datasets[0], test=DataFile(data, None)),))
    model, tok = tiny_model("llama")
    return Loaders(load_spec=lambda tier: spec, load_model=lambda *a: (model, tok))


def submission(tmp_path: Path, name: str, press: str = PLAIN_PRESS, recipe: str = "none", hook: bool = False,
               extra: dict | None = None, data_file: Path | None = None) -> Path:
    folder = tmp_path / "submissions" / name
    folder.mkdir(parents=True)
    files = [str(data_file), str(PACKAGE_DIR / "data"), str(CHECKOUT / "leaderboard"), str(CHECKOUT / ".git"),
             str(CHECKOUT / "tests")]
    yml = textwrap.dedent(YAML.format(name=name, recipe=recipe))
    if recipe != "none":
        yml += TRAIN.format(hook=", hook: 'hooks:make_pairs'" if hook else "")
    sources = {"submission.yaml": yml,
               "spy.py": SPY.format(rev=SECRET[::-1], files=files, checkout=str(CHECKOUT)), "press.py": press,
               "hooks.py": HOOK} | (extra or {})
    for file, src in sources.items():
        (folder / file).write_text(textwrap.dedent(src).lstrip())
    return folder


def _spy_reports(err: str) -> list[dict]:
    return [json.loads(line[4:]) for line in err.splitlines() if line.startswith("SPY ")]


def test_the_probe_finds_the_answer_beside_the_harness(tmp_path, data, monkeypatch):
    """The spy works: run in the harness's process, next to the gold answer and the checkout, it
    finds the answer on the stack, on disk and in git's history."""
    folder = submission(tmp_path, "probe", data_file=data)
    monkeypatch.syspath_prepend(str(folder))
    import spy

    gold = [SECRET]  # noqa: F841 - what a harness frame holds while it scores
    report = spy.search("probe")
    assert report["stack"] and report["disk"], report
    if (CHECKOUT / ".git").exists():
        assert report["git_bytes"] > 0, report


def test_the_press_and_the_hook_find_no_answer(tmp_path, data, tiny, capfd):
    """In the sandbox, the press and the hook run (their reports come back on stderr) and find the
    answer nowhere: not in their process, not on disk, not in git. The harness scored the secret
    question from data the sandbox never saw."""
    folder = submission(tmp_path, "spy", press=PRESS, recipe="qa", hook=True, data_file=data)
    [path] = R.evaluate(folder, out=tmp_path / "runs", loaders=tiny, **KW)
    reports = _spy_reports(capfd.readouterr().err)
    assert {r["where"] for r in reports} == {"press", "hook"}, reports
    assert not any(r["stack"] or r["heap"] for r in reports), reports
    result = json.loads(path.read_text())
    assert result["environment"]["sandbox"] in ("bubblewrap", "none")
    if result["environment"]["sandbox"] == "bubblewrap":
        assert not any(r["disk"] or r["git_bytes"] for r in reports), reports
    secret = [p for p in result["predictions"] if p["question_id"] == "q-secret"]
    assert secret and all(p["answers"] == [SECRET] and "rouge_l" in p for p in secret)
    assert all(len(d) == 64 for doc in result["documents"] for d in doc["plans"].values())


PATCHER = """
    import benchmark.protocol.compression, benchmark.protocol.runner, transformers

    # Import-time code of a press that would forge a result from inside the harness's process:
    # every answer replaced, nothing evicted, the accounting shrunk.
    benchmark.protocol.runner.DocumentRun._answer = lambda self, *a, **k: ([], {})
    transformers.PreTrainedTokenizerBase.decode = lambda self, *a, **k: "HACKED"
    benchmark.protocol.compression.evict_planned = lambda kv, keep, span, n_keep=None: kv
    benchmark.protocol.compression.kv_entries = lambda kv: 1
    benchmark.protocol.compression.kv_bytes = lambda kv: 1
    """


HONEST_YAML = """
    name: honest
    authors: [Alice]
    description: the spy's scores, from kvpress (-key norm), with no code of its own
    compressor: {press: KnormPress}
    adapter:
      recipe: none
    """


def test_patching_the_harness_from_submission_code_changes_nothing(tmp_path, data, tiny):
    """A press whose import-time code patches the runner, the tokenizer, eviction and accounting:
    the patches land in the sandbox, so every generation, count and plan equals the honest press's
    (kvpress's KnormPress, which scores as the spy's press does, planned in the harness)."""
    honest = tmp_path / "submissions" / "honest"
    honest.mkdir(parents=True)
    (honest / "submission.yaml").write_text(textwrap.dedent(HONEST_YAML).lstrip())
    forger = submission(tmp_path, "forger", data_file=data, press="import patcher\n" + textwrap.dedent(PLAIN_PRESS),
                        extra={"patcher.py": PATCHER})
    runs = []
    for folder in (honest, forger):
        [path] = R.evaluate(folder, out=tmp_path / "runs", loaders=tiny, **KW)
        runs.append(json.loads(path.read_text()))
    strip = [[(p["question_id"], p["rho"], p["condition"], p["generation"], p["kv_entries"], p["kv_bytes"])
              for p in r["predictions"]] for r in runs]
    assert strip[0] == strip[1] and strip[0]
    assert not any("HACKED" in p["generation"] for p in runs[1]["predictions"])
    assert runs[0]["documents"][0]["plans"] == runs[1]["documents"][0]["plans"] and runs[0]["documents"][0]["plans"]
    # and evicting happened: rho=0.5 keeps fewer entries than rho=0
    kv = {p["rho"]: p["kv_entries"] for p in runs[1]["predictions"]}
    assert kv[0.5] < kv[0.0]


NO_EVICTION = """
    import torch
    import benchmark.protocol.plan

    # keep every entry, whatever the budget says
    benchmark.protocol.plan.plan_from_scores = lambda scores, n_doc, rho, budget: torch.ones(
        len(scores.for_rho(rho)), scores.for_rho(rho)[0].shape[0], n_doc, dtype=torch.bool)
    """


def test_a_plan_that_keeps_more_than_the_budget_stops_the_run(tmp_path, data, tiny, capsys):
    from benchmark.cli import main

    folder = submission(tmp_path, "keepall", data_file=data, press="import keepall\n" + textwrap.dedent(PLAIN_PRESS),
                        extra={"keepall.py": NO_EVICTION})
    rc = main(["evaluate", str(folder), "--out", str(tmp_path / "runs"), "--rhos", "0", "0.5", "--conditions", "base"],
              loaders=tiny)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(err) == 1 and "budget is exactly" in err[0], err


CANARY = """
    from pathlib import Path

    import benchmark

    # try to leave a file in the harness's package and append to its checker
    pkg = Path(benchmark.__file__).parent
    for target in (pkg / "_sandbox_canary.py", {cache!r} + "/_sandbox_canary", {model!r} + "/_sandbox_canary"):
        try:
            Path(target).write_text("written from submission code")
        except OSError:
            pass
    try:
        with open(pkg / "trust" / "verify.py", "a"):
            Path({cache!r} + "/_verify_appendable").write_text("")
    except OSError:
        pass
    """


@needs_bwrap
def test_submission_code_cannot_write_the_package_the_cache_or_the_model(tmp_path, data, tiny):
    """validate and evaluate run submission code with the package, the shared cache and the model
    read-only or absent: a checker rewritten by submission code during CI's tests would let a forged
    file pass verify.
    Both kinds of sandboxed process run the canary: validate's conformance child and the
    SubmissionProcess (evaluate's; validate asks the same one for its plans)."""
    from benchmark.paths import cache_dir
    from benchmark.trust.conformance import VALIDATE_TIMEOUT_S, _check_in_sandbox

    model_dir = tmp_path / "model"
    model, tok = tiny_model("llama")
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    model.config.name_or_path = str(model_dir)
    loaders = dataclasses.replace(tiny, load_model=lambda *a: (model, tok))
    canary = CANARY.format(cache=str(cache_dir()), model=str(model_dir))
    folder = submission(tmp_path, "writer", data_file=data, press="import canary\n" + textwrap.dedent(PLAIN_PRESS),
                        extra={"canary.py": canary})
    targets = [PACKAGE_DIR / "_sandbox_canary.py", cache_dir() / "_sandbox_canary", model_dir / "_sandbox_canary",
               cache_dir() / "_verify_appendable"]
    try:
        assert _check_in_sandbox([folder], VALIDATE_TIMEOUT_S) == {str(folder): []}
        R.evaluate(folder, out=tmp_path / "runs", loaders=loaders, **KW)
        assert not [t for t in targets if t.exists()]
    finally:
        (PACKAGE_DIR / "_sandbox_canary.py").unlink(missing_ok=True)


def test_a_sleeping_press_is_stopped_with_one_line(tmp_path, data, tiny):
    folder = submission(tmp_path, "sleeper", data_file=data,
                        press="import time\ntime.sleep(600)\n" + textwrap.dedent(PLAIN_PRESS))
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match=r"took longer than 3 s.*--worker-timeout") as info:
        R.evaluate(folder, out=tmp_path / "runs", worker_timeout=3, loaders=tiny, **KW)
    assert "\n" not in str(info.value) and time.monotonic() - t0 < 60


def test_validate_gives_a_sleeping_press_its_time_limit(tmp_path, data):
    from benchmark.trust.conformance import check_submission_isolated

    folder = submission(tmp_path, "sleeper", data_file=data,
                        press="import time\ntime.sleep(600)\n" + textwrap.dedent(PLAIN_PRESS))
    t0 = time.monotonic()
    assert check_submission_isolated(folder, timeout=5) == [
        f"{folder}: the conformance check did not finish within 5 s"]
    assert time.monotonic() - t0 < 30


def test_a_submission_that_exits_in_the_sandbox_is_a_one_line_failure(tmp_path, data, tiny, capsys):
    from benchmark.cli import main

    folder = submission(tmp_path, "quitter", data_file=data, press="import sys\nsys.exit(0)\n")
    rc = main(["evaluate", str(folder), "--out", str(tmp_path / "runs"), "--rhos", "0", "--conditions", "base"],
              loaders=tiny)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(err) == 1 and "sys.exit" in err[0], err


def test_the_harness_never_imports_submission_code(tmp_path, data):
    from benchmark.paths import import_from
    from benchmark.protocol.submission import load_submission

    folder = submission(tmp_path, "any", data_file=data)
    with pytest.raises(RuntimeError, match="only in the sandbox"):
        import_from(folder, "press:SpyPress")
    with pytest.raises(ValueError, match="runs in the sandbox"):
        load_submission(folder).make_compressor()


def test_every_file_a_hook_can_import_is_in_the_adapter_key(tmp_path, data):
    """A hook's helper module changes its adapters' cache key, so no stale adapter is reused."""
    from benchmark.protocol.submission import load_submission

    folder = submission(tmp_path, "helper", recipe="qa", hook=True, data_file=data, extra={"helper.py": "X = 1\n"})
    before = load_submission(folder).recipe.hash()
    (folder / "helper.py").write_text("X = 2\n")
    assert load_submission(folder).recipe.hash() != before


def test_the_sandbox_mounts_folders_under_tmp_and_never_the_checkout(tmp_path):
    """/tmp is private in the sandbox; a venv or submission under /tmp is mounted after it, over it.
    The checkout itself (its .git, tests, leaderboard) is never mounted, only the package in it."""
    args = sandbox_args([tmp_path])
    assert args.index("/tmp") < args.index(str(tmp_path.resolve()))
    assert str(CHECKOUT) not in args and str(CHECKOUT / ".git") not in args
    assert args[args.index(str(PACKAGE_DIR / "data")) - 1] == "--tmpfs"


@needs_bwrap
def test_a_checkout_under_tmp_runs_in_the_sandbox(tmp_path):
    """The package copied under /tmp (as a CI clone there is) starts in the sandbox and imports."""
    import shutil

    clone = tmp_path / "clone"
    shutil.copytree(PACKAGE_DIR, clone / "benchmark", ignore=shutil.ignore_patterns("__pycache__", "data"))
    code = ("import benchmark, pathlib; p = pathlib.Path(benchmark.__file__).parent; "
            "print(p, (p.parent / '.git').exists())")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(clone), "PYTHONSAFEPATH": "1"}
    out = subprocess.run([*sandbox_args([clone]), sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(rf"{re.escape(str(clone.resolve() / 'benchmark'))} False\n", out.stdout), out.stdout


def test_an_endless_reply_is_refused_not_read_into_memory(tmp_path, data, tiny, monkeypatch):
    """A press that writes one enormous line on the protocol's stream: the harness stops reading at
    its limit and fails with one line, instead of holding whatever the sandbox sends."""
    import benchmark.trust.worker as W

    monkeypatch.setattr(W, "MAX_REPLY_CHARS", 1 << 16)
    flood = textwrap.dedent("""
        import os, stat

        for fd in range(3, 20):  # the protocol's stream: a pipe the process may write
            try:
                if stat.S_ISFIFO(os.fstat(fd).st_mode):
                    os.write(fd, b"x" * (1 << 20))
                    break
            except OSError:
                continue
        """)
    folder = submission(tmp_path, "flood", data_file=data, press="import flood\n" + textwrap.dedent(PLAIN_PRESS),
                        extra={"flood.py": flood})
    with pytest.raises(WorkerError, match="longer than 65536 characters"):
        R.evaluate(folder, out=tmp_path / "runs", loaders=tiny, **KW)
