"""lm-evaluation-harness integration: the ``lorakv`` model and the ``lorakv-lm-eval`` command.

``lorakv`` is an lm-eval ``LM`` that answers the ``lorakv_*`` tasks (``benchmark/integrations/lm_eval_tasks/``)
with a submission at one (rho, condition) cell, through the same code path as
``lorakv-bench evaluate``: requests are grouped by document, the document is rebuilt (text, the
requested questions, and its ``train_qa`` from the tier's data files, which the adapter recipe
trains on) and :meth:`benchmark.protocol.runner.DocumentRun.evaluate` answers them. The task's
``process_results`` then extracts and scores each generation exactly as the runner does (the
tier spec's :class:`~benchmark.protocol.metrics.Scoring`), so per-question numbers match the result files:
lm-eval reports them on its 0-1 scale, result files hold the same numbers x100 (``metrics.SCALE``,
applied in ``Scoring.score`` only). Usage::

    lorakv-lm-eval --model lorakv \\
        --model_args submission=submissions/snapkv,rho=0.9,condition=base_kv_adapter_decode \\
        --tasks lorakv_mini_narrative --limit 2

model_args: ``submission`` (folder), ``rho`` (fraction of the document's KV entries evicted),
``condition`` (one of :data:`benchmark.protocol.spec.CONDITIONS`), optional ``tier`` (mini), ``model`` (a
model id of the tier's spec, default the spec's default; or a model folder / Hub id of one's own, as
``lorakv-bench evaluate --model``), ``device`` (default: cuda when present), ``batch_size`` (rows
decoded together; default: the runner's, as ``lorakv-bench evaluate``).

One ``lorakv-lm-eval`` call sweeps several cells: ``rho=0.5|0.9,condition=base|adapter_all`` runs
lm-eval once per (rho, condition) on the model loaded once (:class:`Sweep`), each cell's results
under ``<output_path>/<submission>/rho-<rho>_<condition>/<model>/``, with the device actually used
as lm-eval's ``config.device``. The model_args are checked before any model loads.

Plain ``lm_eval --model lorakv`` does not find the model: lm-eval 0.4.13 registers its own
``MODEL_MAPPING`` and the classes that the running process imported, and reads no entry-point group
(its registry stores ``EntryPoint`` placeholders, but nothing discovers them). ``lorakv-lm-eval``
is lm-eval's CLI with this module imported; ``tests/test_lm_eval.py`` fails when an lm-eval
release starts discovering entry points, so the model can be declared there instead.

The model renders the spec's prompt itself (token segments, the document span compressed), so the
task's text prompt and its ``until``/``max_gen_toks`` are ignored: the spec's generation settings
apply. Only ``generate_until`` is supported; log-likelihood requests raise ``NotImplementedError``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from ..extras import require
from ..paths import set_offline

require("lm_eval", "the lm-eval integration")  # a one-line error naming the extra when it is missing
import lm_eval.models  # noqa: E402,F401  (fills lm-eval's model registry first: lm-eval only does it when empty)
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402

log = logging.getLogger(__name__)

#: lm-eval's own --batch_size / --device defaults, passed to every model whether or not the user gave them.
_LM_EVAL_DEFAULT_BATCH = 1
_LM_EVAL_DEFAULT_DEVICE = "cuda:0"


def _decode_batch_size(model_args_value, lm_eval_value) -> int | None:
    """``batch_size`` in model_args wins; lm-eval's ``--batch_size`` counts when it is not lm-eval's
    default of 1 (which every model receives) and not ``auto``; None: the runner's own default."""
    if model_args_value is not None:
        return int(model_args_value)
    if lm_eval_value is not None and str(lm_eval_value).isdigit() and int(lm_eval_value) != _LM_EVAL_DEFAULT_BATCH:
        return int(lm_eval_value)
    return None


