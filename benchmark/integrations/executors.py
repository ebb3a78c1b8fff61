"""Executors: run the protocol past one machine.

Work units are (model, dataset, document) and independent. ``run_on_ray`` submits one Ray task per
unit -- ``runner.evaluate(request)`` with ``datasets=[ds], shard=(i, n)`` writes ``<dataset>.shard-i-of-n.json`` --
and merges each dataset's shards into exactly the unsharded result. Scheduling, GPU placement and
retries are Ray's; nothing here schedules. The result directory ``out`` must be shared by all nodes
(one machine, or a network filesystem).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tqdm.auto import tqdm

from ..config import EvalRequest, as_request
from ..protocol import runner
from ..protocol.datasets import is_data_file, load_split, resolve_dataset
from ..protocol.evaluator import LOADERS, Loaders
from ..protocol.models import resolve_model
from ..protocol.results import merge_shards, result_path
from ..protocol.submission import load_submission


def _unit(request: EvalRequest, loaders: Loaders) -> list[str]:
    """One work unit, inside a Ray worker."""
    return [str(p) for p in runner.evaluate(request, loaders=loaders)]


def run_on_ray(request: EvalRequest | str | Path, *, address: str | None = None, num_gpus_per_task: float | None = None,
               loaders: Loaders = LOADERS, **options) -> list[Path]:
    """Run every (dataset, document) of one model as a Ray task; returns the merged result files.

    ``request`` is an :class:`~benchmark.config.EvalRequest` (or a submission path with its fields
    as ``options``); each task runs it with one dataset and one shard, without a progress bar.
    ``address`` is a Ray cluster address (None: a local instance, or the one already initialised).
    Each task declares one CPU and ``num_gpus_per_task`` GPUs if given, else 1 GPU when ``device`` is
    cuda or is None on a cluster with GPUs. A local instance gets Ray's defaults (all CPUs and GPUs).
    Shard files are removed once merged into ``<dataset>.json``. An interrupted or failed run keeps
    them, and rerunning resumes each unit; a rerun after a complete merge recomputes every unit
    (adapters come from the cache) and rewrites the merged file.

    ``loaders`` (:class:`~benchmark.protocol.evaluator.Loaders`) are pickled to every task, which loads the
    spec and the model with them; the units themselves are listed in this process with
    ``loaders.load_spec``. Loaders of one's own must pickle (module-level functions, partials of them).
    """
    req = as_request(request, **options)
    try:
        import ray
    except ImportError:
        raise ImportError("the Ray executor needs Ray: pip install 'lorakv-bench[ray]'") from None

    spec = loaders.load_spec(req.tier)
    model_id = req.model_id
    model_spec = resolve_model(spec, model_id)  # a spec id, or a model folder / Hub id of one's own
    if model_id is not None and Path(model_id).expanduser().is_dir():
        model_id = str(Path(model_id).expanduser().resolve())  # a Ray worker may start elsewhere
    sub_name = load_submission(req.submission).name
    units = []  # (dataset id, i, n)
    stems = {}  # unit dataset (an id, or a JSONL file's absolute path for the workers) -> result file stem
    for ds_id in req.datasets or [d.id for d in spec.datasets]:
        ds_spec = resolve_dataset(spec, ds_id)
        n = len(load_split(ds_spec.split(req.split))[:req.docs])
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
            gpus = int((req.device or "").startswith("cuda") or (req.device is None and has_gpus))
        task = ray.remote(num_cpus=1, num_gpus=gpus)(_unit)
        # what every unit shares: absolute paths (a Ray worker may start elsewhere), no progress bar
        common = dataclasses.replace(req, submission=str(Path(req.submission).resolve()),
                                     out=str(Path(req.out).resolve()), model_id=model_id, progress=False)
        refs = {task.remote(dataclasses.replace(common, datasets=[ds], shard=(i, n)), loaders): (ds, i, n)
                for ds, i, n in units}
        shards: dict[str, list[Path]] = {}
        failed, failed_ds = [], set()
        pending = list(refs)
        with tqdm(total=len(refs), desc=f"ray {model_spec.id}", unit="doc", disable=not req.progress) as bar:
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
        merged.append(merge_shards(sorted(paths), result_path(req.out, sub_name, spec.tier, model_spec.id, stems[ds],
                                                              req.split)))
        for p in paths:
            p.unlink()
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(units)} work units failed (shards kept for resume):\n  "
                           + "\n  ".join(line for line, _ in failed)) from failed[0][1]
    return merged
