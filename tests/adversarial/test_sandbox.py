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

import pytest
from attack_kit import CHECKOUT, KW, PLAIN_PRESS, PRESS, SECRET, needs_bwrap, submission

from benchmark.paths import PACKAGE_DIR
from benchmark.protocol import runner as R
from benchmark.protocol.tiny import tiny_model
from benchmark.trust.worker import sandbox_args


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
