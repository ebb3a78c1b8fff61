"""Hostile YAML: an alias bomb, a file too large, nesting too deep. Each is refused by
``spec.load_yaml`` with a one-line error naming the file, before anything is built from it."""

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.protocol.spec import YAML_MAX_BYTES, YAML_MAX_DEPTH, SpecError, load_spec
from benchmark.protocol.submission import load_submission

ROOT = Path(__file__).resolve().parents[2]

# The billion laughs: 9 levels of 9 aliases, 9**9 strings once expanded. PyYAML loads it as a small
# shared object; hashing the submission (json.dumps) then needs gigabytes and ends in MemoryError.
BOMB = """\
name: bomb
authors: [mallory]
description: SnapKV with a billion laughs in its kwargs.
compressor:
  press: SnapKVPress
  kwargs:
    window_size: 16
    a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
    f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
    g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
    h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
    i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
adapter:
  recipe: none
"""

PLAIN = """\
name: {name}
authors: [mallory]
description: {description}
compressor:
  press: SnapKVPress
  kwargs: {kwargs}
adapter:
  recipe: none
"""


def _submission(tmp_path: Path, name: str, text: str) -> Path:
    folder = tmp_path / "submissions" / name
    folder.mkdir(parents=True)
    (folder / "submission.yaml").write_text(text)
    return folder


def _refused(folder: Path) -> str:
    with pytest.raises(SpecError) as exc:
        load_submission(folder)
    message = str(exc.value)
    assert "\n" not in message and str(folder / "submission.yaml") in message
    return message


def test_alias_bomb_is_refused_before_it_expands(tmp_path):
    assert "aliases are not accepted" in _refused(_submission(tmp_path, "bomb", BOMB))


def test_a_lone_alias_is_refused(tmp_path):
    text = PLAIN.format(name="alias", description="&d one description", kwargs="{window_size: 16}")
    text += "headline_condition: *d\n"
    assert "(&d)" in _refused(_submission(tmp_path, "alias", text))


def test_deep_nesting_is_refused(tmp_path):
    deep = "[" * 2000 + "]" * 2000  # PyYAML composes recursively: RecursionError without a limit
    text = PLAIN.format(name="deep", description="d", kwargs="{a: " + deep + "}")
    message = _refused(_submission(tmp_path, "deep", text))
    assert f"nested more than {YAML_MAX_DEPTH} levels" in message


def test_a_submission_over_the_size_limit_is_refused(tmp_path):
    limit = YAML_MAX_BYTES["submission.schema.json"]
    text = PLAIN.format(name="big", description="x" * limit, kwargs="{window_size: 16}")
    assert "larger than 64 KiB" in _refused(_submission(tmp_path, "big", text))


def test_a_spec_over_its_size_limit_is_refused(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("# padding\n" * (YAML_MAX_BYTES["spec.schema.json"] // 10 + 1))
    with pytest.raises(SpecError, match=r"spec\.yaml: larger than 1024 KiB"):
        load_spec(path)


def test_shipped_files_are_far_below_the_limits():
    sizes = [p.stat().st_size for p in (ROOT / "submissions").glob("*/submission.yaml")]
    assert sizes and max(sizes) * 16 < YAML_MAX_BYTES["submission.schema.json"]
    spec_sizes = [p.stat().st_size for p in (ROOT / "benchmark" / "specs").glob("*.yaml")]
    assert max(spec_sizes) * 64 < YAML_MAX_BYTES["spec.schema.json"]


def _cap_memory() -> None:  # a MemoryError while parsing must not take the machine with it
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def test_validate_reports_the_bomb_in_one_line(tmp_path):
    folder = _submission(tmp_path, "bomb", BOMB)
    proc = subprocess.run([sys.executable, "-m", "benchmark.cli", "validate", str(folder)], capture_output=True,
                          text=True, timeout=300, preexec_fn=_cap_memory, cwd=ROOT)
    assert proc.returncode == 1
    fails = [line for line in proc.stderr.splitlines() if line.startswith("FAIL ")]
    assert len(fails) == 1 and "submission.yaml: line 8: YAML anchors and aliases are not accepted" in fails[0]