def _device(device: str | None) -> str:
    """lm-eval hands every model ``--device`` (default ``cuda:0``): without CUDA its default means
    "pick one", as ``lorakv-bench evaluate`` does (cuda when present, else cpu)."""
    import torch

    from ..protocol.models import pick_device

    if device == _LM_EVAL_DEFAULT_DEVICE and not torch.cuda.is_available():
        log.info("no CUDA here: lm-eval's default device %s -> cpu", device)
        device = None
    return pick_device(device)


def _open(tier: str, submission, model, device: str, batch_size: int | None, progress: bool):
    from ..config import EvalRequest
    from ..protocol.runner import open_run
    from ..protocol.spec import load_spec
    from ..protocol.submission import load_submission

    request = EvalRequest(submission=str(submission), tier=tier, model_id=model, device=device, progress=progress,
                          **({} if batch_size is None else {"batch_size": batch_size}))
    return open_run(load_spec(tier), load_submission(submission), request)


@register_model("lorakv")
class LorakvLM(LM):
    """One submission at one (rho, condition) on one tier's model; see the module docstring."""

    #: runs opened during a sweep (:func:`shared_runs`), by (tier, submission, model, device, batch
    #: size): each cell of ``lorakv-lm-eval``'s sweep is a model lm-eval makes anew, on one loaded model
    shared_runs: dict | None = None

    def __init__(self, submission=None, rho=None, condition=None, tier: str = "mini", model: str | None = None,
                 device: str | None = None, batch_size=None, max_batch_size=None, progress: bool = True,
                 run=None, lorakv_batch_size=None, **unknown):
        super().__init__()
        unknown.pop("trust_remote_code", None)  # lm-eval may add it; nothing here runs remote code
        if unknown:
            raise ValueError(f"lorakv: unknown model_args {sorted(unknown)}; accepted: submission, rho, condition, "
                             "tier, model, device, batch_size")
        if rho is None or condition is None or (run is None and submission is None):
            raise ValueError("lorakv needs model_args submission=<folder>,rho=<0..1>,condition=<condition> "
                             "(e.g. submission=submissions/snapkv,rho=0.9,condition=base_kv_adapter_decode)")
        if run is None:
            device = _device(device)
            bs = _decode_batch_size(lorakv_batch_size, batch_size)
            key = (tier, str(submission), model, device, bs)
            run = (LorakvLM.shared_runs or {}).get(key) or _open(tier, submission, model, device, bs, progress)
            if LorakvLM.shared_runs is not None:  # a sweep: the next cell reuses the loaded model
                LorakvLM.shared_runs[key] = run
        self.run = run
        self._device = str(getattr(run.model, "device", device))
        self.rho = float(rho)
        self.condition = str(condition)
        self._check()
        #: what DocumentRun.evaluate returned, kept for inspection: per-document records and predictions
        self.records: list[dict] = []
        self.predictions: list[dict] = []

    @classmethod
    def from_run(cls, run, rho: float, condition: str) -> LorakvLM:
        """Wrap an already-opened :class:`~benchmark.protocol.runner.DocumentRun` (tests, notebooks)."""
        return cls(run=run, rho=rho, condition=condition)

    @classmethod
    def create_from_arg_obj(cls, arg_dict, additional_config=None):
        # lm-eval passes its --batch_size/--device next to model_args, and a key in both would be a
        # duplicate keyword: model_args win (see _decode_batch_size for the batch size).
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        args = dict(arg_dict)
        if "batch_size" in args:
            args["lorakv_batch_size"] = args.pop("batch_size")
        if "device" in args:
            extra.pop("device", None)
        return cls(**args, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string, additional_config=None):
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    # ------------------------------------------------------------------ checks

    def _check(self) -> None:
        from ..config import BASE, CONDITIONS

        if self.condition not in CONDITIONS:
            raise ValueError(f"lorakv: unknown condition '{self.condition}' (choose from {', '.join(CONDITIONS)})")
        if not 0.0 <= self.rho <= 1.0:
            raise ValueError("lorakv: rho must be in [0, 1] (fraction of the document's KV entries evicted), "
                             f"got {self.rho}")
        sub = self.run.submission
        if not sub.active_conditions([self.condition]):
            raise ValueError(f"lorakv: submission {sub.name} has no adapter (recipe: none); only condition="
                             f"{BASE} applies")
        if self.rho not in self.run.spec.rhos:
            log.warning("rho=%s is not on the %s spec's grid %s",
                        self.rho, self.run.spec.tier, list(self.run.spec.rhos))

    @property
    def tier(self) -> str:
        return self.run.spec.tier

    def get_model_info(self) -> dict:
        sub = self.run.submission
        return {"lorakv": {"submission": sub.name, "submission_hash": sub.hash(), "tier": self.tier,
                           "spec_version": self.run.spec.spec_version, "spec_hash": self.run.spec.hash,
                           "model_key": self.run.model_key, "rho": self.rho, "condition": self.condition,
                           "device": str(getattr(self.run.model, "device", self._device))}}

    # ------------------------------------------------------------------ requests

    def _document(self, rows: list[dict]):
        """The runner's Document for one group of rows (same doc_id): the requested questions, the
        file's train_qa; the row's text must be the file's (else the adapter would differ)."""
        from ..protocol.datasets import Document, Question
        from .lm_eval_tasks.utils import find_document

        first = rows[0]
        tier = first.get("tier", self.tier)
        if tier != self.tier:
            raise ValueError(f"lorakv: the task's rows are {tier}-tier data but this model was opened for the "
                             f"{self.tier} tier; pass tier={tier} in model_args")
        ref = find_document(self.tier, first["doc_id"], first.get("dataset"), first.get("split"))
        if first["document"] != ref.text:
            raise ValueError(f"lorakv: document {first['doc_id']}: the task's text differs from the {self.tier} "
                             "tier's data file")
        questions, seen = [], set()
        for row in rows:
            if row["question_id"] not in seen:  # repeats: one answer per question
                seen.add(row["question_id"])
                questions.append(Question(row["question_id"], row["question"], tuple(row["answers"]),
                                          tuple(row.get("options") or ())))
        return Document(ref.doc_id, first["document"], tuple(questions), ref.train_qa)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from tqdm.auto import tqdm

        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            row = req.doc
            missing = [k for k in ("doc_id", "question_id", "question", "answers", "document") if k not in row]
            if missing:
                raise ValueError(f"lorakv: request {i} ({req.task_name}) has no {missing}; the lorakv model "
                                 "answers the lorakv_* tasks only")
            key = (row.get("tier"), row.get("dataset"), row.get("split"), row["doc_id"])
            groups.setdefault(key, []).append(i)

        out: list[str | None] = [None] * len(requests)
        for idxs in tqdm(groups.values(), desc=f"lorakv rho={self.rho} {self.condition}", disable=disable_tqdm):
            doc = self._document([requests[i].doc for i in idxs])
            record, preds = self.run.evaluate(doc, [self.rho], [self.condition], doc.questions)
            generation = {p["question_id"]: p["generation"] for p in preds}
            for i in idxs:
                out[i] = generation[requests[i].doc["question_id"]]
                self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
            self.records.append(record)
            self.predictions.extend(preds)
        return out  # type: ignore[return-value]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            "lorakv answers questions from a compressed document cache (generate_until only); "
            "log-likelihood tasks are not supported: use the lorakv_* tasks"
        )

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            "lorakv answers questions from a compressed document cache (generate_until only); "
            "perplexity (loglikelihood_rolling) tasks are not supported: use the lorakv_* tasks"
        )


