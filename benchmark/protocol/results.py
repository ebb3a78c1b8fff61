"""Stage: results. Result records, their aggregation into (rho, condition) cells, and the
result file: one JSON per (submission, tier, model, dataset), rewritten after every document
so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
from collections import defaultdict
from pathlib import Path

from ..config import UNRECORDED_BATCHING, EvalRequest, uses_adapter
from .metrics import clustered_bootstrap_ci
from .spec import SpecError, validate_against

FORMAT = "lorakv-bench-result/1"


def result_path(root: str | Path, submission: str, tier: str, model: str, dataset: str, split: str = "test",
                shard: tuple[int, int] | None = None) -> Path:
    """Where a result lives: ``<root>/<submission>/<tier>/<model>/<dataset>[.<split>][.shard-i-of-n].json``,
    the split named unless it is ``test``, the shard for a shard's own file (``--shard i/n``). The one
    place the rule is written; :func:`result_path_of` reads it off a result's header."""
    stem = dataset + ("" if split == "test" else f".{split}") + (f".shard-{shard[0]}-of-{shard[1]}" if shard else "")
    return Path(root) / submission / tier / model_dir(model) / f"{stem}.json"


def result_path_of(root: str | Path, data: dict) -> Path:
    """Where the result ``data`` (a loaded result file, unsharded) lives under ``root``."""
    return result_path(root, data["submission"]["name"], data["tier"], data["model"]["id"], data["dataset"]["id"],
                       data["dataset"]["split"])


def model_dir(model_id: str) -> str:
    """The folder of a model's results: its id, with a Hub id's "/" written "--" (as the HF cache does)."""
    return model_id.replace("/", "--")


def environment(device: str, dtype: str | None = None) -> dict:
    """Library versions and the hardware; ``dtype`` is the dtype the model ran in (float32, bfloat16)
    and ``gpu_name`` the GPU's name on CUDA: the leaderboard shows both and never ranks dtypes together."""
    import kvpress  # noqa: F401
    import peft
    import torch
    import transformers

    from .. import __version__

    env = {
        "lorakv_bench": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__,
        "kvpress": _dist_version("kvpress"), "device": device, "torch_threads": torch.get_num_threads(),
    }
    if dtype is not None:
        env["dtype"] = dtype
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu_name"] = torch.cuda.get_device_name(torch.device(device))
    return env


