"""lm-evaluation-harness integration: the ``lorakv`` model and the ``lorakv-lm-eval`` command.

``lorakv`` is an lm-eval ``LM`` that answers the ``lorakv_*`` tasks (``benchmark/lm_eval_tasks/``)
with a submission at one (rho, condition) cell, through the same code path as
``lorakv-bench evaluate``: requests are grouped by document, the document is rebuilt (text, the
requested questions, and its ``train_qa`` from the tier's data files, which the adapter recipe
trains on) and :meth:`benchmark.runner.DocumentRun.evaluate` answers them. The task's
``process_results`` then extracts and scores each generation exactly as the runner does (the
tier spec's :class:`~benchmark.metrics.Scoring`), so per-question numbers match the result files:
lm-eval reports them on its 0-1 scale, result files hold the same numbers x100 (``metrics.SCALE``,
applied in ``Scoring.score`` only). Usage::

    lorakv-lm-eval --model lorakv \\
        --model_args submission=submissions/snapkv,rho=0.9,condition=base_kv_adapter_decode \\
        --tasks lorakv_mini_narrative --limit 2

model_args: ``submission`` (folder), ``rho`` (fraction of the document's KV entries evicted),
``condition`` (one of :data:`benchmark.spec.CONDITIONS`), optional ``tier`` (mini), ``model`` (a
model id of the tier's spec; default: the spec's default), ``device`` (default: cuda when present),
``batch_size`` (rows decoded together; default: the runner's, as ``lorakv-bench evaluate``).

The model renders the spec's prompt itself (token segments, the document span compressed), so the
task's text prompt and its ``until``/``max_gen_toks`` are ignored: the spec's generation settings
apply. Only ``generate_until`` is supported; log-likelihood requests raise ``NotImplementedError``.
"""

from __future__ import annotations

import contextlib
import logging
import sys

from .extras import require
from .paths import set_offline

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

    from .models import pick_device

    if device == _LM_EVAL_DEFAULT_DEVICE and not torch.cuda.is_available():
        log.info("no CUDA here: lm-eval's default device %s -> cpu", device)
        device = None
    return pick_device(device)


@register_model("lorakv")
class LorakvLM(LM):
    """One submission at one (rho, condition) on one tier's model; see the module docstring."""

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
            from .runner import open_run
            from .spec import load_spec
            from .submission import load_submission

            spec = load_spec(tier)
            sub = load_submission(submission)
            device = _device(device)
            bs = _decode_batch_size(lorakv_batch_size, batch_size)
            run = open_run(spec, sub, model, device, progress=progress, **({} if bs is None else {"batch_size": bs}))
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
        """Wrap an already-opened :class:`~benchmark.runner.DocumentRun` (tests, notebooks)."""
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
        from .config import BASE, CONDITIONS

        if self.condition not in CONDITIONS:
            raise ValueError(f"lorakv: unknown condition '{self.condition}' (choose from {', '.join(CONDITIONS)})")
        if not 0.0 <= self.rho <= 1.0:
            raise ValueError(f"lorakv: rho must be in [0, 1] (fraction of the document's KV entries evicted), got {self.rho}")
        sub = self.run.submission
        if not sub.active_conditions([self.condition]):
            raise ValueError(f"lorakv: submission {sub.name} has no adapter (recipe: none); only condition="
                             f"{BASE} applies")
        if self.rho not in self.run.spec.rhos:
            log.warning("rho=%s is not on the %s spec's grid %s", self.rho, self.run.spec.tier, list(self.run.spec.rhos))

    @property
    def tier(self) -> str:
        return self.run.spec.tier

    def get_model_info(self) -> dict:
        sub = self.run.submission
        return {"lorakv": {"submission": sub.name, "submission_hash": sub.hash(), "tier": self.tier,
                           "spec_version": self.run.spec.spec_version, "spec_hash": self.run.spec.hash,
                           "model_key": self.run.model_key, "rho": self.rho, "condition": self.condition}}

    # ------------------------------------------------------------------ requests

    def _document(self, rows: list[dict]):
        """The runner's Document for one group of rows (same doc_id): the requested questions, the
        file's train_qa; the row's text must be the file's (else the adapter would differ)."""
        from .datasets import Document, Question
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
            paths = list(include_path) if isinstance(include_path, (list, tuple)) else [include_path] if include_path else []
            super().__init__(*a, include_path=[*paths, str(TASK_DIR)], **kw)

    sys.argv = [argv[0] if argv else "lorakv-lm-eval", *args]
    if also_our_tasks:
        lm_eval.tasks.TaskManager = TaskManager
    try:
        yield
    finally:
        sys.argv, lm_eval.tasks.TaskManager = argv, base


def cli_main(argv: list[str] | None = None) -> int:
    """``lorakv-lm-eval``: lm-eval's own CLI with the ``lorakv`` model registered (importing this
    module does it), our tasks on the include path, and the Hugging Face hubs switched off."""
    set_offline()
    from lm_eval.__main__ import cli_evaluate

    given = list(sys.argv[1:] if argv is None else argv)
    with _lm_eval_cli(_with_task_dir(given), also_our_tasks=_user_include_path(given)):
        cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
