"""Stage: datasets. Read and validate the benchmark's JSONL document format.

One document per line::

    {"doc_id": str, "text": str,
     "questions": [{"id": str, "question": str, "answers": [str, ...], "tags": ["covered"|"uncovered"]}],
     "train_qa": [{"question": str, "answer": str}]}          # optional

Evaluation questions and answers go to generation and metrics only; an adapter recipe
receives a :class:`TrainingView` (document text + train_qa) and nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .paths import sha256_file
from .spec import DataFile, DatasetSpec, SpecError, validate_against


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answers: tuple[str, ...]
    options: tuple[str, ...] = ()
    #: ``covered`` (its fact is the subject of a train_qa pair) or ``uncovered`` (no train_qa
    #: text mentions it): the leaderboard reports the adapter's effect per stratum.
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainingView:
    """What an adapter recipe may see of a document: never its evaluation questions."""

    doc_id: str
    text: str
    train_qa: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str
    questions: tuple[Question, ...]
    train_qa: tuple[tuple[str, str], ...] = field(default=())

    def training_view(self) -> TrainingView:
        return TrainingView(self.doc_id, self.text, self.train_qa)


class DataError(SpecError):
    """A data file that does not conform; the message names the file, line and field."""


def parse_document(obj: dict, source: str) -> Document:
    validate_against("document.schema.json", obj, source, DataError)
    return Document(
        doc_id=obj["doc_id"],
        text=obj["text"],
        questions=tuple(
            Question(q["id"], q["question"], tuple(q["answers"]), tuple(q.get("options", ())), tuple(q.get("tags", ())))
            for q in obj["questions"]
        ),
        train_qa=tuple((p["question"], p["answer"]) for p in obj.get("train_qa", ())),
    )


def load_documents(path: str | Path, expected_sha256: str | None = None) -> list[Document]:
    """Read a JSONL file, validating each line. Raises DataError naming file:line and field."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such data file")
    if expected_sha256:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise DataError(
                f"{path}: sha256 {actual} does not match the spec's {expected_sha256}; "
                "the data changed since the spec was pinned (regenerate it or bump the spec)"
            )
    docs: list[Document] = []
    seen_docs: set[str] = set()
    seen_q: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
            doc = parse_document(obj, where)
            if doc.doc_id in seen_docs:
                raise DataError(f"{where}: field 'doc_id': duplicate doc_id '{doc.doc_id}'")
            seen_docs.add(doc.doc_id)
            for i, q in enumerate(doc.questions):
                if q.id in seen_q:
                    raise DataError(f"{where}: field 'questions/{i}/id': duplicate question id '{q.id}'")
                seen_q.add(q.id)
            docs.append(doc)
    if not docs:
        raise DataError(f"{path}: no documents")
    return docs


def load_split(data_file: DataFile) -> list[Document]:
    return load_documents(data_file.path, data_file.sha256)


def summarize(docs: list[Document]) -> dict:
    return {
        "documents": len(docs),
        "questions": sum(len(d.questions) for d in docs),
        "train_qa": sum(len(d.train_qa) for d in docs),
        "words_min": min(len(d.text.split()) for d in docs),
        "words_max": max(len(d.text.split()) for d in docs),
    }


def is_data_file(name: str) -> bool:
    """Whether ``--dataset NAME`` names a JSONL file rather than a spec dataset id."""
    return name.endswith(".jsonl") or "/" in name or Path(name).is_file()


def file_dataset(path: str | Path) -> DatasetSpec:
    """A user's JSONL file (anything ``validate-data`` accepts) as a dataset with one split.

    Its id is the file's stem, so the result file is named after it; the sha256 is taken now and
    pinned like a spec's, so the result records exactly which data it scored and a file that
    changes mid-run is caught."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--dataset {path}: no such file")
    load_documents(path)  # validated up front: the first bad line fails with file:line and field
    stem = path.name.removesuffix(".jsonl")
    return DatasetSpec(id=stem, test=DataFile(path.resolve(), sha256_file(path)), source={"file": str(path)})


def resolve_dataset(spec, name: str) -> DatasetSpec:
    """``--dataset``: a spec dataset id, or a path to a JSONL file in our document format."""
    if not is_data_file(name):
        return spec.dataset(name)
    ds = file_dataset(name)
    if any(d.id == ds.id for d in spec.datasets):
        raise DataError(f"--dataset {name}: the file is named like the spec's dataset '{ds.id}'; rename it so "
                        "its results cannot pass for that dataset's")
    return ds