def _dist_version(name: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "unknown"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def aggregate(predictions: list[dict], documents: list[dict]) -> list[dict]:
    """Per (rho, condition): mean ROUGE-L and EM (points), a 95% CI clustered by document, and memory."""
    adapter_bytes = {d["doc_id"]: (d.get("adapter") or {}).get("bytes", 0) for d in documents}
    groups: dict[tuple[float, str], list[dict]] = defaultdict(list)
    for p in predictions:
        groups[(p["rho"], p["condition"])].append(p)
    cells = []
    for (rho, cond), preds in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        docs = [p["doc_id"] for p in preds]
        rl = [p["rouge_l"] for p in preds]
        lo, hi = clustered_bootstrap_ci(rl, docs)
        per_doc: dict[str, dict] = {}
        for p in preds:
            per_doc[p["doc_id"]] = p
        kv_bytes = sum(p["kv_bytes"] for p in per_doc.values()) / len(per_doc)
        ad_bytes = sum(adapter_bytes.get(d, 0) for d in per_doc) / len(per_doc) if uses_adapter(cond) else 0
        cells.append({
            "rho": rho, "condition": cond, "n_questions": len(preds), "n_documents": len(per_doc),
            "rouge_l": sum(rl) / len(rl), "rouge_l_ci95": [lo, hi],
            "exact_match": sum(p["exact_match"] for p in preds) / len(preds),
            "kv_entries": sum(p["kv_entries"] for p in per_doc.values()) / len(per_doc),
            "kv_bytes": kv_bytes, "adapter_bytes": ad_bytes, "memory_bytes": kv_bytes + ad_bytes,
        })
    return cells


#: Header fields that make a result file's identity: a run resumes a file only if all are equal.
#: ``decoding`` is what of ``environment`` decides the generations (device kind, dtype, batch size,
#: batching): a file's documents must all have been decoded alike, as verify re-runs them.
IDENTITY = ("spec_hash", "submission", "model", "dataset", "tier", "rhos", "conditions", "slice", "decoding")


class ResultFile:
    """The on-disk result of one (submission, tier, model, dataset, slice); resumable.

    Several processes may write one file at once (two runs, or shards of the ``ray`` executor on
    one disk): every write holds an exclusive ``fcntl.flock`` on ``<file>.lock``, merges this
    document into what is on disk then, and replaces the file atomically (a unique temporary
    name, fsync, rename), so nothing another process wrote is lost and a crash never leaves a
    half-written file."""

    def __init__(self, path: Path, header: dict):
        self.path = Path(path)
        self.data = {"format": FORMAT, **header, "created": now(), "updated": now(),
                     "documents": [], "predictions": [], "cells": []}
        self._header = header
        with file_lock(self.path):
            old = self._read_existing()
        if old is not None:
            self.data.update({k: old[k] for k in ("created", "documents", "predictions")})

    def _read_existing(self) -> dict | None:
        """The file on disk, checked to be a result of this very run (identity and slice), or None."""
        if not self.path.exists():
            return None
        try:
            old = json.loads(self.path.read_text(encoding="utf-8"))
            validate_against("result.schema.json", old, str(self.path))
        except (json.JSONDecodeError, UnicodeDecodeError, SpecError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SpecError(f"{self.path}: cannot resume, the file is not a valid result file ({first}); "
                            "move it away to start fresh") from None
        for key in IDENTITY:
            if _identity(old, key) != _identity(self._header, key):
                what = {"submission": "submission (hash)", "slice": "slice (--docs / --questions)",
                        "rhos": "rhos (--rhos)", "conditions": "conditions (--conditions)",
                        "decoding": "decoding (--device, --dtype, --batch-size, batching)"}.get(key, key)
                raise SpecError(
                    f"{self.path}: field '{key}': this file holds {what} {_identity(old, key)!r}, this run asks for "
                    f"{_identity(self._header, key)!r}; resume with the same settings, "
                    "or pass another --out to start fresh"
                )
        return old

    def done(self) -> set[tuple[str, float, str]]:
        return {(p["doc_id"], p["rho"], p["condition"]) for p in self.data["predictions"]}

    def add_document(self, doc_record: dict, predictions: list[dict]) -> None:
        """Replace this document's record and predictions, merged under the lock with what other
        processes wrote meanwhile."""
        with file_lock(self.path):
            disk = self._read_existing()
            if disk is not None:
                self.data["created"] = disk["created"]
                self.data["documents"], self.data["predictions"] = disk["documents"], disk["predictions"]
            doc_id = doc_record["doc_id"]
            old = next((d for d in self.data["documents"] if d["doc_id"] == doc_id), None)
            if old and not doc_record.get("adapter") and old.get("adapter"):
                doc_record["adapter"] = old["adapter"]
            self.data["documents"] = [d for d in self.data["documents"] if d["doc_id"] != doc_id] + [doc_record]
            self.data["predictions"] = ([p for p in self.data["predictions"] if p["doc_id"] != doc_id]
                                        + list(predictions))
            self.save()

    def save(self, keep_updated: bool = False) -> None:
        self.data["documents"].sort(key=lambda d: d["doc_id"])
        self.data["predictions"].sort(key=lambda p: (p["doc_id"], p["question_id"], p["rho"], p["condition"]))
        self.data["cells"] = aggregate(self.data["predictions"], self.data["documents"])
        if not keep_updated:
            self.data["updated"] = now()
        validate_against("result.schema.json", self.data, str(self.path))
        write_atomic(self.path, json.dumps(self.data, indent=1, ensure_ascii=False) + "\n")


def _identity(data: dict, key: str):
    """``data[key]``; a missing slice (files written before it was recorded) is a full-split run
    (publish still checks the coverage). ``decoding`` is read from ``environment``, with verify's
    defaults for what files written before it was recorded lack."""
    if key == "slice":
        return data.get("slice") or {"docs": None, "questions": None}
    if key == "decoding":
        env = data.get("environment") or {}
        return {"device": str(env.get("device") or "cpu").split(":")[0], "dtype": env.get("dtype"),
                "batch_size": env.get("batch_size", EvalRequest.batch_size),
                "batching": env.get("batching", UNRECORDED_BATCHING)}
    return data.get(key)


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive advisory lock on ``<path>.lock``, held until the block ends (released if the
    process dies); the lock file is removed on release, so none is left beside the result.

    Removal is safe because only the holder removes it, before unlocking: a process that was
    waiting on the removed file (or opened it just before) finds, once it holds it, that the path
    no longer names that file, and locks the current one instead."""
    import fcntl

    path = Path(path)
    lock = path.with_name(path.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        f = open(lock, "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                current = os.path.samestat(os.fstat(f.fileno()), os.stat(lock))
            except FileNotFoundError:
                current = False
        except BaseException:
            f.close()
            raise
        if current:
            break
        f.close()  # a lock on a removed file excludes nobody: take the one the path names now
    try:
        yield
    finally:
        try:
            lock.unlink(missing_ok=True)
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()


def _umask() -> int:
    """The process umask, read without changing it where Linux reports it (another thread may be
    creating files); elsewhere set and restored at once."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old or the new file, never a partial one:
    a unique temporary file in the same folder, fsync, rename, fsync of the folder. The file gets
    the mode ``open()`` would give it (0644 under the usual umask), not mkstemp's private 0600:
    result files are shared and published."""
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load_result(path: str | Path) -> dict:
    """A result file's data, checked against ``result.schema.json`` (once per process for each
    content: the schema check of a result file is most of the time it takes to load)."""
    path = Path(path)
    blob = path.read_bytes()
    try:
        data = json.loads(blob.decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    digest = hashlib.sha256(blob).hexdigest()
    if digest not in _SCHEMA_VALID:
        validate_against("result.schema.json", data, str(path))
        _SCHEMA_VALID.add(digest)
    return data


#: sha256 of result-file contents that passed the schema check in this process
_SCHEMA_VALID: set[str] = set()


def merge_shards(paths: list[str | Path], out: str | Path) -> Path:
    """Join shard result files (``--shard i/n``) into one: the same predictions, documents and
    cells as a single unsharded run (cells are recomputed from the union of predictions)."""
    datas = [load_result(p) for p in paths]
    first = datas[0]
    for p, d in zip(paths, datas):
        for key in IDENTITY:
            if d.get(key) != first.get(key):
                raise SpecError(f"{p}: field '{key}' differs from {paths[0]}; these are not shards of one run")
    seen: dict[str, str] = {}
    for p, d in zip(paths, datas):
        for doc in d["documents"]:
            if doc["doc_id"] in seen:
                raise SpecError(f"{p}: document '{doc['doc_id']}' is also in {seen[doc['doc_id']]}")
            seen[doc["doc_id"]] = str(p)
    header = {k: first[k] for k in ("submission", "tier", "spec_version", "spec_hash", "model", "dataset", "rhos",
                                    "conditions", "environment")}
    if "slice" in first:
        header["slice"] = first["slice"]
    merged = ResultFile.__new__(ResultFile)
    merged.path = Path(out)
    merged.data = {"format": FORMAT, **header, "created": min(d["created"] for d in datas),
                   "updated": max(d["updated"] for d in datas),
                   "documents": [doc for d in datas for doc in d["documents"]],
                   "predictions": [p for d in datas for p in d["predictions"]], "cells": []}
    merged.save(keep_updated=True)
    return merged.path
