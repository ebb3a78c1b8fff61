"""Result files and the adapter cache under concurrent writers, resume identity, corrupt files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmark.protocol.results import ResultFile
from benchmark.protocol.spec import SpecError

ROOT = Path(__file__).resolve().parents[1]


def header(**over) -> dict:
    h = {"submission": {"name": "s", "hash": "h", "compressor": {}, "adapter": {}, "headline_condition": "base"},
         "tier": "mini", "spec_version": "v", "spec_hash": "x", "model": {"id": "m", "name": "m"},
         "dataset": {"id": "d", "split": "test", "sha256": "0"}, "rhos": [0.0, 1.0], "conditions": ["base"],
         "environment": {}, "slice": {"docs": None, "questions": None}}
    return h | over


def document(doc_id: str) -> tuple[dict, list[dict]]:
    record = {"doc_id": doc_id, "n_prefix_tokens": 2, "n_doc_tokens": 10, "adapter": None, "timings": {}}
    preds = [{"doc_id": doc_id, "question_id": f"{doc_id}-q", "rho": rho, "condition": "base", "generation": "a",
              "prediction": "a", "answers": ["a"], "rouge_l": 100.0, "exact_match": 100.0,
              "kv_entries": 4 * (2 + (10 if rho == 0 else 0)), "kv_bytes": 64}
             for rho in (0.0, 1.0)]
    return record, preds


WRITER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    from test_concurrency import ResultFile, document, header

    path, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rf = ResultFile(path, header())
    for i in range(n):
        rf.add_document(*document(f"{{who}}-{{i:02d}}"))
    os._exit(0)  # every document is written and its lock released: no interpreter teardown to wait for
    """)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def test_two_processes_writing_one_result_file_lose_nothing(tmp_path):
    path = tmp_path / "runs" / "r.json"
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(ROOT / "tests")))
    n = 25
    procs = [subprocess.Popen([sys.executable, str(script), str(path), who, str(n)], env=_env(),
                              stderr=subprocess.PIPE, text=True) for who in ("a", "b")]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    data = json.loads(path.read_text())
    assert sorted(d["doc_id"] for d in data["documents"]) == sorted(f"{w}-{i:02d}" for w in "ab" for i in range(n))
    assert len(data["predictions"]) == 2 * n * 2
    assert not list(path.parent.glob("*.tmp"))  # no temporary file left behind
    assert not list(path.parent.glob("*.lock"))  # each writer removes the lock it held


TRAINER = textwrap.dedent("""
    import json, os, sys
    from benchmark.protocol.adapters import AdapterStore, LoraSettings, Recipe, TrainSettings, build_examples
    from benchmark.protocol.datasets import TrainingView
    from benchmark.protocol.models import PromptRenderer
    from benchmark.protocol.spec import Prompt
    from benchmark.protocol.tiny import tiny_model

    model, tok = tiny_model("llama")
    renderer = PromptRenderer(tok, Prompt(None, "Context:\\n{document}\\n\\nQuestion: {question}", "Answer:"))
    view = TrainingView("d0", "Maren opened a bakery in Tollervik.", (("Where is the bakery?", "Tollervik"),) * 4)
    recipe = Recipe("qa", LoraSettings(r=2, alpha=4), TrainSettings(epochs=3, batch_size=2))
    info = AdapterStore().attach(model, "a", "shared-key", recipe, lambda: build_examples(view, recipe, renderer),
                                 tok.pad_token_id, progress=False)
    print(json.dumps({"cached": info["cached"]}), flush=True)
    os._exit(0)  # the adapter is saved and its lock released: no teardown of torch to wait for
    """)


def test_two_processes_training_the_same_adapter_key(tmp_path):
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    env = _env() | {"LORAKV_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    cached = sorted(json.loads(out.strip().splitlines()[-1])["cached"] for out, _ in outs)
    assert cached == [False, True]  # one trained it, the other waited and loaded it
    adapters = tmp_path / "cache" / "adapters"
    assert (adapters / "shared-key" / "adapter_model.safetensors").exists()
    assert not [p for p in adapters.iterdir() if ".tmp" in p.name or p.name.endswith(".lock")]


def test_result_file_is_world_readable_and_leaves_no_lock(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "runs" / "r.json"
        ResultFile(path, header()).add_document(*document("a"))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # mkstemp alone would make it 0600
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]


def test_lock_removed_by_its_holder_still_excludes(tmp_path):
    """A process waiting on a lock file that its holder removes locks the file that replaces it,
    so two holders never overlap."""
    import threading
    import time

    from benchmark.protocol.results import file_lock

    path = tmp_path / "r.json"
    inside, overlaps = [], []

    def hold(who: str) -> None:
        for _ in range(30):
            with file_lock(path):
                if inside:
                    overlaps.append((who, list(inside)))
                inside.append(who)
                time.sleep(0.001)
                inside.remove(who)

    threads = [threading.Thread(target=hold, args=(w,)) for w in "abc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlaps
    assert not path.with_name("r.json.lock").exists()


@pytest.mark.parametrize("change, field", [
    ({"slice": {"docs": None, "questions": 4}}, "slice"),
    ({"slice": {"docs": 2, "questions": None}}, "slice"),
    ({"rhos": [0.0, 0.5, 1.0]}, "rhos"),
    ({"conditions": ["base", "adapter_all"]}, "conditions"),
    ({"environment": {"dtype": "bfloat16"}}, "decoding"),
    ({"environment": {"device": "cuda:0"}}, "decoding"),
    ({"environment": {"batch_size": 8}}, "decoding"),
    ({"environment": {"batching": "suffix"}}, "decoding"),
], ids=["questions", "docs", "rho-grid", "conditions", "dtype", "device", "batch-size", "batching"])
def test_resume_with_another_slice_is_refused(tmp_path, change, field):
    path = tmp_path / "r.json"
    ResultFile(path, header()).add_document(*document("d0"))
    with pytest.raises(SpecError, match=rf"r.json: field '{field}': this file holds .* this run asks for"):
        ResultFile(path, header(**change))
    assert len(ResultFile(path, header()).data["predictions"]) == 2  # the same slice resumes


@pytest.mark.parametrize("content", [b'{"format": "lorakv-bench-result/1", "predic', b"\xff\xfe\x00", b"[]"],
                         ids=["truncated", "not-utf8", "not-a-result"])
def test_corrupt_result_file_on_resume_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "r.json"
    path.write_bytes(content)
    with pytest.raises(SpecError) as exc:
        ResultFile(path, header())
    msg = str(exc.value)
    assert "\n" not in msg and "r.json" in msg and "cannot resume" in msg
    assert path.read_bytes() == content  # nothing overwritten


def test_a_file_without_a_slice_resumes_only_as_a_full_split_run(tmp_path):
    """Files written before the slice was recorded are taken as full-split runs."""
    path = tmp_path / "r.json"
    ResultFile(path, header()).add_document(*document("d0"))
    data = json.loads(path.read_text())
    del data["slice"]
    path.write_text(json.dumps(data))
    assert len(ResultFile(path, header()).data["predictions"]) == 2
    with pytest.raises(SpecError, match="field 'slice'"):
        ResultFile(path, header(slice={"docs": None, "questions": 1}))