# ---------------------------------------------------------------------- console entry


def _with_task_dir(args: list[str]) -> list[str]:
    """Our task folder on lm-eval's include path. lm-eval's CLI takes one ``--include_path``: add
    ours when none is given; when the user gives one, :func:`_lm_eval_cli` has lm-eval's
    TaskManager scan both."""
    from .lm_eval_tasks import TASK_DIR

    if not args or args[0] in ("-h", "--help"):
        return args
    if not _user_include_path(args):
        return [*args, "--include_path", str(TASK_DIR)]
    return args


def _user_include_path(args: list[str]) -> bool:
    return any(a == "--include_path" or a.startswith("--include_path=") for a in args)


@contextlib.contextmanager
def _lm_eval_cli(args: list[str], also_our_tasks: bool):
    """lm-eval's CLI reads ``sys.argv``; with the user's own ``--include_path`` (``also_our_tasks``)
    its TaskManager must also scan our folder. Both are set for the call only and put back afterwards."""
    import lm_eval.tasks

    from .lm_eval_tasks import TASK_DIR

    argv, base = sys.argv, lm_eval.tasks.TaskManager

    class TaskManager(base):  # also scans our folder next to the user's
        def __init__(self, *a, include_path=None, **kw):
            paths = (list(include_path) if isinstance(include_path, (list, tuple))
                     else [include_path] if include_path else [])
            super().__init__(*a, include_path=[*paths, str(TASK_DIR)], **kw)

    sys.argv = [argv[0] if argv else "lorakv-lm-eval", *args]
    if also_our_tasks:
        lm_eval.tasks.TaskManager = TaskManager
    try:
        yield
    finally:
        sys.argv, lm_eval.tasks.TaskManager = argv, base


