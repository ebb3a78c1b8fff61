"""Tests for the bundled fictional mini datasets and their generator."""

from __future__ import annotations

import inspect
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.data import generate_mini as gm

NAMES = [f"{spec.name}.{split}.jsonl" for spec in gm.DATASETS for split, _, _ in gm.SPLITS]
FILES = [f"{folder}/{name}" for folder in gm.FOLDERS for name in NAMES]  # relative to the data folder
DOC_KEYS = ["doc_id", "text", "questions", "train_qa"]


def load(name: str, root: Path = gm.HERE) -> list[dict]:
    return [json.loads(line) for line in (root / name).read_text(encoding="utf-8").splitlines()]


def all_docs() -> list[tuple[str, dict]]:
    return [(name, doc) for name in FILES for doc in load(name)]


@pytest.mark.parametrize("folder", gm.FOLDERS)
@pytest.mark.parametrize("hash_seed", ["0", "12345"])
def test_regeneration_is_byte_identical(tmp_path: Path, hash_seed: str, folder: str) -> None:
    """The CLI reproduces the committed files exactly, whatever the string-hash seed; its default
    writes the current folder."""
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    counts = [] if folder == gm.CURRENT else ["--questions", *map(str, gm.FOLDERS[folder])]
    subprocess.run([sys.executable, "-m", "benchmark.data.generate_mini", "--out", str(tmp_path), *counts],
                   check=True, env=env, cwd=gm.HERE.parents[1], capture_output=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(NAMES)
    for name in NAMES:
        assert (tmp_path / name).read_bytes() == (gm.HERE / folder / name).read_bytes(), name


def test_other_question_counts_keep_the_documents(tmp_path: Path) -> None:
    """``--questions`` changes only the questions: the same texts and train_qa as every shipped
    folder, so an adapter trained for one count serves another."""
    gm.write_all(tmp_path, (6, 4))
    for name in NAMES:
        fewer = load(name, tmp_path)
        assert fewer and all(sorted(q["tags"][0] for q in d["questions"]) == ["covered"] * 6 + ["uncovered"] * 4
                             for d in fewer), name
        for folder in gm.FOLDERS:
            assert [(d["doc_id"], d["text"], d["train_qa"]) for d in fewer] == [
                (d["doc_id"], d["text"], d["train_qa"]) for d in load(f"{folder}/{name}")], (folder, name)


@pytest.mark.parametrize("name", FILES)
def test_file_layout_and_counts(name: str) -> None:
    raw = (gm.HERE / name).read_bytes()
    assert raw.endswith(b"\n") and not raw.endswith(b"\n\n")
    docs = load(name)
    split = name.split("/")[1].split(".")[1]
    assert len(docs) == {"test": 6, "dev": 4}[split]
    for line, doc in zip(raw.decode("utf-8").splitlines(), docs):
        assert line == json.dumps(doc, ensure_ascii=False)  # canonical serialisation
    prefix = {"mini-narrative": "narr", "mini-health": "health"}[name.split("/")[1].split(".")[0]]
    assert [d["doc_id"] for d in docs] == [f"{prefix}-{split}-{i:02d}" for i in range(len(docs))]


@pytest.mark.parametrize("name,doc", all_docs(), ids=lambda v: v if isinstance(v, str) else v["doc_id"])
def test_record_format(name: str, doc: dict) -> None:
    assert list(doc) == DOC_KEYS
    assert isinstance(doc["text"], str) and doc["text"].strip()
    covered, uncovered = gm.FOLDERS[name.split("/")[0]]
    assert len(doc["questions"]) == covered + uncovered
    for j, q in enumerate(doc["questions"]):
        assert list(q) == ["id", "question", "answers", "tags"]
        assert q["id"] == f"{doc['doc_id']}-q{j}"
        assert isinstance(q["question"], str) and q["question"].endswith("?")
        assert q["answers"] and all(isinstance(a, str) and a for a in q["answers"])
        assert q["tags"] in (["covered"], ["uncovered"])
    assert [q["tags"][0] for q in doc["questions"]].count("covered") == covered
    for pair in doc["train_qa"]:
        assert list(pair) == ["question", "answer"]
        assert isinstance(pair["question"], str) and isinstance(pair["answer"], str) and pair["answer"]


@pytest.mark.parametrize("name,doc", all_docs(), ids=lambda v: v if isinstance(v, str) else v["doc_id"])
def test_content_invariants(name: str, doc: dict) -> None:
    text = doc["text"].lower()
    assert gm.WORD_RANGE[0] <= len(doc["text"].split()) <= gm.WORD_RANGE[1]
    train_qs = [p["question"] for p in doc["train_qa"]]
    assert len(set(train_qs)) == len(train_qs)
    train_texts = [t for p in doc["train_qa"] for t in (p["question"], p["answer"])]
    train_answers = {p["answer"] for p in doc["train_qa"]}
    for q in doc["questions"]:
        assert q["question"] not in train_qs
        for answer in q["answers"]:
            assert len(gm.phrase(answer).findall(text)) == 1, (q["id"], answer)  # told once: no ambiguity
            assert answer.lower() not in q["question"].lower(), (q["id"], answer)
        if q["tags"] == ["covered"]:  # the subject of a training pair
            assert q["answers"][0] in train_answers, q["id"]
        else:  # no training question or answer mentions it
            assert not any(gm.mentions(train_texts, a) for a in q["answers"]), q["id"]
    for pair in doc["train_qa"]:
        assert pair["answer"].lower() in text
    assert "{" not in doc["text"] and "}" not in doc["text"]  # no unfilled template slots


def test_train_qa_procedure_never_receives_questions() -> None:
    """make_train_qa's only inputs are the fact base and a seed: pinned, so no later change can
    hand it the evaluation questions."""
    params = list(inspect.signature(gm.make_train_qa).parameters)
    assert params == ["facts", "seed"]
    rng = random.Random(3)
    _, sections = gm.DATASETS[1].fact_base(rng)
    facts = [f for s in sections for f in s]
    assert len(facts) >= gm.MIN_FACTS
    pairs = gm.make_train_qa(facts, seed=7)
    assert pairs == gm.make_train_qa(facts, seed=7)
    covered = {p["answer"] for p in pairs}
    assert len(covered) == round(gm.COVER_FRACTION * len(facts))


def test_ids_unique_across_files() -> None:
    for folder, counts in gm.FOLDERS.items():
        docs = [doc for name, doc in all_docs() if name.startswith(f"{folder}/")]
        doc_ids = [d["doc_id"] for d in docs]
        q_ids = [q["id"] for d in docs for q in d["questions"]]
        assert len(set(doc_ids)) == len(doc_ids) == 20
        assert len(set(q_ids)) == len(q_ids) == 20 * sum(counts)
        assert all(re.fullmatch(r"(narr|health)-(test|dev)-\d\d-q\d+", i) for i in q_ids)


@pytest.mark.parametrize("attributes", [gm.NARRATIVE_ATTRIBUTES, gm.HEALTH_PATIENT_ATTRIBUTES,
                                        gm.HEALTH_EPISODE_ATTRIBUTES])
def test_templates_are_consistent(attributes) -> None:
    """Every prose template tells the value once; evaluation and training templates are disjoint."""
    for attr in attributes:
        assert len(attr.prose) >= 2 and attr.eval_qs and len(attr.train_qs) >= 2, attr.name
        assert not set(attr.eval_qs) & set(attr.train_qs), attr.name
        for template in attr.prose:
            assert template.count("{value}") == 1, (attr.name, template)
        for q in attr.eval_qs + attr.train_qs:
            assert "{value}" not in q, (attr.name, q)


def test_article_pools_start_with_consonant() -> None:
    """Templates write "a {value}" for trades and jobs: no pool item may start with a vowel."""
    pools = gm.TRADES + gm.JOBS
    assert not [w for w in pools if w[0].lower() in "aeiou"]


def test_different_seed_changes_output() -> None:
    spec = gm.DATASETS[0]
    assert gm.build_document(spec, "x", 1) == gm.build_document(spec, "x", 1)
    assert gm.build_document(spec, "x", 1)["text"] != gm.build_document(spec, "x", 2)["text"]


def test_question_counts_change_only_the_questions() -> None:
    """More questions per document draw from the same document and train_qa (cached adapters stay
    valid); asking for more facts than a stratum has fails naming the document."""
    spec = gm.DATASETS[1]
    ten, twenty = gm.build_document(spec, "x", 7), gm.build_document(spec, "x", 7, (12, 8))
    assert (ten["text"], ten["train_qa"]) == (twenty["text"], twenty["train_qa"])
    assert len(twenty["questions"]) == 20
    assert [q["tags"][0] for q in twenty["questions"]].count("covered") == 12
    with pytest.raises(ValueError, match="x: 40 covered"):
        gm.build_document(spec, "x", 7, (40, 4))
