"""Executors: run the protocol past one machine.

Work units are (model, dataset, document) and independent. ``run_on_ray`` submits one Ray task per
unit -- ``runner.evaluate(..., datasets=[ds], shard=(i, n))`` writes ``<dataset>.shard-i-of-n.json`` --
and merges each dataset's shards into exactly the unsharded result. Scheduling, GPU placement and
retries are Ray's; nothing here schedules. The result directory ``out`` must be shared by all nodes
(one machine, or a network filesystem).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from tqdm.auto import tqdm

from . import runner
from .datasets import is_data_file, load_split, resolve_dataset
from .results import merge_shards, result_path
from .submission import load_submission


def _unit(submission_path, kwargs: dict, runner_hook: str | None) -> list[str]:
    """One work unit, inside a Ray worker."""
    if runner_hook:
        module, _, func = runner_hook.partition(":")
        getattr(importlib.import_module(module), func)()
    return [str(p) for p in runner.evaluate(submission_path, progress=False, worker_setup=runner_hook, **kwargs)]


def run_on_ray(
    submission_path: str | Path, *, tier: str = "mini", model_id: str | None = None, datasets: list[str] | None = None,
    docs: int | None = None, questions: int | None = None, rhos: list[float] | None = None,
    conditions: list[str] | None = None, device: str | None = None, out: str | Path = "runs",
    address: str | None = None, num_gpus_per_task: float | None = None, runner_hook: str | None = None,
    split: str = "test", batch_size: int = 64, progress: bool = True, dtype: str | None = None,
) -> list[Path]:
    """Run every (dataset, document) of one model as a Ray task; returns the merged result files.

    ``address`` is a Ray cluster address (None: a local instance, or the one already initialised).
    Each task declares one CPU and ``num_gpus_per_task`` GPUs if given, else 1 GPU when ``device`` is
    cuda or is None on a cluster with GPUs. A local instance gets Ray's defaults (all CPUs and GPUs).
    Shard files are removed once merged into ``<dataset>.json``. An interrupted or failed run keeps
    them, and rerunning resumes each unit; a rerun after a complete merge recomputes every unit
    (adapters come from the cache) and rewrites the merged file.

    ``runner_hook`` ("module:function") is a test seam: called in each worker before ``evaluate``,
    e.g. to monkeypatch ``benchmark.runner.load_model`` with a tiny model. The units themselves are
    listed in this process with ``runner.load_spec``.
    """
    try:
        import ray
    except ImportError:
        raise ImportError("the Ray executor needs Ray: pip install 'lorakv-bench[ray]'") from None

    spec = runner.load_spec(tier)
    model_spec = spec.model(model_id)
    sub_name = load_submission(submission_path).name
    submission_path = str(Path(submission_path).resolve())
    units = []  # (dataset id, i, n)
    stems = {}  # unit dataset (an id, or a JSONL file's absolute path for the workers) -> result file stem
    for ds_id in datasets or [d.id for d in spec.datasets]:
        ds_spec = resolve_dataset(spec, ds_id)
        n = len(load_split(ds_spec.split(split))[:docs])
        ds_id = str(Path(ds_id).resolve()) if is_data_file(ds_id) else ds_id
        stems[ds_id] = ds_spec.id
        units += [(ds_id, i, n) for i in range(n)]

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, logging_level="warning")
    try:
        if num_gpus_per_task is not None:
            gpus = num_gpus_per_task
        else:  # like pick_device: cuda when asked, or by default when the cluster has GPUs
            has_gpus = ray.cluster_resources().get("GPU", 0) > 0
            gpus = int((device or "").startswith("cuda") or (device is None and has_gpus))
        task = ray.remote(num_cpus=1, num_gpus=gpus)(_unit)
        common = dict(tier=tier, model_id=model_id, split=split, docs=docs, questions=questions, rhos=rhos,
                      conditions=conditions, device=device, out=str(Path(out).resolve()), batch_size=batch_size,
                      dtype=dtype)
        refs = {task.remote(submission_path, {**common, "datasets": [ds], "shard": (i, n)}, runner_hook): (ds, i, n)
                for ds, i, n in units}
        shards: dict[str, list[Path]] = {}
        failed, failed_ds = [], set()
        pending = list(refs)
        with tqdm(total=len(refs), desc=f"ray {model_spec.id}", unit="doc", disable=not progress) as bar:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                ds, i, n = refs[ready[0]]
                try:
                    shards.setdefault(ds, []).extend(Path(p) for p in ray.get(ready[0]))
                except Exception as exc:  # noqa: BLE001 - keep the other units running, report all at the end
                    cause = getattr(exc, "cause", None) or exc  # a RayTaskError wraps the worker's exception
                    failed.append((f"{ds} document {i} of {n}: {type(cause).__name__}: {cause}", exc))
                    failed_ds.add(ds)
                bar.update()
    finally:
        if started:
            ray.shutdown()

    merged = []
    for ds, paths in shards.items():
        if ds in failed_ds:
            continue  # keep its shards: a rerun resumes them
        stem = stems[ds] + ("" if split == "test" else f".{split}")
        merged.append(merge_shards(sorted(paths), result_path(out, sub_name, spec.tier, model_spec.id, stem)))
        for p in paths:
            p.unlink()
            p.with_name(p.name + ".lock").unlink(missing_ok=True)  # the shard's write lock (results.file_lock)
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(units)} work units failed (shards kept for resume):\n  "
                           + "\n  ".join(line for line, _ in failed)) from failed[0][1]
    return merged
