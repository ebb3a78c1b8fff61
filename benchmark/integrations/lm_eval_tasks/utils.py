"""Helpers for the lm-eval tasks in this folder (referenced from the YAML files as
``!function benchmark.integrations.lm_eval_tasks.utils.<name>``, so lm-eval and
:mod:`benchmark.integrations.lm_eval_model`
share one module).

Rows: our JSONL holds one document per line; lm-eval wants one row per question. Each row carries
everything needed to rebuild the runner's :class:`~benchmark.protocol.datasets.Document` (``doc_id``, the
document ``text``) and to score the answer exactly as the runner does (``answers``,
``answer_prefix``), plus where it came from (``tier``, ``dataset``, ``split``). Paths come from the
tier's spec (package data for mini, ``$LORAKV_CACHE/data/`` for paper), never the working directory.
"""

from __future__ import annotations

import functools
import re

from ...protocol.datasets import Document, load_split
from ...protocol.spec import Spec, load_spec

ROW_FIELDS = ("tier", "dataset", "split", "doc_id", "question_id", "question", "answers", "document", "answer_prefix")


class MissingData(FileNotFoundError):
    """A paper-tier file that ``lorakv-bench prepare-data`` has not made yet."""


@functools.lru_cache(maxsize=None)
def _spec(tier: str) -> Spec:
    return load_spec(tier)


@functools.lru_cache(maxsize=None)
def documents(tier: str, dataset: str, split: str = "test") -> tuple[Document, ...]:
    """The documents of one dataset split, validated (and sha256-checked) exactly as the runner loads them."""
    data_file = _spec(tier).dataset(dataset).split(split)
    if not data_file.path.exists():
        raise MissingData(
            f"lorakv task data {tier}/{dataset} ({split}) is not prepared: {data_file.path} does not exist. "
            f"Run `lorakv-bench prepare-data {dataset}` first (it writes $LORAKV_CACHE/data/)."
        )
    return tuple(load_split(data_file))


def find_document(tier: str, doc_id: str, dataset: str | None = None, split: str | None = None) -> Document:
    """A document by id: in ``dataset``/``split`` when given, else in any dataset split of the tier."""
    spec = _spec(tier)
    places = [(dataset, split or "test")] if dataset else [
        (d.id, s) for d in spec.datasets for s in ("test", "dev") if (d.dev is not None or s == "test")
    ]
    for ds, sp in places:
        try:
            docs = documents(tier, ds, sp)
        except MissingData:
            if dataset:
                raise
            continue
        for doc in docs:
            if doc.doc_id == doc_id:
                return doc
    where = f"{dataset} ({split or 'test'})" if dataset else f"any dataset of tier {tier}"
    raise KeyError(f"no document '{doc_id}' in {where}")


def rows(tier: str, dataset: str, split: str = "test") -> list[dict]:
    """One row per question, in file order (documents, then their questions)."""
    prefix = _spec(tier).prompt.answer_prefix
    return [
        {"tier": tier, "dataset": dataset, "split": split, "doc_id": doc.doc_id, "question_id": q.id,
         "question": q.question, "answers": list(q.answers), "document": doc.text, "answer_prefix": prefix}
        for doc in documents(tier, dataset, split) for q in doc.questions
    ]


def load_task_dataset(lorakv_tier: str, lorakv_dataset: str, lorakv_split: str = "test", **_metadata):
    """``custom_dataset`` for the YAML tasks: lm-eval calls it with the task metadata (model_args
    included, hence the prefixed names and ``**_metadata``) plus ``dataset_kwargs``."""
    import datasets

    return datasets.DatasetDict(
        {lorakv_split: datasets.Dataset.from_list(rows(lorakv_tier, lorakv_dataset, lorakv_split))})


def doc_to_text(doc: dict) -> str:
    """The spec's user message with the document and question filled in, as the runner renders it
    (the answer prefix follows as the task's ``gen_prefix``). The ``lorakv`` model ignores this
    string and renders its own prompt token by token; any other lm-eval model answers from it."""
    user = _spec(doc["tier"]).prompt.user
    fill = {"{document}": doc["document"], "{question}": doc["question"]}
    return re.sub(r"\{document\}|\{question\}", lambda m: fill[m.group(0)], user)


def doc_to_target(doc: dict) -> str:
    return doc["answers"][0]


def extract_answers(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """The ``extract`` filter: each generation cut to its answer exactly as the runner does (the
    row's tier's :meth:`~benchmark.protocol.spec.Spec.scoring` with the row's answer prefix)."""
    return [[_spec(doc["tier"]).scoring().extract(r, doc["answer_prefix"]) for r in rs] for rs, doc in zip(resps, docs)]


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """Score the (already extracted, see :func:`extract_answers`) answer as the runner does, on
    lm-eval's 0-1 scale (:meth:`~benchmark.protocol.metrics.Scoring.fractions`; result files hold the same
    numbers x100): ``rougeL`` (max ROUGE-L F1 over gold answers) and ``exact_match``."""
    s = _spec(doc["tier"]).scoring().fractions(results[0], doc["answers"])
    return {"rougeL": s["rouge_l"], "exact_match": s["exact_match"]}