# ---------------------------------------------------------------------- sweeps

#: joins the values of a swept model_arg: ``rho=0.5|0.9,condition=base|adapter_all``
SWEEP_SEP = "|"
MODEL_ARGS = ("submission", "rho", "condition", "tier", "model", "device", "batch_size")


@dataclass(frozen=True)
class Sweep:
    """A ``lorakv-lm-eval --model lorakv`` call: every (rho, condition) cell of ``model_args``, each
    one lm-eval run of the other arguments (``rest``) on the device resolved once (``device``),
    each written under ``<output_path>/<submission>/rho-<rho>_<condition>/``."""

    rest: list[str]
    model_args: dict
    rhos: list[float]
    conditions: list[str]
    device: str
    submission_name: str
    output_path: str | None = None

    def cells(self) -> list[tuple[float, str]]:
        return [(rho, cond) for rho in self.rhos for cond in self.conditions]

    def out_dir(self, rho: float, condition: str) -> Path | None:
        """Where lm-eval writes the cell's results (it adds ``<model>/results_<date>.json``)."""
        if self.output_path is None:
            return None
        root = Path(self.output_path)
        root = root.with_suffix("") if root.suffix == ".json" else root
        return root / self.submission_name / f"rho-{rho:g}_{condition}"

    def argv(self, rho: float, condition: str) -> list[str]:
        """lm-eval's arguments for one cell: model_args as JSON (paths with commas stay whole), the
        resolved device as lm-eval's ``--device`` too, so its results record the device used."""
        args = self.model_args | {"rho": rho, "condition": condition, "device": self.device}
        out = self.out_dir(rho, condition)
        return [*self.rest, "--model", "lorakv", "--model_args", json.dumps(args), "--device", self.device,
                *(["--output_path", str(out)] if out is not None else [])]


def _split(value) -> list[str]:
    return [v.strip() for v in str(value).split(SWEEP_SEP) if v.strip()]


def _model_args(values: list[str]) -> dict:
    from lm_eval.utils import simple_parse_args_string

    args: dict = {}
    for v in values:
        args |= json.loads(v) if v.strip().startswith("{") else simple_parse_args_string(v)
    return args


