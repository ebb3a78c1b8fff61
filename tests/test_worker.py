"""The worker never holds an answer: a malicious submission (a press and a QA hook that search the
call stack, the garbage collector's objects and the data files for a known gold answer) finds it
when everything runs in one process, and finds nothing through the worker."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import textwrap
from pathlib import Path

import pytest

from benchmark import runner as R
from benchmark.tiny import tiny_model

TESTS = Path(__file__).resolve().parent
SECRET = "Zorblax-4417"  # a gold answer that is in no document text and no train_qa pair

SPY = """
    import gc, inspect, json, os, sys
    from pathlib import Path

    # the gold answer reversed: the probe never builds the answer itself, so finding it is a real leak
    REV = {rev!r}
    FILES = {files!r}

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

    def _is_dataclass(o):
        return "__dataclass_fields__" in getattr(type(o), "__dict__", {{}})

    def search(where):
        me = inspect.currentframe()
        seen = set()
        stack = False
        for f in inspect.stack()[1:]:
            try:
                stack = stack or _search(f.frame.f_locals, seen)
            except Exception:
                continue
        heap = False
        for o in gc.get_objects():
            try:  # objects of any kind: a lazy attribute may raise, which must not stop the search
                if isinstance(o, dict):
                    heap = any(_hit(v) or _hit(k) for k, v in list(o.items()))
                elif isinstance(o, (list, tuple, set)):
                    heap = any(_hit(x) for x in list(o))
                elif _is_dataclass(o):
                    heap = _search(o, set())
            except Exception:
                continue
            if heap:
                break
        read, disk = 0, []
        for root in FILES:
            paths = [Path(root)] if Path(root).is_file() else list(Path(root).rglob("*")) if Path(root).is_dir() else []
            for p in paths:
                try:
                    text = p.read_text(errors="ignore")
                except OSError:
                    continue
                read += 1
                if REV in text[::-1]:
                    disk.append(str(p))
        report = {{"where": where, "stack": stack, "heap": heap, "disk": disk, "files_read": read}}
        out = Path(os.environ["LORAKV_CACHE"]) / f"spy-{{os.getpid()}}-{{where}}-{{len(list(Path(os.environ['LORAKV_CACHE']).glob('spy-*')))}}.json"
        out.write_text(json.dumps(report))
    """

PRESS = """
    from dataclasses import dataclass

    from kvpress import ScorerPress

    from spy import search


    @dataclass
    class SpyPress(ScorerPress):
        def score(self, module, hidden_states, keys, values, attentions, kwargs):
            search("press")
            return keys.norm(dim=-1)
    """

HOOK = """
    from spy import search


    def make_pairs(view):
        search("hook")
        return [{"question": q, "answer": a} for q, a in view.train_qa]
    """

YAML = """
    name: spy
    authors: [Mallory]
    description: searches for the answers
    compressor: {press: 'press:SpyPress'}
    adapter:
      recipe: qa
      lora: {r: 2, alpha: 4}
      train: {epochs: 1, batch_size: 4, hook: 'hooks:make_pairs'}
    """


@pytest.fixture()
def setup(tmp_path, monkeypatch, document):
    from benchmark.paths import PACKAGE_DIR
    from benchmark.spec import DataFile, load_spec

    data = tmp_path / "data" / "docs.jsonl"
    data.parent.mkdir()
    row = {"doc_id": "d0", "text": document.text,
           "questions": [{"id": "q-secret", "question": "What is the vault code?", "answers": [SECRET]},
                         {"id": "q-town", "question": "Where is the bakery?", "answers": ["Tollervik"]}],
           "train_qa": [{"question": q, "answer": a} for q, a in document.train_qa]}
    data.write_text(json.dumps(row) + "\n")
    files = [str(data), str(PACKAGE_DIR / "data"), str(PACKAGE_DIR.parent / "leaderboard")]
    folder = tmp_path / "submissions" / "spy"
    folder.mkdir(parents=True)
    for name, src in {"submission.yaml": YAML, "spy.py": SPY.format(rev=SECRET[::-1], files=files),
                      "press.py": PRESS, "hooks.py": HOOK}.items():
        (folder / name).write_text(textwrap.dedent(src).lstrip())
    spec = load_spec("mini")
    spec = dataclasses.replace(spec, datasets=(dataclasses.replace(spec.datasets[0], test=DataFile(data, None)),))
    monkeypatch.setattr(R, "load_spec", lambda tier: spec)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    return folder, tmp_path


def _reports() -> list[dict]:
    cache = Path(os.environ["LORAKV_CACHE"])
    return [json.loads(p.read_text()) for p in sorted(cache.glob("spy-*.json"))]


KW = dict(rhos=[0.0, 0.5], conditions=["base", "base_kv_adapter_decode"], progress=False)


def test_in_one_process_the_spy_finds_the_answer(setup, monkeypatch):
    """The probe works: without the worker, the press and the hook reach the answers."""
    folder, tmp_path = setup
    model, tok = tiny_model("llama")
    monkeypatch.setattr(R, "load_model", lambda *a, **k: (model, tok))
    R.evaluate(folder, out=tmp_path / "runs-inline", isolation="inline", **KW)
    reports = _reports()
    assert {r["where"] for r in reports} == {"press", "hook"}
    assert any(r["stack"] or r["heap"] for r in reports if r["where"] == "press"), reports
    assert any(r["disk"] for r in reports), reports


def test_through_the_worker_the_spy_finds_nothing(setup, capfd):
    folder, tmp_path = setup
    [path] = R.evaluate(folder, out=tmp_path / "runs", worker_setup="worker_setup:install", **(KW | {"progress": True}))
    err = capfd.readouterr().err  # the worker's stderr is this process's file descriptor 2
    # the worker reports its own peak memory (torch alone is well over 100 MiB); the parent cannot measure it
    [peak] = re.findall(r"worker process \(model, training, decoding\): peak RSS (\d+) MiB", err)
    assert int(peak) > 100, err
    reports = _reports()
    assert {r["where"] for r in reports} == {"press", "hook"}, reports  # both ran, in the worker
    assert not any(r["stack"] or r["heap"] for r in reports), reports
    result = json.loads(path.read_text())
    sandbox = result["environment"]["sandbox"]
    assert sandbox in ("bubblewrap", "none")
    if sandbox == "bubblewrap":
        assert not any(r["disk"] for r in reports), reports
    else:
        assert "unsandboxed" in err  # the run says so; the disk is then readable
    # the parent scored: answers and scores are in the result, from the data the worker never saw
    secret = [p for p in result["predictions"] if p["question_id"] == "q-secret"]
    assert secret and all(p["answers"] == [SECRET] and "rouge_l" in p for p in secret)


def test_a_submission_that_exits_in_the_worker_is_a_one_line_failure(setup, capsys):
    """Import-time sys.exit in the worker: evaluate fails with one line naming it, exit code 2."""
    from benchmark.cli import main

    folder, tmp_path = setup
    (folder / "press.py").write_text("import sys\nsys.exit(0)\n")
    rc = main(["evaluate", str(folder), "--out", str(tmp_path / "runs"), "--rhos", "0", "--conditions", "base"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(err) == 1 and "sys.exit" in err[0], err
