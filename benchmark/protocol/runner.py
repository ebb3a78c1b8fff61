"""The runner: the only place that wires the stages together.

For every (model, dataset, document)::

    adapter   = train or load the document's LoRA (once per model x document x recipe)
    prefill   = one pass per distinct prefill weights the conditions need (base, adapter),
                scoring the document entries with a trusted press in the same pass
    plan      = the kept entries per (scoring weights, rho): from those scores, or, for a press that
                is the submission's own code, from the sandbox (benchmark.trust.worker), checked here
    for every rho and condition: evict from that condition's prefill with that condition's plan
                (one cache per prefill weights and kept entries: conditions that agree on both share it)
    decode    = all questions x rho x conditions, batched, once per decode weights; rows on the same
                cache with the same question decoded once
    metrics   = ROUGE-L / EM per question; the result file is rewritten after each document

All of it runs in this process, the harness; submission code never does (it runs in the sandbox
and returns data: plans, QA pairs).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft.helpers import DoraCaching
from tqdm.auto import tqdm

from ..config import BATCHING, EvalRequest, as_request, uses_adapter
from ..trust.worker import WorkerError
from .adapters import (
    AdapterStore,
    Recipe,
    adapter_key,
    adapter_state,
    build_examples,
    detach_adapter,
    direct_dora_lora_weight,
    in_training_mode,
    training_diverged,
)
from .compression import evict_planned, kv_bytes, kv_entries, prefill
from .datasets import Document, load_split, resolve_dataset
from .evaluator import LOADERS, DocumentEvaluator, Loaders, SubmissionCode
from .generation import Row, greedy_decode
from .models import ModelSpec, PromptRenderer, model_header, pick_device, resolve_model
from .plan import PlanError, check_plan, digest, full_plan, plan_from_scores
from .results import ResultFile, environment, result_path
from .spec import CONDITIONS, Spec
from .submission import Submission, load_submission

log = logging.getLogger(__name__)

SUBMISSION_PRESS = object()  # DocumentRun.build's default: the press the submission names


@dataclass
class DocumentRun:
    """Everything needed to evaluate documents with one model, one submission, one spec: the
    :class:`~benchmark.protocol.evaluator.DocumentEvaluator` of the harness, run in this process.

    ``press`` is a trusted press (kvpress's, or ours), run here; ``code`` is the
    :class:`~benchmark.protocol.evaluator.SubmissionCode` that runs the submission's own press or QA hook in
    the sandbox (:class:`benchmark.trust.worker.SubmissionProcess`), None when the submission has no code.
    Close the run (or use it as a context manager) to stop the sandbox."""

    model: object
    tokenizer: object
    renderer: PromptRenderer
    spec: Spec
    submission: Submission
    model_key: str
    press: object = None
    code: SubmissionCode | None = None
    store: AdapterStore = field(default_factory=AdapterStore)
    batch_size: int = 64
    batching: str = BATCHING
    progress: bool = True
    stats: dict = field(default_factory=lambda: {"prefills": 0, "decoded_tokens": 0})

    @classmethod
    def build(cls, model, tokenizer, spec: Spec, submission: Submission, *, model_key: str, prompt=None,
              press=SUBMISSION_PRESS, device: str = "cpu", worker_timeout: float | None = None,
              **options) -> "DocumentRun":
        """The one way a run is made: the renderer of ``prompt`` (default: the spec's) and the
        submission's press (``press=None`` for none); a submission with code of its own gets its
        sandbox here. ``options`` are the other fields."""
        from ..trust.worker import DEFAULT_TIMEOUT_S, SubmissionProcess

        renderer = PromptRenderer(tokenizer, prompt if prompt is not None else spec.prompt)
        code = None
        if press is SUBMISSION_PRESS:
            press = None if submission.press_is_code else submission.make_compressor()
            if submission.has_code:
                code = SubmissionProcess.start(submission.path, model=model if submission.press_is_code else None,
                                               tokenizer=tokenizer, device=device,
                                               timeout=worker_timeout or DEFAULT_TIMEOUT_S)
        dtype = str(getattr(model, "dtype", "float32")).removeprefix("torch.")
        if dtype != "float32":  # adapters (and synthesized pairs) trained in another precision are other adapters
            model_key = f"{model_key}|{dtype}"
        return cls(model=model, tokenizer=tokenizer, renderer=renderer, spec=spec, submission=submission,
                   model_key=model_key, press=press, code=code, **options)

    @functools.cached_property
    def scoring(self):
        """The spec's extraction, metric and budget (:meth:`Spec.scoring`)."""
        return self.spec.scoring()

    @property
    def press_in_sandbox(self) -> bool:
        """The press is the submission's own code: its plans come from the sandbox."""
        return self.press is None and self.code is not None

    @property
    def sandbox(self) -> str:
        """What ``environment.sandbox`` records: where the submission's own code ran."""
        return self.code.sandbox if self.code is not None else "no code"

    def close(self) -> None:
        if self.code is not None:
            self.code.close()

    def __enter__(self) -> "DocumentRun":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def dtype(self) -> str:
        """The dtype the model actually runs in (recorded in the result's environment)."""
        return str(getattr(self.model, "dtype", "unknown")).removeprefix("torch.")

    def evaluate(self, doc: Document, rhos, conditions, questions=None) -> tuple[dict, list[dict]]:
        """Answer ``questions`` (default: all of the document's) for every (rho, condition)."""
        questions = list(questions or doc.questions)
        recipe: Recipe = self.submission.recipe
        conditions = self.submission.active_conditions(conditions)
        needs_adapter = any(uses_adapter(c) for c in conditions)
        timings: dict[str, float] = {}
        adapter_info = None
        name = None

        if needs_adapter:
            t0 = time.perf_counter()
            view = doc.training_view()  # never the evaluation questions
            key = adapter_key(self.model_key, view, recipe, self.spec.spec_version)
            name = f"doc_{key[:12]}"  # unique per document: nothing cached for one adapter serves another
            hook = self.code.qa_pairs if self.code is not None else None
            adapter_info = self.store.attach(
                self.model, name, key, recipe,
                lambda: build_examples(view, recipe, self.renderer, self.model, self.model_key, hook=hook),
                self.tokenizer.pad_token_id, progress=self.progress,
            )
            keep = ("bytes", "seconds", "steps", "tokens", "forward_tokens", "tokens_per_s", "first_loss", "final_loss",
                    "cached")
            adapter_info = {k: adapter_info.get(k) for k in keep} | {"key": key}
            adapter_info["diverged"] = training_diverged(adapter_info["first_loss"], adapter_info["final_loss"])
            timings["adapter_s"] = time.perf_counter() - t0

        adapter_dir = self.store.path(adapter_info["key"]) if needs_adapter else None
        live = in_training_mode(self.model)
        if live:  # dropout would make the answers random
            raise RuntimeError(f"{len(live)} modules of the model are in training mode before evaluation, "
                               f"e.g. {live[0]}")
        try:
            with DoraCaching(), direct_dora_lora_weight():  # DoRA: weight norms once per adapter, not per forward
                preds, plans = self._answer(doc, questions, rhos, conditions, timings, adapter_dir)
        finally:
            if needs_adapter:
                detach_adapter(self.model, name)
                if self.code is not None:
                    self.code.forget_adapter(adapter_dir)
        prefix, n_doc = len(self.renderer.prefix_ids), len(self.renderer.doc_ids(doc.text))
        record = {"doc_id": doc.doc_id, "n_prefix_tokens": prefix, "n_doc_tokens": n_doc,
                  "adapter": adapter_info, "timings": timings, "plans": plans}
        if self.renderer.no_context is not None:  # rho = 1 reads the no-context prompt's own prefix
            record["n_no_context_prefix_tokens"] = len(self.renderer.no_doc_prefix_ids)
        return record, preds

    def _plans(self, weights: str, scores, ids: list[int], span: tuple[int, int], rhos, kv,
               adapter_dir) -> dict[float, object]:
        """The checked plan at every rho of the grid for the scores of ``weights`` (base, adapter):
        from a trusted press's ``scores``, or from the sandbox for the submission's own press."""
        n_layers, kv_heads = len(kv), kv[0][0].shape[1]
        n_doc = span[1] - span[0]
        budget = self.scoring.budget
        plans = {r: full_plan(n_layers, kv_heads, n_doc, r, budget) for r in rhos}
        chosen = [r for r, p in plans.items() if p is None]  # rhos where the press chooses
        if not chosen:
            return plans
        if self.press_in_sandbox:
            got = self.code.plan(ids, span, chosen, budget, adapter_dir if weights == "adapter" else None,
                                 where=f"the press's plan for {weights} weights")
            try:
                for r in chosen:
                    plans[r] = check_plan(got[r], n_layers=n_layers, kv_heads=kv_heads, n_doc=n_doc, rho=r,
                                          budget=budget, where=f"sandbox: the press's plan for {weights} weights")
            except PlanError as exc:  # the submission's code broke the contract: the run stops, naming it
                raise WorkerError(str(exc)) from None
        elif scores is None:
            raise ValueError(f"rho={chosen[0]} keeps part of the document and the run has no compressor to choose it")
        else:
            for r in chosen:
                plans[r] = plan_from_scores(scores, n_doc, r, budget)
        return plans

    def _prefill_and_plan(self, ids: list[int], span: tuple[int, int], rhos, prefills, scorers,
                          adapter_dir) -> tuple[dict, dict]:
        """The full cache of each weights in ``prefills`` and the checked plan at every rho of each
        in ``scorers`` (a trusted press scores in the same prefill; the submission's own press plans
        in the sandbox)."""
        kv, plans = {}, {}
        # Presses that draw from torch's global RNG (RandomPress without a seed) start from seed 0 at every
        # prefill, so results do not depend on what ran before; forked, so the caller's RNG is left as it was.
        with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []):
            for weights in sorted(prefills):
                torch.manual_seed(0)
                with adapter_state(self.model, weights == "adapter"):
                    kv[weights], scores = prefill(self.model, ids, span,
                                                  None if self.press_in_sandbox else self.press, rhos,
                                                  tokenizer=self.tokenizer, budget=self.scoring.budget)
                self.stats["prefills"] += 1
                if weights in scorers:
                    plans[weights] = self._plans(weights, scores, ids, span, rhos, kv[weights], adapter_dir)
        return kv, plans

    def plan_digests(self, doc: Document, rhos, conditions) -> dict[str, str]:
        """``{"<rho>|<condition>": digest}`` of the plans of the conditions whose entries the base
        model picks: one prefill, no adapter, no decoding (what ``verify`` recomputes for every
        document of a result file)."""
        r = self.renderer
        ids = r.prefix_ids + r.doc_ids(doc.text)
        span = (len(r.prefix_ids), len(ids))
        _, plans = self._prefill_and_plan(ids, span, rhos, {"base"}, {"base"}, None)
        return {f"{rho}|{c}": digest(plans["base"][rho]) for rho in rhos for c in conditions
                if CONDITIONS[c]["score"] == "base"}

    def _answer(self, doc: Document, questions, rhos, conditions, timings, adapter_dir=None) -> tuple[list[dict], dict]:
        r = self.renderer
        doc_ids = r.doc_ids(doc.text)
        span = (len(r.prefix_ids), len(r.prefix_ids) + len(doc_ids))
        full_len = span[1]
        # One prefill per distinct prefill weights; plans from each prefill that some condition scores with.
        scorers = {CONDITIONS[c]["score"] for c in conditions}
        prefills = {CONDITIONS[c]["prefill"] for c in conditions} | scorers
        t0 = time.perf_counter()
        kv, plans = self._prefill_and_plan(r.prefix_ids + doc_ids, span, rhos, prefills, scorers, adapter_dir)
        # rho = 1 with the spec's no-context prompt: its own (short) prefill, nothing to score.
        no_context = {}
        if r.no_context is not None and 1.0 in rhos:
            n_nc = len(r.no_doc_prefix_ids)
            for weights in sorted({CONDITIONS[c]["prefill"] for c in conditions}):
                with adapter_state(self.model, weights == "adapter"):
                    no_context[weights] = prefill(self.model, r.no_doc_prefix_ids, (n_nc, n_nc))[0]
        timings["prefill_s"] = time.perf_counter() - t0

        # Rows: every question for every (rho, condition); evicted caches shared where identical.
        t0 = time.perf_counter()
        pruned: dict[tuple, object] = {}
        digests: dict[str, str] = {}
        rows: dict[str, list[tuple[Row, dict]]] = {"base": [], "adapter": []}
        suffixes = [r.suffix_ids(q.question) for q in questions]
        nc_suffixes = [r.no_doc_suffix_ids(q.question) for q in questions] if no_context else suffixes
        n_doc = span[1] - span[0]
        for rho in rhos:
            chooses = 0 < self.scoring.kept(n_doc, rho) < n_doc  # the plan picks some entries, not all or none
            for cond in conditions:
                c = CONDITIONS[cond]
                # One cache object per prefill and kept entries, and greedy_decode decodes rows on the same
                # cache once: when rho keeps all or none of the document, or when both scorers keep the
                # same entries (a press that reads no weights: random, a fixed window), the conditions
                # that prefill alike share their rows.
                plan = plans[c["score"]][rho]
                digests[f"{rho}|{cond}"] = digest(plan)
                key = (c["prefill"], digests[f"{rho}|{cond}"] if chooses else None, rho)
                if key not in pruned:
                    if rho >= 1 and no_context:
                        pruned[key] = no_context[c["prefill"]]
                    else:
                        pruned[key] = evict_planned(kv[c["prefill"]], plan, span)
                pkv = pruned[key]
                offset = full_len if rho < 1 else (len(r.no_doc_prefix_ids) if no_context else span[0])
                qsuffixes = nc_suffixes if rho >= 1 else suffixes
                meta = {"rho": rho, "condition": cond, "kv_entries": kv_entries(pkv),
                        "kv_bytes": kv_bytes(pkv)}
                for q, suffix in zip(questions, qsuffixes):
                    rows[c["decode"]].append((Row(pkv, offset, suffix), {**meta, "question": q}))
        timings["evict_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        gen = self.spec.generation
        preds = []
        for weights, items in rows.items():
            if not items:
                continue
            with adapter_state(self.model, weights == "adapter"):
                texts = greedy_decode(self.model, self.tokenizer, [row for row, _ in items],
                                      max_new_tokens=gen.max_new_tokens, stop=gen.stop, batch_size=self.batch_size,
                                      batching=self.batching)
            for (_, meta), text in zip(items, texts):
                q = meta["question"]
                prediction = self.scoring.extract(text, r.prompt.answer_prefix)
                self.stats["decoded_tokens"] += len(self.tokenizer.encode(text, add_special_tokens=False))
                preds.append(scored({
                    "doc_id": doc.doc_id, "question_id": q.id, "question": q.question, "rho": meta["rho"],
                    "condition": meta["condition"], "generation": text, "prediction": prediction,
                    "kv_entries": meta["kv_entries"], "kv_bytes": meta["kv_bytes"],
                }, q, self.scoring))
        timings["decode_s"] = time.perf_counter() - t0
        return preds, digests


def scored(pred: dict, q, scoring) -> dict:
    """The prediction with its gold answers, tags and scores (the spec's :class:`~benchmark.protocol.metrics.Scoring`);
    unchanged where the question carries no answers (a question view, as in lm-eval's requests)."""
    if not q.answers:
        return pred
    return pred | {"answers": list(q.answers)} | scoring.score(pred["prediction"], q.answers) | (
        {"tags": list(q.tags)} if q.tags else {})


def model_key(model_spec) -> str:
    src = model_spec.source
    return f"{model_spec.id}@{src.get('sha256') or src.get('revision')}"


def open_run(spec: Spec, submission: Submission, request: EvalRequest, *, model_spec: ModelSpec | None = None,
             loaders: Loaders = LOADERS) -> DocumentRun:
    """A :class:`DocumentRun` of the request's model with its per-model recipe and prompt, loaded
    with ``loaders.load_model`` on the request's device, in its dtype, decoding in its batch size;
    close it when done. ``model_spec``: the request's model already resolved
    (:func:`benchmark.protocol.models.resolve_model`, which hashes the weights of a model folder of one's own)."""
    model_spec = model_spec or resolve_model(spec, request.model_id)
    # per-model train overrides, if any (a stand-in model takes those of the model it stands in for),
    # then a rehearsal's (capped steps and synthesis)
    submission = submission.for_model(spec.stands_in_for(model_spec.id)).with_train(spec.train_overrides)
    model, tok = loaders.load_model(model_spec, request.device, request.dtype)
    return DocumentRun.build(model, tok, spec, submission, model_key=model_key(model_spec),
                             prompt=spec.prompt_for(model_spec), device=pick_device(request.device),
                             worker_timeout=request.worker_timeout, batch_size=request.batch_size,
                             batching=request.batching, progress=request.progress)


def evaluate(request: EvalRequest | str | Path, *, loaders: Loaders = LOADERS, **options) -> list[Path]:
    """Run the protocol; returns the result files written (one per dataset).

    ``request`` is an :class:`~benchmark.config.EvalRequest`, or a submission path with the
    request's fields as keyword ``options`` (``evaluate(path, rhos=[0, 1])``). ``loaders`` load the
    spec and the model (:class:`~benchmark.protocol.evaluator.Loaders`; the real ones by default).

    The model, training, eviction, decoding and scoring run in this process. A submission's own
    code (a press or QA hook) runs in the sandbox (:mod:`benchmark.trust.worker`), each request within
    ``worker_timeout`` seconds, and returns only data, which is checked here.

    ``shard=(i, n)`` runs only documents i, i+n, i+2n, ... into ``<dataset>.shard-i-of-n.json``;
    ``lorakv-bench merge`` joins the n shard files into exactly the unsharded result.
    """
    req = as_request(request, **options)
    spec = loaders.load_spec(req.tier)
    submission = load_submission(req.submission)
    # the request with the spec's and the machine's defaults filled in (what the result header records)
    req = dataclasses.replace(req, device=pick_device(req.device),
                              rhos=sorted(req.rhos if req.rhos is not None else spec.rhos),
                              conditions=list(req.conditions or spec.conditions))
    datasets = [resolve_dataset(spec, d) for d in req.datasets or [d.id for d in spec.datasets]]  # ids or JSONL paths
    model_spec = resolve_model(spec, req.model_id)  # a spec id, or a model folder / Hub id of one's own
    with open_run(spec, submission, req, model_spec=model_spec, loaders=loaders) as run:
        return _evaluate_datasets(run, spec, submission, model_spec, datasets, req)


def result_header(submission: Submission, spec: Spec, model_spec, ds, split: str, rhos, conditions, env: dict,
                  slice: dict | None = None, tokenizer=None) -> dict:
    """A result file's header: what was evaluated, under which spec, on which data and machine.
    ``slice`` (``--docs``/``--questions``) is part of the file's identity: a run resumes only the same slice.
    ``tokenizer``: its chat template is recorded for a model of one's own
    (:func:`benchmark.protocol.models.model_header`)."""
    header = {
        "submission": {"name": submission.name, "hash": submission.hash(), "compressor": submission.compressor_cfg,
                       "adapter": submission.raw["adapter"], "headline_condition": submission.headline_condition},
        "tier": spec.tier, "spec_version": spec.spec_version, "spec_hash": spec.hash,
        "model": model_header(model_spec, tokenizer),
        "dataset": {"id": ds.id, "split": split, "sha256": ds.split(split).sha256},
        "rhos": rhos, "conditions": conditions, "environment": env,
    }
    return header | ({"slice": slice} if slice is not None else {})


def _evaluate_datasets(run: DocumentEvaluator, spec, submission, model_spec, datasets, req: EvalRequest) -> list[Path]:
    written = []
    for ds in datasets:
        data_file = ds.split(req.split)
        documents = load_split(data_file)[:req.docs]
        if req.shard:
            documents = documents[req.shard[0]::req.shard[1]]
        header = result_header(submission, spec, model_spec, ds, req.split, req.rhos, req.conditions,
                               environment(req.device, run.dtype)
                               | {"sandbox": run.sandbox, "batch_size": req.batch_size, "batching": req.batching},
                               slice={"docs": req.docs, "questions": req.questions}, tokenizer=run.tokenizer)
        path = result_path(req.out, submission.name, spec.tier, model_spec.id, ds.id, req.split, req.shard)
        result = ResultFile(path, header)
        done = result.done()
        active = submission.active_conditions(req.conditions)
        finished = sum(all((d.doc_id, rho, c) in done for rho in req.rhos for c in active) for d in documents)
        if finished and req.progress:
            print(f"{ds.id}: skipping {finished} of {len(documents)} documents, already done in {path}",
                  file=sys.stderr, flush=True)
        bar = tqdm(documents, desc=f"{model_spec.id} {ds.id}", disable=not req.progress)
        for doc in bar:
            qs = list(doc.questions)[:req.questions]
            todo = [(rho, c) for rho in req.rhos for c in active if (doc.doc_id, rho, c) not in done]
            if not todo:
                continue
            # Resume at document granularity: drop this document's partial predictions, redo it whole.
            result.data["predictions"] = [p for p in result.data["predictions"] if p["doc_id"] != doc.doc_id]
            record, preds = run.evaluate(doc, req.rhos, active, qs)
            result.add_document(record, preds)
        written.append(path)
    return written