def parse_sweep(argv: list[str]) -> Sweep | None:
    """The sweep of a ``--model lorakv`` call, every argument checked before a model loads (a
    SpecError naming the model_arg); None for any other model (lm-eval's arguments unchanged)."""
    import argparse

    from ..config import CONDITIONS
    from ..protocol.models import check_device, locate_model, pick_device
    from ..protocol.spec import SpecError, load_spec
    from ..protocol.submission import load_submission

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--model")
    parser.add_argument("--model_args", "-a", nargs="+", action="extend", default=[])
    parser.add_argument("--device")
    parser.add_argument("--output_path", "-o")
    known, rest = parser.parse_known_args(argv)
    if known.model != "lorakv":
        return None
    args = _model_args(known.model_args)
    unknown = sorted(set(args) - set(MODEL_ARGS) - {"trust_remote_code"})
    if unknown:
        raise SpecError(f"--model_args {', '.join(unknown)}: not a lorakv model_arg "
                        f"(accepted: {', '.join(MODEL_ARGS)})")
    for key, example in (("submission", "submission=submissions/snapkv"), ("rho", "rho=0.9 or rho=0.5|0.9"),
                         ("condition", "condition=base or condition=base|adapter_all")):
        if key not in args or not _split(args[key]):
            raise SpecError(f"--model_args: {key} is missing ({example})")
    try:
        rhos = [float(r) for r in _split(args.pop("rho"))]
    except ValueError:
        raise SpecError(f"--model_args rho: not numbers separated by '{SWEEP_SEP}'") from None
    bad = [r for r in rhos if not 0.0 <= r <= 1.0]
    if bad or len(set(rhos)) != len(rhos):
        raise SpecError(f"--model_args rho {bad or rhos}: each rho once, in [0, 1] (the fraction of the document's "
                        "KV entries evicted)")
    conditions = _split(args.pop("condition"))
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown or len(set(conditions)) != len(conditions):
        raise SpecError(f"--model_args condition {SWEEP_SEP.join(unknown or conditions)}: each condition once, of "
                        f"{', '.join(CONDITIONS)}")
    sub = load_submission(args["submission"])
    needs_adapter = [c for c in conditions if "adapter" in CONDITIONS[c].values()]
    if needs_adapter and not sub.recipe.enabled:
        raise SpecError(f"--model_args condition {SWEEP_SEP.join(needs_adapter)}: {sub.path / 'submission.yaml'} has "
                        "recipe: none, so only condition=base applies")
    spec = load_spec(str(args.get("tier", "mini")))
    model = locate_model(spec, None if args.get("model") is None else str(args["model"]))
    args["model"] = str(args["model"]) if args.get("model") is not None else model.id  # names lm-eval's output folder
    device = known.device or args.get("device")
    check_device(device)
    return Sweep(rest=rest, model_args=args, rhos=rhos, conditions=conditions, device=pick_device(device),
                 submission_name=sub.name, output_path=known.output_path)


@contextlib.contextmanager
def shared_runs():
    """Within it, ``lorakv`` models opened with the same arguments share one loaded run; closed on exit."""
    LorakvLM.shared_runs = {}
    try:
        yield
    finally:
        runs, LorakvLM.shared_runs = LorakvLM.shared_runs, None
        for run in runs.values():
            run.close()


def cli_main(argv: list[str] | None = None) -> int:
    """``lorakv-lm-eval``: lm-eval's own CLI with the ``lorakv`` model registered (importing this
    module does it), our tasks on the include path, and the Hugging Face hubs switched off. With
    ``--model lorakv`` its model_args are checked first, and each (rho, condition) of a sweep
    (``rho=0.5|0.9,condition=base|adapter_all``) is one lm-eval run on the model loaded once."""
    set_offline()
    from lm_eval.__main__ import cli_evaluate

    from ..protocol.spec import SpecError

    given = list(sys.argv[1:] if argv is None else argv)
    try:
        sweep = parse_sweep(given)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    calls = [given] if sweep is None else [sweep.argv(rho, cond) for rho, cond in sweep.cells()]
    with shared_runs():
        for args in calls:
            with _lm_eval_cli(_with_task_dir(args), also_our_tasks=_user_include_path(args)):
                cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
