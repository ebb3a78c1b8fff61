"""Where things live: the package's own files and the on-disk cache (``LORAKV_CACHE``)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

#: what keeps the Hugging Face libraries off the network, and their tokenizers single-threaded
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
TOKENIZERS_ENV = {"TOKENIZERS_PARALLELISM": "false"}


def set_offline(hub: bool = False) -> None:
    """Default the process's environment to offline (``OFFLINE_ENV``) and quiet tokenizers; a value the
    user set wins. ``hub=True`` (prepare-data, the paper tier, which may download) leaves the hub
    variables to the user. Call it before transformers or datasets is imported: they read them then."""
    for var, value in (TOKENIZERS_ENV if hub else OFFLINE_ENV | TOKENIZERS_ENV).items():
        os.environ.setdefault(var, value)


def cache_dir() -> Path:
    """``$LORAKV_CACHE``, else ``$XDG_CACHE_HOME/lorakv-bench``, else ``~/.cache/lorakv-bench``."""
    env = os.environ.get("LORAKV_CACHE")
    if env:
        path = Path(env)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base) / "lorakv-bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_hash(obj, length: int = 16) -> str:
    """Hash of a JSON-serialisable object, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def folder_files(folder: Path, skip: tuple[str, ...] = ()) -> dict:
    """Every file below ``folder`` (``__pycache__`` and the relative paths in ``skip`` left out),
    keyed by relative path: text as text, other bytes by their sha256. What a submission's code
    is, for its hash and its adapters' cache keys."""
    files = {}
    for p in sorted(Path(folder).rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or "__pycache__" in rel.parts or rel.as_posix() in skip:
            continue
        blob = p.read_bytes()
        try:
            files[rel.as_posix()] = blob.decode("utf-8")
        except UnicodeDecodeError:
            files[rel.as_posix()] = {"sha256": hashlib.sha256(blob).hexdigest()}
    return files


#: set in the sandboxed process (benchmark.trust.worker), the only one that imports submission code
SUBMISSION_PROCESS_ENV = "LORAKV_SUBMISSION_PROCESS"


def in_submission_process() -> bool:
    """Whether this process is the sandbox that runs submission code (never the harness)."""
    return os.environ.get(SUBMISSION_PROCESS_ENV) == "1"


def submission_module_file(code_dir, module_name: str) -> Path:
    """The ``.py`` file of ``module_name`` inside the submission folder ``code_dir``.

    Submission code comes from its folder only: ``os``, ``subprocess`` or any other importable
    module is refused here, before anything is imported. Raises ValueError naming the folder."""
    if code_dir is None:
        raise ValueError(f"'{module_name}' is not in a submission folder (module:attr refers to a .py file in "
                         "the submission folder)")
    root = Path(code_dir).resolve()
    parts = module_name.split(".")
    if not all(p.isidentifier() for p in parts):
        raise ValueError(f"'{module_name}' is not a module name")
    base = root.joinpath(*parts)
    for file in (base.with_suffix(".py"), base / "__init__.py"):
        if file.is_file() and file.resolve().is_relative_to(root):
            return file.resolve()
    raise ValueError(f"module '{module_name}' is not a .py file in the submission folder {root} "
                     f"(looked for {'/'.join(parts)}.py); only the submission's own code may be imported")


_IMPORTS = itertools.count()


def import_from(code_dir, ref: str):
    """``module:attr`` from the submission folder ``code_dir``, imported under a unique name and
    removed from ``sys.modules`` afterwards (with any sibling module it imported), so two
    submissions with a ``press.py`` never share a module and nothing stays behind.

    A module that calls ``sys.exit`` while importing raises RuntimeError (a failure, not an exit).
    Only the sandboxed process may import submission code: elsewhere this raises RuntimeError, so
    the harness cannot run it by mistake."""
    import importlib.util

    if not in_submission_process():
        raise RuntimeError(f"'{ref}' is submission code; it is imported only in the sandbox (benchmark.trust.worker), "
                           "never in the harness")

    module_name, attr = ref.split(":", 1)
    file = submission_module_file(code_dir, module_name)
    root = str(Path(code_dir).resolve())
    unique = f"_lorakv_submission_{next(_IMPORTS)}_{module_name.replace('.', '_')}"
    spec = importlib.util.spec_from_file_location(unique, file)
    module = importlib.util.module_from_spec(spec)
    before = set(sys.modules)
    sys.modules[unique] = module  # dataclasses look their module up while the class is created
    sys.path.insert(0, root)  # sibling modules of the submission may import each other
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:
        raise RuntimeError(f"{file}: importing it called sys.exit({exc.code!r})") from None
    finally:
        sys.path.remove(root)
        for name in set(sys.modules) - before:
            mod_file = getattr(sys.modules[name], "__file__", None) or ""
            if name == unique or (mod_file and Path(mod_file).resolve().is_relative_to(root)):
                del sys.modules[name]
    if not hasattr(module, attr):
        raise AttributeError(f"{file} has no attribute '{attr}'")
    return getattr(module, attr)
