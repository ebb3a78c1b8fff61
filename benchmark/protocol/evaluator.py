"""The interfaces of one run: what evaluating a document offers, what it asks of the submission's
own code, and where it gets its spec and model.

* :class:`DocumentEvaluator`: what callers use to evaluate documents with one model, one
  submission and one spec (``runner.evaluate``, ``verify``, the lm-eval model).
  :class:`benchmark.protocol.runner.DocumentRun` implements it, in the harness's process.
* :class:`SubmissionCode`: what such a run asks of a submission that brings code of its own (a
  press, a QA hook). :class:`benchmark.trust.worker.SubmissionProcess` implements it, in the sandbox,
  and returns only data, which the run checks.
* :class:`Loaders`: the functions a run loads its spec and its model with; the real ones by
  default. A caller that needs other weights (a test's tiny model) passes its own; for the Ray
  executor they must pickle (module-level functions, :func:`functools.partial` of them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .models import load_model
from .spec import load_spec

if TYPE_CHECKING:
    from .datasets import Document, Question, TrainingView
    from .spec import ModelSpec, Spec


@runtime_checkable
class DocumentEvaluator(Protocol):
    """Evaluates documents with one loaded model, one submission and one spec; close it when done
    (it may hold a sandbox process). A context manager that closes itself."""

    #: the model's tokenizer (its chat template is recorded for a model of one's own)
    tokenizer: object

    @property
    def dtype(self) -> str:
        """The dtype the model runs in (recorded in the result's ``environment``)."""

    @property
    def sandbox(self) -> str:
        """Where the submission's own code runs: one of :data:`benchmark.trust.worker.SANDBOXES`."""

    def evaluate(self, doc: Document, rhos, conditions,
                 questions: list[Question] | None = None) -> tuple[dict, list[dict]]:
        """The document's record (adapter, timings, plan digests) and one scored prediction per
        question, rho and condition; ``questions`` default to all of the document's."""

    def plan_digests(self, doc: Document, rhos, conditions) -> dict[str, str]:
        """``{"<rho>|<condition>": digest}`` of the plans of the base-scored conditions, without
        adapter or decoding."""

    def close(self) -> None: ...

    def __enter__(self) -> DocumentEvaluator: ...

    def __exit__(self, *exc) -> None: ...


@runtime_checkable
class SubmissionCode(Protocol):
    """A submission's own code, run apart from the harness; everything it returns is checked."""

    #: what ``environment.sandbox`` records
    sandbox: str

    def plan(self, input_ids: list[int], doc_span: tuple[int, int], rhos: list[float], budget: str,
             adapter: Path | None = None, where: str = "plan") -> dict[float, object]:
        """The submission press's plan for each rho (with the adapter folder ``adapter`` enabled if given)."""

    def qa_pairs(self, hook: str, view: TrainingView) -> list[tuple[str, str]]:
        """The QA ``hook``'s pairs for a document's training view (never its evaluation questions)."""

    def forget_adapter(self, adapter: Path) -> None:
        """Drop what was handed over of the adapter folder ``adapter``."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class Loaders:
    """The functions a run loads its spec and model with. ``load_spec(tier) -> Spec``;
    ``load_model(model_spec, device, dtype) -> (model, tokenizer)``."""

    load_spec: Callable[[str], Spec] = load_spec
    load_model: Callable[[ModelSpec, str | None, str | None], tuple] = load_model


#: the real loaders: the spec files and the models' pinned weights
LOADERS = Loaders()
