"""The committed result files conform, and what is committed regenerates byte for byte from what it
was derived from. (In one file, so that one test worker loads each result file, and checks it
against the schema, once.)

Conformance: every committed result file passes ``check_result_file`` (what a submitter must meet).

Behaviour pins: a refactoring that changes a number, a hash or a rendered byte fails here:
- every committed result file re-serialises identically after its scores and cells are recomputed
  from its predictions (``results.aggregate``, ``Spec.scoring``, the writer's format);
- every committed result file's ``submission.hash`` is what its committed submission folder hashes
  to now, and the hash function itself is pinned on a fixed folder;
- ``lorakv-bench leaderboard`` writes, into a temporary copy of the layout, exactly the committed
  ``leaderboard/README.md``, ``leaderboard/leaderboard.json``, ``leaderboard/leaderboard.csv``,
  ``leaderboard/index.html`` and ``leaderboard/plots/*.svg``; the committed data files hold the committed
  page's ranking.
The conformance check allows tolerances; the pins check exact equality (what a refactoring must
keep), and that the committed leaderboard folder is up to date (no stale or missing file).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmark.board import leaderboard
from benchmark.board.page import PAGE_HTML
from benchmark.protocol.results import aggregate
from benchmark.protocol.spec import load_spec
from benchmark.protocol.submission import load_submission
from benchmark.trust.conformance import check_result_file

ROOT = Path(__file__).resolve().parents[1]
RESULTS_ROOT = ROOT / "leaderboard" / "results"
RESULTS = sorted(RESULTS_ROOT.rglob("*.json")) if RESULTS_ROOT.exists() else []
IDS = [p.relative_to(RESULTS_ROOT).as_posix() for p in RESULTS]


@pytest.mark.parametrize("result", RESULTS, ids=IDS)
def test_committed_result_conforms(result):
    assert check_result_file(result, submissions_dir=ROOT / "submissions") == []


def _serialise(data: dict) -> str:
    """The result writer's format (``ResultFile.save``)."""
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("path", RESULTS, ids=IDS)
def test_result_file_rederives_byte_for_byte(path):
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    spec = load_spec(data["tier"])
    scoring, answer_prefix = spec.scoring(), spec.prompt_for(spec.model(data["model"]["id"])).answer_prefix
    for p in data["predictions"]:
        p["prediction"] = scoring.extract(p["generation"], answer_prefix)
        s = scoring.score(p["prediction"], p["answers"])
        p["rouge_l"], p["exact_match"] = s["rouge_l"], s["exact_match"]
    data["cells"] = aggregate(data["predictions"], data["documents"])
    assert _serialise(data) == text


@pytest.mark.parametrize("path", RESULTS, ids=IDS)
def test_committed_submission_hash_unchanged(path):
    data = json.loads(path.read_text(encoding="utf-8"))
    sub = load_submission(ROOT / "submissions" / data["submission"]["name"])
    assert sub.hash() == data["submission"]["hash"]
    assert sub.headline_condition == data["submission"]["headline_condition"]


def test_submission_hash_function_pinned(tmp_path):
    """The hash of a fixed folder (YAML + a top-level .py + a nested data file) never changes:
    a change here would silently orphan every committed result."""
    folder = tmp_path / "submissions" / "pinned"
    (folder / "extra").mkdir(parents=True)
    (folder / "submission.yaml").write_text(
        "name: pinned\nauthors: [A]\ndescription: pinned hash\n"
        "compressor: {press: 'my_press:MyPress', kwargs: {window: 4}}\n"
        "adapter:\n  recipe: qa\n  lora: {r: 4, alpha: 8}\n  train: {lr: 1.0e-3, epochs: 2}\n"
        "  per_model: {smollm2-135m: {lr: 2.0e-3}}\n")
    (folder / "my_press.py").write_text("from dataclasses import dataclass\n\n\n"
                                        "@dataclass\nclass MyPress:\n    window: int = 4\n")
    (folder / "extra" / "blob.bin").write_bytes(bytes(range(256)))
    assert load_submission(folder).hash() == PINNED_HASH


PINNED_HASH = "a70d8cb8c1382f2c"  # the folder above's hash, pinned


@pytest.mark.skipif(not RESULTS, reason="no result files in leaderboard/results yet")
def test_leaderboard_command_regenerates_byte_for_byte(committed_leaderboard):
    # the command run once per test run over a copy of the layout (tests/conftest.py), so that the
    # data files' result paths, relative to their folder, are the committed ones
    rc, out = committed_leaderboard
    assert rc == 0
    committed = ROOT / "leaderboard"
    for name in ("README.md", leaderboard.DATA_JSON, leaderboard.DATA_CSV, PAGE_HTML):
        assert (out / name).read_bytes() == (committed / name).read_bytes(), name
    fresh = sorted(p.name for p in (out / "plots").glob("*.svg"))
    assert fresh == sorted(p.name for p in (committed / "plots").glob("*.svg"))
    for name in fresh:
        assert (out / "plots" / name).read_bytes() == (committed / "plots" / name).read_bytes(), name


@pytest.mark.skipif(not RESULTS, reason="no result files in leaderboard/results yet")
def test_leaderboard_is_up_to_date(committed_leaderboard):
    """The committed page, data files and plots equal a fresh render of the committed results, and
    the render writes no file that is not committed (``committed_leaderboard``, tests/conftest.py:
    rendered once per test run, beside the byte-for-byte test above in one file, so once per worker)."""
    rc, fresh = committed_leaderboard
    committed = ROOT / "leaderboard"
    assert rc == 0
    written = {p.relative_to(fresh).as_posix() for p in fresh.rglob("*")
               if p.is_file() and p.relative_to(fresh).parts[0] not in ("results", "verified")}
    assert {"README.md", leaderboard.DATA_JSON, leaderboard.DATA_CSV} <= written
    names = sorted(written | {f"plots/{p.name}" for p in (committed / "plots").glob("*.svg")})
    stale = [name for name in names if not (committed / name).exists() or not (fresh / name).exists()
             or (committed / name).read_bytes() != (fresh / name).read_bytes()]
    assert stale == [], "leaderboard is stale; run `lorakv-bench leaderboard` and commit leaderboard/"


@pytest.mark.skipif(not RESULTS, reason="no result files in leaderboard/results yet")
def test_committed_data_holds_the_committed_ranking():
    """Each ranking table of the committed page, row by row, against the committed leaderboard.json."""
    md = (ROOT / "leaderboard" / "README.md").read_text(encoding="utf-8")
    rows = json.loads((ROOT / "leaderboard" / leaderboard.DATA_JSON).read_text(encoding="utf-8"))["rows"]
    checked = 0
    for section in re.split(r"^## ", md, flags=re.M)[1:]:
        title = section.split("\n", 1)[0]
        if "### Ranking" not in section:
            continue
        key = tuple(title.split(" · "))
        ranked = [r for r in rows if (r["tier"], r["dataset"], r["model"], r["dtype"]) == key and r["rank"] is not None]
        table = [line for line in section.split("### Ranking", 1)[1].split("\n\n", 2)[1].splitlines()
                 if line.startswith("|")][2:]
        assert len(table) == len(ranked), title
        for line, r in zip(table, ranked):
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert cells[0] == str(r["rank"]) and f"({r['submission_link']})" in cells[1], (title, r["submission"])
            assert cells[2] == f"**{leaderboard.fmt_score(r['mean'])}**"
            assert cells[3] == leaderboard.fmt_ci(r["mean_ci95_lo"], r["mean_ci95_hi"])
            checked += 1
    assert checked == sum(r["rank"] is not None for r in rows) > 0
