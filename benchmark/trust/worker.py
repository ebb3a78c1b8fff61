"""The sandbox: the only process where a submission's own code runs, and all it returns is data.

The harness (:mod:`benchmark.protocol.runner`) runs the model, prefill, eviction, KV accounting, adapter
training, decoding, scoring and every check in its own process, and never imports submission
code. A submission that brings code (a press ``module:Class``, a QA ``hook``) gets a
:class:`SubmissionProcess`: a child process, in a bubblewrap sandbox where bubblewrap works,
that answers two requests:

* ``plan``: prefill the token ids it is given with the submission's press, on the base model or
  with the document's adapter (handed in read-only), and return a keep mask per layer and KV head
  for each rho (:mod:`benchmark.protocol.plan`);
* ``qa_pairs``: call the hook on a document's TrainingView (text and train_qa, never the
  evaluation questions) and return its QA pairs.

The harness checks what comes back (shape and exact budget of a plan, types and sizes of QA
pairs) before it uses it, builds the cache from the plan itself and counts what it kept. Code in
the child can patch anything in the child; nothing there is the harness.

What the sandbox shows (:func:`sandbox_args`): the system folders and the Python installation
read-only, the package read-only without its ``data/`` and ``specs/answers/`` (digests of gold
answers: an oracle for hashed guesses), the submission folder, the model folder
and an inbox of adapters read-only, and a private ``/tmp``. Not shown: the checkout's ``.git``,
datasets, results, leaderboard and tests, the shared cache, the network. It starts wherever the
checkout, venv and cache live, ``/tmp`` included. Each request has a time limit
(:data:`DEFAULT_TIMEOUT_S`), and the child runs under CPU-time, file-size and (on CPU) address-
space limits. Where bubblewrap cannot run, the child runs unsandboxed and says so (``environment.
sandbox: none``), unless ``LORAKV_REQUIRE_SANDBOX=1``, which refuses.

Protocol: JSON lines on the child's stdin/stdout (the child moves its own stdout to stderr, so
library output cannot corrupt it): one setup message, then one request per line.
"""

from __future__ import annotations

import json
import os
import queue
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..paths import OFFLINE_ENV, PACKAGE_DIR, SUBMISSION_PROCESS_ENV, TOKENIZERS_ENV

#: what ``environment.sandbox`` says: submission code ran in bubblewrap, in a plain child process,
#: or the submission has no code of its own (every press and recipe is the harness's)
SANDBOXES = ("bubblewrap", "none", "no code")
#: seconds a request (setup, a plan, a hook call) may take before the child is stopped
DEFAULT_TIMEOUT_S = 900.0
#: CPU seconds the child may use in all (a runaway press cannot hold a machine for days)
CPU_LIMIT_S = 6 * 3600
#: largest file the child may write (its /tmp is memory)
FILE_LIMIT_BYTES = 1 << 30
#: at most this many QA pairs from a hook, each string at most this long
MAX_PAIRS, MAX_PAIR_CHARS = 10_000, 4_000
#: the longest reply line the harness reads (a plan of a 36-layer model over 20k tokens at 7 rhos is ~7 MB)
MAX_REPLY_CHARS = 64 << 20
_OVERSIZE = object()
#: the environment variable that makes running submission code unsandboxed an error (CI)
REQUIRE_SANDBOX_ENV = "LORAKV_REQUIRE_SANDBOX"


class WorkerError(RuntimeError):
    """The sandboxed process failed (its setup, a request, a time limit, or it died); one line."""


