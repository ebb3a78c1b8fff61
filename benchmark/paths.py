"""Where things live: the package's own files and the on-disk cache (``LORAKV_CACHE``)."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


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


def import_from(code_dir, ref: str):
    """``module:attr`` imported from a submission folder (put first on ``sys.path`` for the import only)."""
    module_name, attr = ref.split(":", 1)
    if code_dir is None:
        return getattr(importlib.import_module(module_name), attr)
    sys.path.insert(0, str(code_dir))
    try:
        return getattr(importlib.import_module(module_name), attr)
    finally:
        sys.path.remove(str(code_dir))
