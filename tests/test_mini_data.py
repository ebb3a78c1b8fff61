"""Tests for the bundled fictional mini datasets and their generator."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.data import generate_mini as gm

MINI_DIR = Path(gm.__file__).resolve().parent / "mini"
FILES = [f"{spec.name}.{split}.jsonl" for spec in gm.DATASETS for split, _, _ in gm.SPLITS]
DOC_KEYS = ["doc_id", "text", "questions", "train_qa"]


def load(name: str) -> list[dict]:
    return [json.loads(line) for line in (MINI_DIR / name).read_text(encoding="utf-8").splitlines()]


def all_docs() -> list[tuple[str, dict]]:
    return [(name, doc) for name in FILES for doc in load(name)]


@pytest.mark.parametrize("hash_seed", ["0", "12345"])
def test_regeneration_is_byte_identical(tmp_path: Path, hash_seed: str) -> None:
    """The CLI reproduces the committed files exactly, whatever the string-hash seed."""
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    subprocess.run([sys.executable, "-m", "benchmark.data.generate_mini", "--out", str(tmp_path)],
                   check=True, env=env, cwd=Path(gm.__file__).resolve().parents[2], capture_output=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (MINI_DIR / name).read_bytes(), name


@pytest.mark.parametrize("name", FILES)
def test_file_layout_and_counts(name: str) -> None:
    raw = (MINI_DIR / name).read_bytes()
    assert raw.endswith(b"\n") and not raw.endswith(b"\n\n")
    docs = load(name)
    split = name.split(".")[1]
    assert len(docs) == {"test": 8, "dev": 3}[split]
    for line, doc in zip(raw.decode("utf-8").splitlines(), docs):
        assert line == json.dumps(doc, ensure_ascii=False)  # canonical serialisation
    prefix = {"mini-narrative": "narr", "mini-health": "health"}[name.split(".")[0]]
    assert [d["doc_id"] for d in docs] == [f"{prefix}-{split}-{i:02d}" for i in range(len(docs))]


@pytest.mark.parametrize("name,doc", all_docs(), ids=lambda v: v if isinstance(v, str) else v["doc_id"])
def test_record_format(name: str, doc: dict) -> None:
    assert list(doc) == DOC_KEYS
    assert isinstance(doc["text"], str) and doc["text"].strip()
    assert len(doc["questions"]) == 8
    for j, q in enumerate(doc["questions"]):
        assert list(q) == ["id", "question", "answers"]
        assert q["id"] == f"{doc['doc_id']}-q{j}"
        assert isinstance(q["question"], str) and q["question"].endswith("?")
        assert q["answers"] and all(isinstance(a, str) and a for a in q["answers"])
        assert len(set(q["answers"])) == len(q["answers"])
    for pair in doc["train_qa"]:
        assert list(pair) == ["question", "answer"]
        assert isinstance(pair["question"], str) and isinstance(pair["answer"], str) and pair["answer"]


@pytest.mark.parametrize("name,doc", all_docs(), ids=lambda v: v if isinstance(v, str) else v["doc_id"])
def test_content_invariants(name: str, doc: dict) -> None:
    text = doc["text"].lower()
    assert 300 <= len(doc["text"].split()) <= 650
    assert 20 <= len(doc["train_qa"]) <= 36
    train_qs = [p["question"] for p in doc["train_qa"]]
    assert len(set(train_qs)) == len(train_qs)
    for q in doc["questions"]:
        assert q["question"] not in train_qs
        assert 1 <= len(q["answers"][0].split()) <= 4
        for answer in q["answers"]:
            assert answer.lower() in text, (q["id"], answer)
            assert answer.lower() not in q["question"].lower(), (q["id"], answer)
    for pair in doc["train_qa"]:
        assert pair["answer"].lower() in text
    # train_qa covers every evaluated fact (and more: the distractor facts too)
    train_answers = {p["answer"] for p in doc["train_qa"]}
    assert all(q["answers"][0] in train_answers for q in doc["questions"])
    assert len(train_answers) > len({q["answers"][0] for q in doc["questions"]})
    assert "{" not in doc["text"] and "}" not in doc["text"]  # no unfilled template slots


def test_ids_unique_across_files() -> None:
    docs = [doc for _, doc in all_docs()]
    doc_ids = [d["doc_id"] for d in docs]
    q_ids = [q["id"] for d in docs for q in d["questions"]]
    assert len(set(doc_ids)) == len(doc_ids) == 22
    assert len(set(q_ids)) == len(q_ids) == 22 * 8
    assert all(re.fullmatch(r"(narr|health)-(test|dev)-\d\d-q[0-7]", i) for i in q_ids)


def test_templates_are_consistent() -> None:
    """Every prose template names every asked slot; eval and train question sets are disjoint."""
    for spec in gm.DATASETS:
        for fact in spec.facts:
            assert len(fact.prose) >= 3, fact.name
            for ask in fact.asks:
                assert len(ask.eval_qs) >= 2 and len(ask.train_qs) >= 3, ask.slot
                assert not set(ask.eval_qs) & set(ask.train_qs), ask.slot
                for template in fact.prose:
                    assert "{" + ask.slot + "}" in template, (fact.name, template)


def test_article_pools_start_with_consonant() -> None:
    """Templates write "a {trade}", "a {procedure}", ...: those pools must not start with a vowel."""
    pools = [w for pair in gm.TRADES for w in pair] + list(gm.SPOUSE_TRADES + gm.PET_COLOURS + gm.PROCEDURES + gm.JOBS)
    assert not [w for w in pools if w[0].lower() in "aeiou"]


def test_different_seed_changes_output() -> None:
    spec = gm.DATASETS[0]
    assert gm.build_document(spec, "x", 1) == gm.build_document(spec, "x", 1)
    assert gm.build_document(spec, "x", 1)["text"] != gm.build_document(spec, "x", 2)["text"]
