"""What the sandbox attack tests share: the gold answer no document holds, the spy that searches
for it, the submissions that carry it, and the plain press the attacks wrap."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from benchmark.paths import PACKAGE_DIR
from benchmark.protocol.spec import load_spec
from benchmark.trust.worker import bwrap_works

SECRET = "Zorblax-4417"  # a gold answer that is in no document text and no train_qa pair
CHECKOUT = PACKAGE_DIR.parent
#: the mini spec's mini-narrative test split, as git names it: the spy reads it from git's history
GOLD_FILE = load_spec("mini").dataset("mini-narrative").test.path.relative_to(CHECKOUT).as_posix()
needs_bwrap = pytest.mark.skipif(not bwrap_works(), reason="bubblewrap does not run here (CI installs it)")

SPY = """
    import gc, inspect, json, subprocess, sys
    from pathlib import Path

    # the gold answer reversed: the probe never builds the answer itself, so finding it is a real leak
    REV = {rev!r}
    FILES = {files!r}
    CHECKOUT = {checkout!r}
    GOLD_FILE = {gold_file!r}  # a committed data file of the mini tier, relative to the checkout

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
            git = subprocess.run(["git", "-C", CHECKOUT, "show", "HEAD:" + GOLD_FILE],
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
               "spy.py": SPY.format(rev=SECRET[::-1], files=files, checkout=str(CHECKOUT), gold_file=GOLD_FILE),
               "press.py": press,
               "hooks.py": HOOK} | (extra or {})
    for file, src in sources.items():
        (folder / file).write_text(textwrap.dedent(src).lstrip())
    return folder
