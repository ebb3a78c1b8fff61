"""The worker: where submission code runs, apart from the answers.

The parent (:func:`benchmark.runner.evaluate`) holds the datasets with their answers, scores and
writes result files. The model, the submission's press and QA hook, and adapter training run in
a child process that receives, per document, its text, its ``train_qa`` (the TrainingView) and
its questions *without answers or tags*, and sends back generations, kv entries/bytes and adapter
statistics. So no answer is in the child's arguments, on its stack or in its heap.

Where bubblewrap works (``bwrap``; Debian package ``bubblewrap``) the child also runs without
network and with the answer files hidden: the package's ``data/`` folder, ``leaderboard/``,
prepared paper data in the cache, the answer digests in ``specs/answers/``, and every data file
the parent reads are empty in its view of the disk. Elsewhere the run says so: ``environment.sandbox`` is ``none`` and a line is printed.

Protocol: JSON lines on the child's stdin/stdout (the child moves its own stdout to stderr, so
library output cannot corrupt it): one setup message, then one request per document.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .datasets import Document, Question
from .paths import PACKAGE_DIR, cache_dir

class WorkerError(RuntimeError):
    """The worker failed (its setup, a document, or it died); the message says which, on one line."""


#: what ``environment.sandbox`` says: the worker in bubblewrap, a plain child process, or no worker
SANDBOXES = ("bubblewrap", "none", "inline")


def question_view(doc: Document, questions) -> dict:
    """What the worker may know of a document: text, train_qa, question ids and texts. Never answers."""
    return {"doc_id": doc.doc_id, "text": doc.text, "train_qa": [list(p) for p in doc.train_qa],
            "questions": [{"id": q.id, "question": q.question} for q in questions]}


def _document(view: dict) -> Document:
    return Document(view["doc_id"], view["text"], tuple(Question(q["id"], q["question"], ()) for q in view["questions"]),
                    tuple(tuple(p) for p in view["train_qa"]))


def bwrap_works() -> bool:
    """Whether a bubblewrap sandbox starts here (user namespaces may be disabled)."""
    exe = shutil.which("bwrap")
    if not exe:
        return False
    try:
        return subprocess.run([exe, "--ro-bind", "/", "/", "--dev", "/dev", "--unshare-net", "true"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def sandbox_args(hidden_files: list[Path], readable: list[Path]) -> list[str]:
    """bwrap arguments: the disk read-only, /tmp fresh, the cache writable (adapters), no network,
    and the answer files hidden (folders as empty tmpfs, single files as /dev/null)."""
    cache = cache_dir().resolve()
    args = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            "--unshare-net", "--unshare-pid", "--die-with-parent"]
    for path in readable:  # e.g. a submission folder under /tmp
        args += ["--ro-bind", str(path), str(path)]
    args += ["--bind", str(cache), str(cache)]
    # specs/answers holds digests of gold answers: an oracle for a hook that hashes candidate spans
    hidden_dirs = [PACKAGE_DIR / "data", PACKAGE_DIR / "specs" / "answers", PACKAGE_DIR.parent / "leaderboard",
                   Path.cwd() / "leaderboard", cache / "data"]
    for d in hidden_dirs:
        if d.is_dir():
            args += ["--tmpfs", str(d.resolve())]
    for f in hidden_files:
        if f.is_file():
            args += ["--ro-bind", "/dev/null", str(f.resolve())]
    return args


@dataclass
class WorkerRun:
    """The parent's handle on a worker: ``evaluate`` like :class:`benchmark.runner.DocumentRun`,
    but the document crosses as a question view and predictions come back unscored."""

    proc: subprocess.Popen
    sandbox: str
    dtype: str = "unknown"  # what the worker's model runs in, from its ready message

    @classmethod
    def start(cls, *, tier: str, submission: str, model_id: str | None, device: str | None, batch_size: int,
              progress: bool, hidden_files: list[Path], setup: str | None = None, sandbox: bool = True,
              dtype: str | None = None) -> WorkerRun:
        cmd = [sys.executable, "-m", "benchmark.worker"]
        use_bwrap = sandbox and bwrap_works()
        if use_bwrap:
            cmd = sandbox_args(hidden_files, [Path(submission).resolve()]) + cmd
        else:
            print("warning: bubblewrap is not available here; the worker runs unsandboxed (answers are still kept "
                  "out of its process, but it can read the disk and the network); environment.sandbox = none",
                  file=sys.stderr)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_DIR.parent)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        run = cls(proc, "bubblewrap" if use_bwrap else "none")
        run._send({"tier": tier, "submission": str(Path(submission).resolve()), "model_id": model_id, "device": device,
                   "dtype": dtype, "batch_size": batch_size, "progress": progress, "setup": setup})
        run.dtype = run._receive()["dtype"]  # ready (or the error that stopped it)
        return run

    def _send(self, msg: dict) -> None:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def _receive(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise WorkerError(f"the worker process ended unexpectedly (exit code {self.proc.returncode}); see its "
                              "output above")
        msg = json.loads(line)
        if "error" in msg:
            raise WorkerError(f"worker: {msg['error']}")
        return msg

    def evaluate(self, doc: Document, rhos, conditions, questions=None) -> tuple[dict, list[dict]]:
        self._send({"doc": question_view(doc, list(questions or doc.questions)), "rhos": list(rhos),
                    "conditions": list(conditions)})
        msg = self._receive()
        return msg["record"], msg["predictions"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _serve() -> None:
    """The child: set up the run from the first message, then answer one document per line."""
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything printed by libraries or submission code goes to stderr, not the protocol
    sys.stdout = sys.stderr

    def send(msg: dict) -> None:
        proto.write(json.dumps(msg) + "\n")
        proto.flush()

    setup = json.loads(sys.stdin.readline())
    try:
        from . import runner

        if setup["setup"]:  # a test seam (like the Ray executor's runner_hook): e.g. install a tiny model
            from importlib import import_module

            module, _, func = setup["setup"].partition(":")
            getattr(import_module(module), func)()
        spec = runner.load_spec(setup["tier"])
        submission = runner.load_submission(setup["submission"])
        submission.make_compressor()  # a press that does not import fails now, before a model is loaded
        run = runner.open_run(spec, submission, setup["model_id"], setup["device"], setup["dtype"],
                              batch_size=setup["batch_size"], progress=setup["progress"])
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails with it
        send({"error": f"setup failed: {type(exc).__name__}: {exc}"})
        return
    send({"ready": True, "dtype": run.dtype})
    try:
        for line in sys.stdin:
            req = json.loads(line)
            try:
                record, preds = run.evaluate(_document(req["doc"]), req["rhos"], req["conditions"])
            except Exception as exc:  # noqa: BLE001
                send({"error": f"document {req['doc']['doc_id']}: {type(exc).__name__}: {exc}"})
                return
            send({"record": record, "predictions": preds})
    finally:  # the worker's own figure: in bubblewrap it is not the parent's child, so RUSAGE_CHILDREN misses it
        if setup["progress"]:
            print(f"worker process (model, training, decoding): peak RSS "
                  f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB", file=sys.stderr, flush=True)


if __name__ == "__main__":
    _serve()
