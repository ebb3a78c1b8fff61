import os

if "PYTEST_XDIST_WORKER" in os.environ:
    # One thread per xdist worker, set before torch loads: the workers already fill the cores, and two
    # threads each make the fast suite slower (244 s against 155 s on 2 cores), never faster.
    os.environ["OMP_NUM_THREADS"] = "1"

import shutil  # noqa: E402
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from benchmark.paths import set_offline

set_offline()

ROOT = Path(__file__).resolve().parents[1]
COMMITTED_SUBMISSIONS = sorted(p for p in (ROOT / "submissions").glob("*")
                               if p.is_dir() and not p.name.startswith((".", "_")))

#: sandboxed checks started when collection ends, read by the session fixtures below
_started: dict[str, Future] = {}


def pytest_collection_finish(session):
    """When a selected test reads the committed submissions' sandboxed check, start it now in a
    thread: its process runs on the second core while the tests before it run on the first. Not
    under pytest-xdist, where each worker collects every test but runs only some, and both cores
    are busy: there the fixture runs the check in the worker that needs it."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        return
    if any("committed_submission_problems" in getattr(item, "fixturenames", ()) for item in session.items):
        from benchmark.trust.conformance import check_submissions_isolated

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="committed-submissions")
        _started["committed_submission_problems"] = pool.submit(check_submissions_isolated, COMMITTED_SUBMISSIONS)
        pool.shutdown(wait=False)


@pytest.fixture(scope="session")
def committed_submission_problems() -> dict[str, list[str]]:
    """Every committed submission checked once, in the sandbox (those without code share one
    process): ``conformance.check_submissions_isolated``, keyed by the folder as a string."""
    from benchmark.trust.conformance import check_submissions_isolated

    started = _started.get("committed_submission_problems")
    return started.result() if started else check_submissions_isolated(COMMITTED_SUBMISSIONS)


@pytest.fixture(scope="session")
def committed_leaderboard(tmp_path_factory) -> tuple[int, Path]:
    """``lorakv-bench leaderboard`` run once over a copy of the committed layout (``results/`` and
    ``verified/`` inside a ``leaderboard/`` folder, so relative links are the committed ones):
    (its exit code, that folder with README.md, the data files and plots/). Only tests in
    tests/test_regenerate.py read it, so under ``--dist loadfile`` one worker renders it, once."""
    from benchmark import cli

    out = tmp_path_factory.mktemp("committed") / "leaderboard"
    for name in ("results", "verified"):
        if (ROOT / "leaderboard" / name).exists():
            shutil.copytree(ROOT / "leaderboard" / name, out / name)
    rc = cli.main(["leaderboard", "--results", str(out / "results"), "--out", str(out / "README.md"),
                   "--plots", str(out / "plots")])
    return rc, out


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own LORAKV_CACHE unless it is a slow test reusing the real one."""
    if "LORAKV_TEST_SHARED_CACHE" not in os.environ:
        monkeypatch.setenv("LORAKV_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def qa_prompt():
    from benchmark.protocol.spec import Prompt

    return Prompt(None, "Read the context.\n\nContext:\n{document}\n\nQuestion: {question}", "Answer:")


@pytest.fixture
def document():
    from benchmark.protocol.datasets import Document, Question

    text = ("The patient received 40 mg of Velatrixin daily. Dr. Halvorsen noted a creatinine of 1.8 mg/dL. "
            "Maren Oskvik opened a bakery in Tollervik in 1987. Her brother Anders moved to Quillsby. ") * 2
    return Document(
        "d0", text,
        (Question("q0", "Who noted the creatinine?", ("Halvorsen",)), Question("q1", "What dose?", ("40 mg",)),
         Question("q2", "Where is the bakery?", ("Tollervik",))),
        (("Which doctor measured creatinine?", "Halvorsen"), ("How much Velatrixin?", "40 mg"),
         ("Town of the bakery?", "Tollervik")),
    )
