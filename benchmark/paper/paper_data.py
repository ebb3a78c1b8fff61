"""Paper-tier data: the exact NarrativeQA and LongHealth documents of arXiv 2606.05698.

Both converters read the datasets in their ORIGINAL published formats and write
our JSONL format, one document per line::

    {"doc_id": str, "text": str,
     "questions": [{"id": str, "question": str, "answers": [str, ...],
                    "options": [str, ...]  # LongHealth only
                   }]}

* NarrativeQA -- the 20 full stories the paper's code selected
  (``data/selection/narrativeqa.json`` of LittleDijkstraZ/lora-kv-cache; the ids
  are copied to ``benchmark/specs/paper_selection.json``), read either from the
  Hugging Face ``deepmind/narrativeqa`` parquet files (one row per question), or,
  as the paper did, from the dataset's original archives ``narrativeqa_full_text.zip``
  (``<document id>.content`` story files at its root, some gzip-compressed) and
  ``narrativeqa-master.zip`` (``narrativeqa-master/documents.csv`` and ``qaps.csv``).
  From the archives the paper's own JSONL is rebuilt and checked against the
  sha256 the paper's ``scripts/prepare_data.py`` pins before it is converted.
  The paper drew its documents from *all* splits (e.g. 01aa10d7... is a
  ``train`` story), so every split is searched.
* LongHealth -- all 20 patients x 20 questions of ``benchmark_v5.json``; the gold
  answer is the TEXT of the correct option, the five options are kept as
  ``options`` metadata.

Revisions and sha256s come from one place, the ``source`` block of each dataset in
``benchmark/specs/paper.yaml`` (:func:`spec_source`).

Nothing here downloads anything unless :func:`convert_narrativeqa` is called
without a source (then ``datasets.load_dataset`` is tried, and a clear
:class:`DataSourceError` is raised when offline).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ..paths import PACKAGE_DIR, sha256_file

log = logging.getLogger(__name__)

SPEC_PATH = PACKAGE_DIR / "specs" / "paper_selection.json"

LONGHEALTH_OPTION_KEYS = ("answer_a", "answer_b", "answer_c", "answer_d", "answer_e")

_PAPER = object()  # sentinel: "use the value recorded in the paper spec"


class PaperDataError(Exception):
    """Base class of the errors raised while preparing paper data."""


class DataSourceError(PaperDataError):
    """The raw dataset is unavailable, unreadable, or lacks what was asked for."""


class DataIntegrityError(PaperDataError):
    """A file or a converted dataset differs from what the paper documents."""


# ----------------------------------------------------------------------- the spec


def spec_source(name: str) -> dict:
    """The ``source`` block of dataset ``name`` in the paper spec: the one place its revision and
    sha256s are written down."""
    from ..protocol.spec import load_spec

    for dataset in load_spec("paper").datasets:
        if dataset.id == name:
            return dict(dataset.source)
    raise DataSourceError(f"benchmark/specs/paper.yaml: no dataset {name!r}")


def _source_field(sources: dict, key: str, name: str) -> Any:
    if key not in sources:
        raise DataSourceError(f"benchmark/specs/paper.yaml: datasets[{name}].source has no field '{key}'")
    return sources[key]


# --------------------------------------------------------------------------- files


def verify_sha256(path: str | Path, expected: str | None, what: str) -> str:
    """Check ``path`` against an expected sha256 and return the actual digest.

    ``what`` names the file in messages (e.g. ``"LongHealth benchmark_v5.json"``).
    ``expected=None`` skips the check with a warning. A mismatch raises
    :class:`DataIntegrityError` naming the file and both hashes.
    """
    actual = sha256_file(path)
    if expected is None:
        warnings.warn(
            f"{what}: no expected sha256 given for {path}; integrity not checked "
            f"(actual sha256 {actual})",
            stacklevel=2,
        )
        return actual
    if actual.lower() != expected.strip().lower():
        raise DataIntegrityError(
            f"{what}: sha256 mismatch for {path}\n"
            f"  expected {expected}\n"
            f"  actual   {actual}\n"
            "The file is not the version the paper used (wrong revision or a corrupted "
            "download)."
        )
    return actual


def write_jsonl(records: Iterable[dict], path: str | Path) -> Path:
    """Write records as UTF-8 JSONL (``ensure_ascii=False``), creating parent dirs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def _dedupe(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for item in items:
        if item and item not in seen:
            seen.add(item)
            out.append(item)
    return out


# ----------------------------------------------------------------- answer digests
# A result whose data is not on the machine that checks it (prepared paper data lives in one
# user's cache) is checked against a digest of the split's answers that the package ships: per
# question, the sha256 of its gold answers and of its text. It tells whether a file's answers are
# the gold ones without holding them in the clear.

ANSWERS_DIR = PACKAGE_DIR / "specs" / "answers"
DIGEST_FORMAT = "lorakv-bench-answers/1"


class AnswerDigestError(PaperDataError):
    """An answer digest file that cannot be read; the message names the file and field."""


def answer_digest_path(dataset_id: str, split: str, answers_dir: str | Path | None = None) -> Path:
    """``<answers_dir>/<dataset id>.<split>.json`` (default: the package's ``specs/answers/``)."""
    return Path(ANSWERS_DIR if answers_dir is None else answers_dir) / f"{dataset_id}.{split}.json"


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def answers_sha256(answers: Sequence[str], normalization: str) -> str:
    """sha256 of the sorted, distinct gold answers after the metric's normalisation: every metric
    normalises both sides and takes the max over the golds, so a score depends on nothing else."""
    from ..protocol.metrics import NORMALIZERS

    normalize = NORMALIZERS[normalization]
    return text_sha256(json.dumps(sorted({normalize(a) for a in answers}), ensure_ascii=False))


def write_answer_digest(data_path: str | Path, dataset_id: str, split: str, normalization: str,
                        answers_dir: str | Path | None = None) -> Path:
    """Write the answer digest of the JSONL ``data_path`` (read and validated like any data file);
    returns its path. ``prepare-data`` calls this, so whoever prepares the data can commit it."""
    from ..protocol.datasets import load_documents

    docs = load_documents(data_path)
    out = answer_digest_path(dataset_id, split, answers_dir)
    record = {"format": DIGEST_FORMAT, "dataset": dataset_id, "split": split, "normalization": normalization,
              "data_sha256": sha256_file(data_path),
              "questions": {f"{d.doc_id}/{q.id}": {"answers": answers_sha256(q.answers, normalization),
                                                   "question": text_sha256(q.question)}
                            for d in docs for q in d.questions}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def load_answer_digest(path: str | Path) -> dict:
    """A digest written by :func:`write_answer_digest`; raises :class:`AnswerDigestError` naming the field."""
    path = Path(path)
    try:
        digest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AnswerDigestError(f"{path}: not a readable JSON answer digest ({exc})") from None
    if not isinstance(digest, dict) or digest.get("format") != DIGEST_FORMAT:
        raise AnswerDigestError(f"{path}: field 'format': expected {DIGEST_FORMAT!r}")
    from ..protocol.metrics import NORMALIZERS

    if digest.get("normalization") not in NORMALIZERS:
        raise AnswerDigestError(f"{path}: field 'normalization': {digest.get('normalization')!r:.40}; expected one of "
                                f"{', '.join(NORMALIZERS)}")
    questions = digest.get("questions")
    if not (isinstance(questions, dict) and questions and all(
            isinstance(v, dict) and isinstance(v.get("answers"), str) and isinstance(v.get("question"), str)
            for v in questions.values())):
        raise AnswerDigestError(f"{path}: field 'questions': expected {{'doc_id/question_id': {{'answers': sha256, "
                                "'question': sha256}}}")
    return digest


# ---------------------------------------------------------------------- selection


@dataclass
class Selection:
    """Which documents to keep, in order; ``doc_ids=None`` means "all of them".

    ``expected_questions`` (doc id -> question count) and ``expected_documents`` /
    ``expected_total`` are checked by :func:`prepare_data` when known.
    """

    doc_ids: list[str] | None
    source: str
    expected_questions: dict[str, int] | None = None
    expected_documents: int | None = None
    expected_total: int | None = None


def load_paper_spec(path: str | Path | None = None) -> dict:
    """The paper selection spec (default ``benchmark/specs/paper_selection.json``)."""
    path = SPEC_PATH if path is None else path
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataSourceError(f"paper selection spec not found: {path}") from exc


def paper_selection(name: str, spec_path: str | Path | None = None) -> Selection:
    """The paper's selection for ``name`` ("narrativeqa" or "longhealth")."""
    spec_path = SPEC_PATH if spec_path is None else spec_path
    spec = load_paper_spec(spec_path)
    if name not in spec:
        raise DataSourceError(f"{spec_path}: no entry for dataset {name!r}")
    entry = spec[name]
    ids_key = "doc_ids" if name == "narrativeqa" else "patient_ids"
    ids = entry.get(ids_key)
    if name == "narrativeqa" and ids is None:
        raise DataSourceError(
            f"{spec_path}: the paper's NarrativeQA document ids are not recorded "
            f"({entry.get('todo', 'doc_ids is null')}); pass --selection FILE"
        )
    return Selection(
        doc_ids=list(ids) if ids is not None else None,
        source=str(entry.get("source", spec_path)),
        expected_questions=entry.get("questions_per_doc"),
        expected_documents=entry.get("documents"),
        expected_total=entry.get("questions"),
    )


def load_selection(path: str | Path, name: str) -> Selection:
    """Read a user selection file.

    Accepted forms: our spec layout (``{"narrativeqa": {"doc_ids": [...]}}``,
    ``{"longhealth": {"patient_ids": [...]}}``), the paper's layout
    (``{"selected_documents": [{"document_id": ..., "questions": n}, ...]}``),
    ``{"doc_ids": [...]}``, a JSON list of ids, or a text file with one id a line.
    """
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataSourceError(f"cannot read selection file {path}: {exc}") from exc
    try:
        data: Any = json.loads(raw)
    except json.JSONDecodeError:
        data = [line.strip() for line in raw.splitlines() if line.strip() and not line.startswith("#")]

    if isinstance(data, dict) and name in data and isinstance(data[name], dict):
        data = data[name]
    expected: dict[str, int] | None = None
    if isinstance(data, dict) and "selected_documents" in data:
        items = data["selected_documents"]
        try:
            ids = [str(item["document_id"]) for item in items]
            if all("questions" in item for item in items):
                expected = {str(item["document_id"]): int(item["questions"]) for item in items}
        except (TypeError, KeyError) as exc:
            raise DataSourceError(
                f"{path}: field 'selected_documents' must be a list of "
                f"{{'document_id', 'questions'}} objects"
            ) from exc
    elif isinstance(data, dict):
        key = next((k for k in ("doc_ids", "patient_ids", "document_ids") if k in data), None)
        if key is None or not isinstance(data[key], list):
            raise DataSourceError(
                f"{path}: no id list found (expected 'doc_ids', 'patient_ids' or "
                f"'selected_documents', or a top-level {name!r} entry holding one)"
            )
        ids = [str(x) for x in data[key]]
        expected = data.get("questions_per_doc")
    elif isinstance(data, list):
        ids = [str(x) for x in data]
    else:
        raise DataSourceError(f"{path}: unsupported selection file layout")
    if not ids:
        raise DataSourceError(f"{path}: the selection is empty")
    if len(set(ids)) != len(ids):
        raise DataSourceError(f"{path}: the selection lists a document id twice")
    return Selection(doc_ids=ids, source=str(path), expected_questions=expected)


# -------------------------------------------------------------------- NarrativeQA


def extract_story_span(text: str, start: str | None, end: str | None) -> str:
    """The story between NarrativeQA's ``start`` and ``end`` markers (inclusive).

    Same rule as the paper's converter: newlines are normalised, the text is cut
    at the first occurrence of ``start`` (when found) and after the first
    following occurrence of ``end`` (when found); trailing spaces are stripped
    from every line. Without markers the whole text is kept.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    start = (start or "").strip()
    end = (end or "").strip()
    if start:
        idx = text.find(start)
        if idx >= 0:
            text = text[idx:]
    if end:
        idx = text.find(end)
        if idx >= 0:
            text = text[: idx + len(end)]
    return "\n".join(line.rstrip() for line in text.splitlines()).strip()


def _narrativeqa_parquet_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise DataSourceError(f"NarrativeQA source not found: {source}")
    files = sorted(source.rglob("*.parquet"))
    if not files:
        raise DataSourceError(
            f"no *.parquet files under {source}; expected the deepmind/narrativeqa "
            "parquet files (data/train-*.parquet, data/validation-*.parquet, data/test-*.parquet)"
        )
    return files


def _rows_from_parquet(files: Sequence[Path], wanted: set[str]) -> Iterator[dict]:
    """Rows (as python dicts) whose ``document.id`` is in ``wanted``, file by file."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for path in files:
        try:
            handle = pq.ParquetFile(path)
        except Exception as exc:  # noqa: BLE001 -- report the file that failed
            raise DataSourceError(f"cannot read parquet file {path}: {exc}") from exc
        missing = {"document", "question", "answers"} - set(handle.schema_arrow.names)
        if missing:
            raise DataSourceError(
                f"{path}: missing column(s) {sorted(missing)}; expected the deepmind/narrativeqa "
                "layout (document, question, answers)"
            )
        for batch in handle.iter_batches(columns=["document", "question", "answers"], batch_size=256):
            ids = pc.struct_field(batch.column("document"), "id")
            mask = pc.is_in(ids, value_set=_string_array(wanted))
            if pc.any(mask).as_py():
                yield from batch.filter(mask).to_pylist()


def _string_array(values: Iterable[str]):
    import pyarrow as pa

    return pa.array(sorted(values), type=pa.string())


def _rows_from_hub(wanted: set[str], repo: str, revision: str, splits: Sequence[str]) -> Iterator[dict]:
    """Rows of the selected documents from the Hub copy of deepmind/narrativeqa."""
    import pyarrow.compute as pc

    try:
        import datasets

        loaded = [
            datasets.load_dataset(repo, revision=revision, split=split)
            for split in splits
        ]
    except Exception as exc:  # noqa: BLE001 -- offline, auth, missing revision...
        raise DataSourceError(
            f"could not load {repo}@{revision[:7]} from the Hugging Face Hub "
            f"({type(exc).__name__}: {exc}). Download the dataset's parquet files "
            "(data/*.parquet of that revision) or its narrativeqa_full_text.zip and narrativeqa-master.zip, "
            "and pass --source DIR."
        ) from exc
    for split in loaded:
        table = split.data.table if hasattr(split.data, "table") else split.data
        for batch in table.select(["document", "question", "answers"]).to_batches(max_chunksize=256):
            mask = pc.is_in(pc.struct_field(batch.column("document"), "id"), value_set=_string_array(wanted))
            if pc.any(mask).as_py():
                yield from batch.filter(mask).to_pylist()


def convert_narrativeqa(
    source: str | Path | None,
    doc_ids: Sequence[str],
    *,
    sources: dict | None = None,
    check_reconstruction: bool = False,
) -> list[dict]:
    """Convert the selected NarrativeQA stories to our document records.

    ``source`` is a directory (searched recursively) or a single file of the
    deepmind/narrativeqa parquet files -- one row per question with columns
    ``document`` (struct: id, kind, url, file_size, word_count, start, end,
    summary, text), ``question`` {text, tokens} and ``answers`` [{text, tokens}, x2].
    ``source=None`` loads the repo at the revision of ``sources`` (default: the paper
    spec's, :func:`spec_source`) from the Hub, every split it lists (the paper's 20
    stories come from all three). The original archives are read by
    :func:`convert_narrativeqa_archives` (``check_reconstruction``: ``doc_ids`` is the paper's
    selection, so the rebuilt paper JSONL is checked).

    Documents are returned in ``doc_ids`` order. ``text`` is the story between the
    ``start``/``end`` markers (:func:`extract_story_span`); questions keep the
    source row order, get ids ``<doc_id>-q<k>`` (k from 0) and both reference
    answers as golds (stripped, empty and duplicate ones dropped).
    Raises :class:`DataSourceError` when a selected id is absent from the source.
    """
    doc_ids = [str(d) for d in doc_ids]
    if len(set(doc_ids)) != len(doc_ids):
        raise DataSourceError("convert_narrativeqa: a document id is selected twice")
    archives = None if source is None else narrativeqa_archives(Path(source))
    if archives is not None:
        return convert_narrativeqa_archives(*archives, doc_ids, sources=sources,
                                            check_reconstruction=check_reconstruction)
    wanted = set(doc_ids)
    if source is None:
        sources = spec_source("narrativeqa") if sources is None else sources
        repo, revision = (_source_field(sources, "repo", "narrativeqa"),
                          _source_field(sources, "revision", "narrativeqa"))
        splits = _source_field(sources, "splits", "narrativeqa")
        where = f"{repo}@{revision[:7]} ({', '.join(splits)})"
        rows = _rows_from_hub(wanted, repo, revision, splits)
    else:
        files = _narrativeqa_parquet_files(Path(source))
        where = f"{source} ({len(files)} parquet file(s))"
        rows = _rows_from_parquet(files, wanted)

    stories: dict[str, str] = {}
    questions: dict[str, list[dict]] = {d: [] for d in doc_ids}
    for row in rows:
        document = row["document"]
        doc_id = str(document["id"])
        if doc_id not in stories:
            text = extract_story_span(document.get("text") or "", document.get("start"), document.get("end"))
            if not text:
                raise DataIntegrityError(f"{where}: document {doc_id} has an empty story text")
            stories[doc_id] = text
        question = ((row.get("question") or {}).get("text") or "").strip()
        answers = _dedupe(str((a or {}).get("text") or "").strip() for a in (row.get("answers") or []))
        if not question or not answers:
            raise DataIntegrityError(
                f"{where}: document {doc_id} has a row with an empty 'question.text' or "
                "no non-empty 'answers[].text'"
            )
        k = len(questions[doc_id])
        questions[doc_id].append({"id": f"{doc_id}-q{k}", "question": question, "answers": answers})

    missing = [d for d in doc_ids if d not in stories]
    if missing:
        hint = "" if source is None else " (is every split -- train, validation, test -- present?)"
        raise DataSourceError(
            f"{len(missing)} selected NarrativeQA document id(s) not found in {where}{hint}: "
            + ", ".join(missing)
        )
    return [{"doc_id": d, "text": stories[d], "questions": questions[d]} for d in doc_ids]


# ------------------------------------------------------- NarrativeQA, the original archives

FULL_TEXT_ZIP = "narrativeqa_full_text.zip"
MASTER_ZIP = "narrativeqa-master.zip"
MASTER_DIR = "narrativeqa-master"
#: the paper's convert_narrativeqa.py ran with --seed 0; its records carry it as metadata
PAPER_SUBSET_SEED = 0


def narrativeqa_archives(source: Path) -> tuple[Path, Path] | None:
    """``(full_text_zip, master_zip)`` when ``source`` is ``narrativeqa_full_text.zip`` (with
    ``narrativeqa-master.zip`` beside it) or a folder holding both; None for a parquet source."""
    if source.is_file() and source.suffix == ".zip":
        full_text, folder = source, source.parent
    elif source.is_dir() and (source / FULL_TEXT_ZIP).is_file():
        full_text, folder = source / FULL_TEXT_ZIP, source
    else:
        return None
    master = folder / MASTER_ZIP
    if not master.is_file():
        raise DataSourceError(f"{master} not found: the questions of {full_text} are in {MASTER_ZIP} "
                              f"({MASTER_DIR}/documents.csv, {MASTER_DIR}/qaps.csv) of the same revision")
    return full_text, master


def _read_zip_member(archive: Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(archive) as bundle:
            return bundle.read(member)
    except KeyError:
        raise DataSourceError(f"{archive}: no member {member!r}") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataSourceError(f"{archive}: not a readable zip archive ({exc})") from None


def _csv_rows(archive: Path, member: str) -> list[dict[str, str]]:
    """The rows of a CSV in ``archive``, decoded as the paper reads them (UTF-8, text-mode newlines)."""
    raw = _read_zip_member(archive, member)
    try:
        text = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8").read()
    except UnicodeDecodeError as exc:
        raise DataSourceError(f"{archive}: {member} is not UTF-8 ({exc})") from None
    return list(csv.DictReader(io.StringIO(text)))


def decode_story_bytes(raw: bytes) -> str:
    """A ``.content`` file's text as the paper decodes it: gunzip when gzip-compressed, then UTF-8,
    else Latin-1."""
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def narrativeqa_reconstruction(full_text_zip: Path, master_zip: Path, doc_ids: Sequence[str]) -> list[dict]:
    """The paper's ``narrativeqa.jsonl`` rows for ``doc_ids``, in that order (its
    ``records_for_document``): per question of ``qaps.csv`` (file order) ``_id``
    ``narrativeqa_<doc>_q<k:03d>``, the story as ``context``, the question and the non-empty
    stripped answers (duplicates kept), and the document's metadata with its rank in the selection
    and its word count."""
    documents = {row["document_id"]: row for row in _csv_rows(master_zip, f"{MASTER_DIR}/documents.csv")}
    qaps: dict[str, list[dict[str, str]]] = {}
    for row in _csv_rows(master_zip, f"{MASTER_DIR}/qaps.csv"):
        qaps.setdefault(str(row["document_id"]), []).append(row)
    missing = [d for d in doc_ids if d not in documents or d not in qaps]
    if missing:
        raise DataSourceError(f"{len(missing)} selected NarrativeQA document id(s) not found in {master_zip} "
                              f"({MASTER_DIR}/documents.csv and qaps.csv): " + ", ".join(missing))
    rows = []
    for rank, doc_id in enumerate(doc_ids):
        document = documents[doc_id]
        raw = _read_zip_member(full_text_zip, f"{doc_id}.content")
        story = extract_story_span(decode_story_bytes(raw), document.get("story_start"), document.get("story_end"))
        if not story:
            raise DataIntegrityError(f"{full_text_zip}: document {doc_id} has an empty story text")
        metadata = {"document_id": doc_id, "set": document.get("set"), "kind": document.get("kind"),
                    "wiki_title": document.get("wiki_title"), "story_url": document.get("story_url"),
                    "story_word_count_official": document.get("story_word_count"),
                    "subset_seed": PAPER_SUBSET_SEED, "subset_doc_rank": rank, "story_words": len(story.split())}
        for k, row in enumerate(qaps[doc_id]):
            answers = [str(row[key]).strip() for key in ("answer1", "answer2") if str(row.get(key, "")).strip()]
            rows.append({"_id": f"narrativeqa_{doc_id}_q{k:03d}", "context": story,
                         "question": str(row["question"]).strip(), "answers": answers, "metadata": metadata})
    return rows


def reconstruction_bytes(rows: list[dict]) -> bytes:
    """The bytes the paper's ``write_jsonl`` writes for ``rows``."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def convert_narrativeqa_archives(full_text_zip: Path, master_zip: Path, doc_ids: Sequence[str], *,
                                 sources: dict | None = None, check_reconstruction: bool = True) -> list[dict]:
    """Convert the selected stories from the original archives, as :func:`convert_narrativeqa` does
    from parquet (same records). Both archives' sha256 and, with ``check_reconstruction`` (for the
    paper's own selection), the sha256 of the rebuilt paper JSONL are checked against ``sources``
    (default: the paper spec's); a pin of None skips its check with a warning."""
    sources = spec_source("narrativeqa") if sources is None else sources
    archives = _source_field(sources, "archives", "narrativeqa")
    for path, name in ((full_text_zip, FULL_TEXT_ZIP), (master_zip, MASTER_ZIP)):
        pin = _source_field(archives, name, "narrativeqa.archives")
        verify_sha256(path, pin, f"NarrativeQA {name}")
    rows = narrativeqa_reconstruction(full_text_zip, master_zip, doc_ids)
    expected = _source_field(sources, "reconstruction_sha256", "narrativeqa")
    actual = hashlib.sha256(reconstruction_bytes(rows)).hexdigest()
    if not check_reconstruction:
        log.info("NarrativeQA: a selection other than the paper's; its rebuilt JSONL (sha256 %s) is not checked",
                 actual)
    elif expected is None:
        warnings.warn(f"NarrativeQA: no reconstruction sha256 given; the rebuilt paper JSONL is not checked "
                      f"(actual sha256 {actual})", stacklevel=2)
    elif actual != expected:
        raise DataIntegrityError(
            f"{full_text_zip}: the paper's narrativeqa.jsonl rebuilt from the archives has sha256 {actual}, "
            f"expected {expected} (the paper's scripts/prepare_data.py); the selection or the archives differ")
    records: dict[str, dict] = {}
    for row in rows:
        doc_id = row["metadata"]["document_id"]
        record = records.setdefault(doc_id, {"doc_id": doc_id, "text": row["context"], "questions": []})
        answers = _dedupe(row["answers"])
        if not row["question"] or not answers:
            raise DataIntegrityError(f"{master_zip}: document {doc_id} has a question with an empty text or no "
                                     "non-empty answer1/answer2")
        k = len(record["questions"])
        record["questions"].append({"id": f"{doc_id}-q{k}", "question": row["question"], "answers": answers})
    return [records[d] for d in doc_ids]


# --------------------------------------------------------------------- LongHealth


def _text_key_order(name: str) -> tuple[int, str]:
    """Sort ``text_2`` before ``text_10`` (the paper's order), ties by name."""
    suffix = name.rsplit("_", 1)[-1]
    return (int(suffix) if suffix.isdigit() else 0, name)


def _longhealth_gold(question: dict, options: list[str], where: str) -> str:
    """The text of the correct option; ``correct`` holds the text (v5) or a letter."""
    correct = str(question.get("correct", "")).strip()
    if correct in options:
        return correct
    letter = correct.upper().removeprefix("ANSWER_").removeprefix("OPTION ").strip(" .):(")
    if len(letter) == 1 and "A" <= letter <= "E":
        return options["ABCDE".index(letter)]
    raise DataIntegrityError(
        f"{where}: field 'correct' ({correct!r}) is neither the text of one of "
        f"{', '.join(LONGHEALTH_OPTION_KEYS)} nor an option letter A-E"
    )


def convert_longhealth(
    source_json_path: str | Path, patient_ids: Sequence[str] | None = None
) -> list[dict]:
    """Convert LongHealth ``benchmark_v5.json`` to our document records.

    The file is a dict keyed by patient id (``patient_01`` ...), each holding
    ``name``, ``birthday``, ``diagnosis``, ``texts`` {``text_0``: str, ...} and
    ``questions`` [{``No``, ``question``, ``answer_a`` .. ``answer_e``,
    ``correct`` (the correct option's text), ``answer_location``}].

    One document per patient (sorted ids, or ``patient_ids`` order): the texts
    stripped and joined with blank lines in key order (``text_0``, ``text_1``,
    ...); questions sorted by ``No`` with ids ``<patient>-q<No>``; the gold is the
    correct option's text and all five options are kept as ``options``.
    """
    path = Path(source_json_path)
    try:
        benchmark = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataSourceError(
            f"LongHealth source not found: {path} (download data/benchmark_v5.json of the revision "
            "benchmark/specs/paper.yaml names and pass --source FILE)"
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataSourceError(f"{path} is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(benchmark, dict):
        raise DataSourceError(f"{path}: expected a JSON object keyed by patient id")

    patients = {k: v for k, v in benchmark.items() if isinstance(v, dict) and "questions" in v}
    if patient_ids is None:
        selected = sorted(patients)
    else:
        selected = [str(p) for p in patient_ids]
        missing = [p for p in selected if p not in patients]
        if missing:
            raise DataSourceError(
                f"{len(missing)} selected LongHealth patient id(s) not found in {path}: "
                + ", ".join(missing)
            )

    records = []
    for patient_id in selected:
        patient = patients[patient_id]
        where = f"{path} [{patient_id}]"
        texts = patient.get("texts")
        if not isinstance(texts, dict) or not texts:
            raise DataIntegrityError(f"{where}: field 'texts' must be a non-empty object")
        text = "\n\n".join(str(texts[k]).strip() for k in sorted(texts, key=_text_key_order)).strip()
        questions = []
        for q in sorted(patient["questions"], key=lambda item: int(item.get("No", 0))):
            q_where = f"{where} question No {q.get('No')}"
            missing_keys = [k for k in ("No", "question", "correct", *LONGHEALTH_OPTION_KEYS) if k not in q]
            if missing_keys:
                raise DataIntegrityError(f"{q_where}: missing field(s) {missing_keys}")
            options = [str(q[k]).strip() for k in LONGHEALTH_OPTION_KEYS]
            questions.append(
                {
                    "id": f"{patient_id}-q{int(q['No'])}",
                    "question": str(q["question"]).strip(),
                    "answers": [_longhealth_gold(q, options, q_where)],
                    "options": options,
                }
            )
        records.append({"doc_id": patient_id, "text": text, "questions": questions})
    return records


# ------------------------------------------------------------------------- entry


def _check_counts(records: list[dict], selection: Selection, name: str) -> None:
    counts = {r["doc_id"]: len(r["questions"]) for r in records}
    problems = []
    if selection.expected_documents is not None and len(records) != selection.expected_documents:
        problems.append(f"{len(records)} documents, expected {selection.expected_documents}")
    total = sum(counts.values())
    if selection.expected_total is not None and total != selection.expected_total:
        problems.append(f"{total} questions, expected {selection.expected_total}")
    for doc_id, expected in (selection.expected_questions or {}).items():
        if doc_id in counts and counts[doc_id] != int(expected):
            problems.append(f"document {doc_id}: {counts[doc_id]} questions, expected {expected}")
    if problems:
        raise DataIntegrityError(
            f"{name}: the converted data differs from the selection in {selection.source}: "
            + "; ".join(problems)
        )


def prepare_data(
    name: str,
    source: str | Path | None,
    out_path: str | Path,
    selection: str | Path | None = None,
    *,
    source_sha256: Any = _PAPER,
    sources: dict | None = None,
) -> dict:
    """Build the paper-tier JSONL for ``name`` and return a summary.

    Backs ``lorakv-bench prepare-data narrativeqa|longhealth [--source PATH]
    [--out FILE] [--selection FILE]``.

    * ``narrativeqa``: ``source`` is a directory of the deepmind/narrativeqa
      parquet files, the original ``narrativeqa_full_text.zip`` (``narrativeqa-master.zip``
      beside it) or a directory holding both, or None to load the parquet files from the
      Hub (needs network). The 20
      document ids come from ``benchmark/specs/paper_selection.json`` unless a
      ``selection`` file is given; per-document question counts recorded there
      (the paper's 596 questions) are checked.
    * ``longhealth``: ``source`` is ``benchmark_v5.json``; its sha256 is checked
      against the paper's (``source_sha256=None`` skips that with a warning, a
      string overrides it). Without ``selection`` all patients are used and the
      paper's 20 documents / 400 questions are checked.

    ``sources`` is the dataset's ``source`` block of the paper spec (revisions, sha256s), read
    from ``benchmark/specs/paper.yaml`` unless given.

    Returns ``{"documents": int, "questions": int, "sha256": str, "out": str}``
    (sha256 of the written JSONL). Raises :class:`DataSourceError` for
    missing/unreadable sources or unknown ids and :class:`DataIntegrityError`
    for hash or count mismatches.
    """
    name = name.strip().lower()
    if name == "narrativeqa":
        sel = load_selection(selection, name) if selection is not None else paper_selection(name)
        records = convert_narrativeqa(source, sel.doc_ids or [], sources=sources,
                                      check_reconstruction=selection is None)
    elif name == "longhealth":
        sources = spec_source(name) if sources is None else sources
        if source is None:
            raise DataSourceError(
                f"longhealth needs --source FILE: {sources.get('file')} of "
                f"{sources.get('repo')}@{str(sources.get('revision'))[:7]}"
            )
        expected = _source_field(sources, "sha256", name) if source_sha256 is _PAPER else source_sha256
        verify_sha256(source, expected, "LongHealth benchmark_v5.json")
        sel = load_selection(selection, name) if selection is not None else paper_selection(name)
        records = convert_longhealth(source, sel.doc_ids)
    else:
        raise ValueError(f"unknown paper dataset {name!r}; expected 'narrativeqa' or 'longhealth'")

    _check_counts(records, sel, name)
    out = write_jsonl(records, out_path)
    summary = {
        "documents": len(records),
        "questions": sum(len(r["questions"]) for r in records),
        "sha256": sha256_file(out),
        "out": str(out),
    }
    log.info("%s: wrote %d documents / %d questions to %s", name, summary["documents"], summary["questions"], out)
    return summary