def bwrap_works() -> bool:
    """Whether a bubblewrap sandbox starts here (user namespaces may be disabled)."""
    exe = shutil.which("bwrap")
    if not exe:
        return False
    try:
        return subprocess.run([exe, *_system_binds(), "--dev", "/dev", "--unshare-all", "true"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _system_binds() -> list[str]:
    """The operating system, read-only: /usr, /etc, /sys and the /bin, /lib... links or folders."""
    args = []
    for p in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/sys"):
        if os.path.islink(p):
            args += ["--symlink", os.readlink(p), p]
        elif os.path.isdir(p):
            args += ["--ro-bind", p, p]
    return args


def _python_paths() -> list[Path]:
    """The interpreter and its installed packages (the venv too, wherever it is)."""
    import site
    import sysconfig

    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), Path(sys.executable).resolve().parent}
    paths |= {Path(p) for p in site.getsitepackages()}
    paths |= {Path(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return sorted(p.resolve() for p in paths if p.is_dir())


def _with_link_targets(folder: Path) -> list[Path]:
    """``folder`` and the folders its symbolic links point into (a Hugging Face snapshot links
    every file into the repository's ``blobs/``)."""
    out = {folder.resolve()}
    for f in folder.rglob("*"):
        if f.is_symlink():
            out.add(f.resolve().parent)
    return sorted(out)


def sandbox_args(readable: list[Path], *, device: str = "cpu") -> list[str]:
    """bwrap arguments for a child that sees the system and Python read-only, the package without
    its data, ``readable`` read-only, a private /tmp, no network, and (on CUDA) the GPU devices."""
    args = ["bwrap", *_system_binds(), "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
            "--unshare-all", "--new-session", "--die-with-parent"]
    if device.startswith("cuda"):
        for dev in sorted(Path("/dev").glob("nvidia*")):
            args += ["--dev-bind", str(dev), str(dev)]
    mounts = [*_python_paths(), PACKAGE_DIR, *(p.resolve() for p in readable)]
    # parents before children, so a folder inside another (a venv in /tmp) is mounted over it
    for p in sorted(set(mounts), key=lambda p: len(p.parts)):
        args += ["--ro-bind", str(p), str(p)]
    # the mini datasets with their answers, and the digests of the paper tier's gold answers
    for hidden in (PACKAGE_DIR / "data", PACKAGE_DIR / "specs" / "answers"):
        if hidden.is_dir():
            args += ["--tmpfs", str(hidden)]
    return args


def _limits(device: str):
    """Resource limits for the child, set between fork and exec (bubblewrap and all below it)."""
    def cap(kind: int, value: int) -> None:  # never above a limit this process already has
        _, hard = resource.getrlimit(kind)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(kind, (value, value))

    def apply() -> None:
        cap(resource.RLIMIT_CPU, CPU_LIMIT_S)
        cap(resource.RLIMIT_FSIZE, FILE_LIMIT_BYTES)
        cap(resource.RLIMIT_CORE, 0)
        if not device.startswith("cuda"):  # the CUDA driver reserves far more address space than it uses
            cap(resource.RLIMIT_AS, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        os.setsid()

    return apply


def _child_env() -> dict:
    """A clean environment: nothing of the parent's but the thread count and the path."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp", "TMPDIR": "/tmp",
           "PYTHONPATH": str(PACKAGE_DIR.parent), "PYTHONDONTWRITEBYTECODE": "1",
           "LORAKV_CACHE": "/tmp/lorakv-cache", "HF_HOME": "/tmp/hf", "XDG_CACHE_HOME": "/tmp/cache",
           **OFFLINE_ENV, **TOKENIZERS_ENV, SUBMISSION_PROCESS_ENV: "1"}
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "CUDA_VISIBLE_DEVICES"):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


@dataclass
class SubmissionProcess:
    """The harness's handle on the sandboxed child that runs one submission's own code."""

    proc: subprocess.Popen
    sandbox: str
    timeout: float
    inbox: Path  # adapters handed to the child, read-only there
    replies: queue.Queue = field(default_factory=queue.Queue)
    model_dir: Path | None = None
    _tmp: tempfile.TemporaryDirectory | None = None

    @classmethod
    def start(cls, submission_dir: str | Path, *, model=None, tokenizer=None, device: str = "cpu",
              timeout: float = DEFAULT_TIMEOUT_S, sandbox: bool = True) -> SubmissionProcess:
        """Start the child for the submission folder. ``model`` (with its tokenizer) is needed when
        the press is the submission's own: the child loads the same weights from the model's folder
        (an in-memory model is saved to a private folder first)."""
        tmp = tempfile.TemporaryDirectory(prefix="lorakv-sandbox-")
        inbox = Path(tmp.name) / "inbox"
        inbox.mkdir()
        model_dir = _model_folder(model, tokenizer, Path(tmp.name)) if model is not None else None
        folder = Path(submission_dir).resolve()
        cmd = [sys.executable, "-m", "benchmark.trust.worker"]
        use_bwrap = sandbox and bwrap_works()
        if use_bwrap:
            readable = [folder, inbox, *(_with_link_targets(model_dir) if model_dir else [])]
            cmd = sandbox_args(readable, device=device) + cmd
        elif os.environ.get(REQUIRE_SANDBOX_ENV) == "1":
            tmp.cleanup()
            raise WorkerError(f"{REQUIRE_SANDBOX_ENV}=1 and bubblewrap does not run here: submission code in {folder} "
                              "is not run unsandboxed (install Debian's bubblewrap, allow user namespaces)")
        else:
            print(f"warning: bubblewrap is not available here; the code of {folder.name} runs in an unsandboxed "
                  "process (it returns only data, which is checked, but it can read the disk and the network); "
                  "environment.sandbox = none", file=sys.stderr)
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_child_env(),
                                cwd=tmp.name if not use_bwrap else "/tmp", preexec_fn=_limits(device))
        run = cls(proc, "bubblewrap" if use_bwrap else "none", timeout, inbox, model_dir=model_dir, _tmp=tmp)
        threading.Thread(target=run._read, daemon=True).start()
        dtype = str(getattr(model, "dtype", "float32")).removeprefix("torch.") if model is not None else None
        run._send({"submission": str(folder), "model_dir": str(model_dir) if model_dir else None, "device": device,
                   "dtype": dtype})
        try:
            run._receive("setup (importing the submission's code, loading the model)")
        except BaseException:
            run.close()
            raise
        return run

    def _read(self) -> None:
        while line := self.proc.stdout.readline(MAX_REPLY_CHARS + 1):
            if len(line) > MAX_REPLY_CHARS:  # an endless line would fill the harness's memory
                self.replies.put(_OVERSIZE)
                return
            self.replies.put(line)
        self.replies.put(None)

    def _send(self, msg: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the child is gone; _receive says so

    def _receive(self, stage: str) -> dict:
        try:
            line = self.replies.get(timeout=self.timeout)
        except queue.Empty:
            self.kill()
            raise WorkerError(f"sandbox: {stage} took longer than {self.timeout:.0f} s and was stopped "
                              "(--worker-timeout)") from None
        if line is _OVERSIZE:
            self.kill()
            raise WorkerError(f"sandbox: {stage}: a reply longer than {MAX_REPLY_CHARS} characters")
        if line is None:
            self.proc.wait()
            raise WorkerError(f"sandbox: the submission's process ended during {stage} (exit code "
                              f"{self.proc.returncode}); see its output above")
        try:
            msg = json.loads(line)
            if not isinstance(msg, dict):
                raise ValueError("not an object")
        except ValueError:
            self.kill()
            raise WorkerError(f"sandbox: {stage}: the reply is not a JSON object") from None
        if "error" in msg:
            raise WorkerError(f"sandbox: {stage}: {str(msg['error'])[:500]}")
        return msg

    def plan(self, input_ids: list[int], doc_span: tuple[int, int], rhos: list[float], budget: str,
             adapter: Path | None = None, where: str = "plan") -> dict[float, object]:
        """The submission press's keep masks for ``rhos`` (undecoded plan data, see
        :func:`benchmark.protocol.plan.decode`), with the adapter folder ``adapter`` enabled if given."""
        from ..protocol.plan import decode

        shared = None
        if adapter is not None:
            shared = self.inbox / adapter.name
            if not shared.exists():
                shutil.copytree(adapter, shared)
        self._send({"op": "plan", "input_ids": list(input_ids), "span": list(doc_span), "rhos": list(rhos),
                    "budget": budget, "adapter": str(shared) if shared else None})
        msg = self._receive(where)
        masks = msg.get("plans")
        if not isinstance(masks, dict) or set(masks) != {repr(float(r)) for r in rhos}:
            raise WorkerError(f"sandbox: {where}: expected a plan for each of rho={list(rhos)}")
        return {float(r): decode(masks[repr(float(r))], f"{where}, rho={r}") for r in rhos}

    def qa_pairs(self, hook: str, view) -> list[tuple[str, str]]:
        """The hook's QA pairs for a TrainingView, checked: a non-empty list of (question, answer)
        strings, at most :data:`MAX_PAIRS`, each at most :data:`MAX_PAIR_CHARS` characters."""
        where = f"hook {hook} on document {view.doc_id}"
        self._send({"op": "qa_pairs", "hook": hook,
                    "view": {"doc_id": view.doc_id, "text": view.text, "train_qa": [list(p) for p in view.train_qa]}})
        pairs = self._receive(where).get("pairs")
        if not isinstance(pairs, list) or not 0 < len(pairs) <= MAX_PAIRS:
            raise WorkerError(f"sandbox: {where}: expected a non-empty list of at most {MAX_PAIRS} pairs")
        out = []
        for i, p in enumerate(pairs):
            if not (isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) and 0 < len(s) <= MAX_PAIR_CHARS
                                                                for s in p)):
                raise WorkerError(f"sandbox: {where}: pair {i} is not two non-empty strings of at most "
                                  f"{MAX_PAIR_CHARS} characters")
            out.append((p[0], p[1]))
        return out

    def forget_adapter(self, adapter: Path) -> None:
        shutil.rmtree(self.inbox / adapter.name, ignore_errors=True)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except OSError:
                self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _model_folder(model, tokenizer, tmp: Path) -> Path:
    """A folder ``from_pretrained`` loads this model from: where it was loaded from, else (a model
    built in memory) a copy saved into the sandbox's private folder."""
    where = getattr(getattr(model, "config", None), "name_or_path", "") or ""
    if where and Path(where).is_dir():
        return Path(where).resolve()
    if where:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(where, local_files_only=True))
        except Exception:  # noqa: BLE001 - not in the local hub cache: saved below
            pass
    out = tmp / "model"
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


# ---------------------------------------------------------------- the child


class _Child:
    """The sandboxed side: the submission's press (and the model it scores with) and its hooks."""

    def __init__(self, setup: dict):
        from ..protocol.submission import load_submission

        self.submission = load_submission(setup["submission"])
        self.device = setup["device"]
        self.press = self.submission.make_compressor() if self.submission.press_is_code else None
        self.model = self.tokenizer = None
        if self.press is not None:
            from ..protocol.models import load_pretrained

            self.model, self.tokenizer = load_pretrained(setup["model_dir"], self.device, setup["dtype"])
        self.adapter = None

    def plan(self, req: dict) -> dict:
        import torch
        from peft.helpers import DoraCaching

        from ..protocol.adapters import adapter_state, attach_saved, detach_adapter, direct_dora_lora_weight
        from ..protocol.compression import prefill
        from ..protocol.plan import encode, plan_from_scores

        if self.press is None:
            raise ValueError("this submission's press is not its own code; the harness computes its plan")
        if self.adapter and self.adapter != req["adapter"]:
            detach_adapter(self.model, "doc")
            self.adapter = None
        if req["adapter"] and not self.adapter:
            attach_saved(self.model, "doc", Path(req["adapter"]), self.submission.recipe)
            self.adapter = req["adapter"]
        start, end = req["span"]
        rhos = [float(r) for r in req["rhos"]]
        with torch.random.fork_rng(devices=[]), DoraCaching(), direct_dora_lora_weight():
            torch.manual_seed(0)
            with adapter_state(self.model, bool(self.adapter)):
                _, scores = prefill(self.model, req["input_ids"], (start, end), self.press, rhos,
                                    tokenizer=self.tokenizer, budget=req["budget"])
        budget = req["budget"]
        return {"plans": {repr(r): encode(plan_from_scores(scores, end - start, r, budget)) for r in rhos}}

    def qa_pairs(self, req: dict) -> dict:
        from ..config import train_blocks
        from ..paths import import_from
        from ..protocol.datasets import TrainingView

        hooks = {t.get("hook") for t in train_blocks(self.submission.raw["adapter"]).values()}
        if req["hook"] not in hooks - {None}:
            raise ValueError(f"'{req['hook']}' is not a hook of this submission")
        v = req["view"]
        view = TrainingView(v["doc_id"], v["text"], tuple(tuple(p) for p in v["train_qa"]))
        out = import_from(self.submission.path, req["hook"])(view)
        return {"pairs": [[p["question"], p["answer"]] for p in out]}


def _serve() -> None:
    """The child: set up from the first message, then answer one request per line."""
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything printed by libraries or submission code goes to stderr, not the protocol
    sys.stdout = sys.stderr

    def send(msg: dict) -> None:
        proto.write(json.dumps(msg) + "\n")
        proto.flush()

    setup = json.loads(sys.stdin.readline())
    try:
        child = _Child(setup)
    except Exception as exc:  # noqa: BLE001 - reported to the harness, which fails with it
        send({"error": f"setup failed: {type(exc).__name__}: {exc}"})
        return
    send({"ready": True})
    for line in sys.stdin:
        req = json.loads(line)
        try:
            send(getattr(child, req["op"])(req) if req.get("op") in ("plan", "qa_pairs") else
                 {"error": f"unknown request {req.get('op')!r}"})
        except Exception as exc:  # noqa: BLE001
            send({"error": f"{type(exc).__name__}: {exc}"})
    if child.model is not None:  # its own figure: in bubblewrap it is not the harness's child
        print(f"sandbox process (the submission's press): peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB", file=sys.stderr, flush=True)


if __name__ == "__main__":
    _serve()
    sys.stderr.flush()
    os._exit(0)  # without the interpreter's teardown (seconds with torch loaded): every reply is sent
