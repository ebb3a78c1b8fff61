"""Stage: datasets. Read and validate the benchmark's JSONL document format.

One document per line::

    {"doc_id": str, "text": str,
     "questions": [{"id": str, "question": str, "answers": [str, ...], "tags": ["covered"|"uncovered"]}],
     "train_qa": [{"question": str, "answer": str}]}          # optional

Evaluation questions and answers go to generation and metrics only; an adapter recipe
receives a :class:`TrainingView` (document text + train_qa) and nothing else.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..paths import sha256_file
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
    _check_content(obj, source)
    return Document(
        doc_id=obj["doc_id"],
        text=obj["text"],
        questions=tuple(
            Question(q["id"], q["question"], tuple(q["answers"]), tuple(q.get("options", ())), tuple(q.get("tags", ())))
            for q in obj["questions"]
        ),
        train_qa=tuple((p["question"], p["answer"]) for p in obj.get("train_qa", ())),
    )


def _check_content(obj: dict, source: str) -> None:
    """What the schema cannot say: no blank text, question or answer, and no gold answer that
    SQuAD normalisation empties (``"The."``): it could never be matched, and would score 0 for all."""
    from .metrics import normalize_answer

    def blank(field: str, value: str) -> None:
        if not value.strip():
            raise DataError(f"{source}: field '{field}': blank (only whitespace)")

    blank("text", obj["text"])
    for i, q in enumerate(obj["questions"]):
        blank(f"questions/{i}/question", q["question"])
        for j, a in enumerate(q["answers"]):
            blank(f"questions/{i}/answers/{j}", a)
            if not normalize_answer(a):
                raise DataError(f"{source}: field 'questions/{i}/answers/{j}': {a!r} normalises to an empty string "
                                "(SQuAD normalisation drops articles and punctuation), so no prediction can match it")
    for i, pair in enumerate(obj.get("train_qa", ())):
        blank(f"train_qa/{i}/question", pair["question"])
        blank(f"train_qa/{i}/answer", pair["answer"])


def load_documents(path: str | Path, expected_sha256: str | None = None) -> list[Document]:
    """Read a JSONL file, validating each line. Raises DataError naming file:line and field
    (the first problem; :func:`check_documents` lists them all). A file pinned by its sha256 is
    read and validated once per process."""
    if expected_sha256 and Path(path).is_file() and sha256_file(path) == expected_sha256:
        return list(_pinned_documents(str(path), expected_sha256))
    docs, problems = _read_documents(Path(path), expected_sha256, stop_at_first=True)
    if problems:
        raise DataError(problems[0])
    return docs


@functools.lru_cache(maxsize=32)
def _pinned_documents(path: str, sha256: str) -> tuple[Document, ...]:
    """The documents of a data file whose content is ``sha256`` (Documents are frozen)."""
    docs, problems = _read_documents(Path(path), sha256, stop_at_first=True)
    if problems:
        raise DataError(problems[0])
    return tuple(docs)


def check_documents(path: str | Path, expected_sha256: str | None = None) -> tuple[list[Document], list[str]]:
    """Every problem of a JSONL file (one message per bad line, each naming file:line and field)
    and the documents of its good lines."""
    return _read_documents(Path(path), expected_sha256, stop_at_first=False)


def _read_documents(path: Path, expected_sha256: str | None, stop_at_first: bool) -> tuple[list[Document], list[str]]:
    if not path.exists():
        return [], [f"{path}: no such data file"]
    if not path.is_file():
        return [], [f"{path}: is a folder, not a JSONL data file"]
    if expected_sha256:
        actual = sha256_file(path)
        if actual != expected_sha256:
            return [], [f"{path}: sha256 {actual} does not match the spec's {expected_sha256}; "
                        "the data changed since the spec was pinned (regenerate it or bump the spec)"]
    docs: list[Document] = []
    problems: list[str] = []
    seen_docs: set[str] = set()
    seen_q: set[str] = set()
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
                doc = parse_document(obj, where)
                if doc.doc_id in seen_docs:
                    raise DataError(f"{where}: field 'doc_id': duplicate doc_id '{doc.doc_id}'")
                for i, q in enumerate(doc.questions):
                    if q.id in seen_q or any(q.id == p.id for p in doc.questions[:i]):
                        raise DataError(f"{where}: field 'questions/{i}/id': duplicate question id '{q.id}'")
            except UnicodeDecodeError as exc:
                problems.append(f"{where}: not UTF-8 (byte {exc.start} of the line is {raw[exc.start]:#04x})")
            except DataError as exc:
                problems.append(str(exc))
            else:
                seen_docs.add(doc.doc_id)
                seen_q.update(q.id for q in doc.questions)
                docs.append(doc)
                continue
            if stop_at_first:
                return docs, problems
    if not docs and not problems:
        problems.append(f"{path}: no documents")
    return docs, problems


def _normalised(text: str) -> str:
    return " ".join(text.lower().split())


def check_leaks(path: str | Path) -> list[str]:
    """Training pairs that give an evaluation question away, one message per leak naming
    file:line and field (run on a file :func:`check_documents` accepts):

    * a train_qa question equal to an evaluation question of its document (lowercase, whitespace
      collapsed): the adapter would be trained on the test question itself;
    * an evaluation question tagged ``uncovered`` whose gold answer a train_qa pair mentions: the
      tag promises no training text contains it.

    A train_qa answer equal to a covered question's gold answer is the design, not a leak: covered
    questions ask, in other words, about the fact a pair trains on."""
    import re

    leaks = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            train = obj.get("train_qa", [])
            where = f"{path}:{lineno}"
            asked = {_normalised(q["question"]): q["id"] for q in obj["questions"]}
            for j, pair in enumerate(train):
                qid = asked.get(_normalised(pair["question"]))
                if qid is not None:
                    leaks.append(f"{where}: field 'train_qa/{j}/question': leak: it is evaluation question '{qid}' "
                                 "(the adapter would train on the test question)")
            texts = [_normalised(t) for pair in train for t in (pair["question"], pair["answer"])]
            for i, q in enumerate(obj["questions"]):
                if "uncovered" not in q.get("tags", ()):
                    continue
                for a in q["answers"]:
                    word = re.compile(rf"(?<!\w){re.escape(_normalised(a))}(?!\w)")
                    k = next((k for k, t in enumerate(texts) if word.search(t)), None)
                    if k is not None:
                        leaks.append(f"{where}: field 'questions/{i}/tags': leak: question '{q['id']}' is tagged "
                                     f"uncovered but train_qa/{k // 2}/{('question', 'answer')[k % 2]} mentions its "
                                     f"gold answer {a!r}")
                        break
    return leaks


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
