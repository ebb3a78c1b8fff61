"""verify re-runs a seeded sample of a result file: an honest tiny-model result passes, a result
whose generations were replaced by the gold answers (scores and cells recomputed, so conformance
cannot tell) fails."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from benchmark.protocol import runner as R
from benchmark.protocol.evaluator import Loaders
from benchmark.protocol.tiny import tiny_model
from benchmark.trust.verify import detection_probability, new_seed, sample_pairs, sample_size, verify_result


@pytest.fixture()
def tiny_result(tmp_path, document):
    """A tiny-model result file, its submissions folder, and the loaders that made it."""
    from benchmark.protocol.spec import DataFile, load_spec

    data = tmp_path / "docs.jsonl"
    rows = [{"doc_id": f"d{i}", "text": document.text + f" Extra fact number {i}.",
             "questions": [{"id": f"d{i}-{q.id}", "question": q.question, "answers": list(q.answers)}
                           for q in document.questions[:2]],
             "train_qa": [{"question": q, "answer": a} for q, a in document.train_qa]} for i in range(2)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = load_spec("mini")
    spec = dataclasses.replace(spec, datasets=(dataclasses.replace(spec.datasets[0], test=DataFile(data, None)),))
    model, tok = tiny_model("llama")
    loaders = Loaders(load_spec=lambda tier: spec, load_model=lambda *a: (model, tok))
    folder = tmp_path / "submissions" / "tsub"
    folder.mkdir(parents=True)
    (folder / "submission.yaml").write_text(
        "name: tsub\nauthors: [t]\ndescription: t\ncompressor: {press: KnormPress}\n"
        "adapter: {recipe: qa, lora: {r: 2, alpha: 4}, train: {lr: 5.0e-2, epochs: 1, batch_size: 4}}\n")
    [path] = R.evaluate(folder, out=tmp_path / "runs", rhos=[0.0, 0.5, 1.0],
                        conditions=["base", "base_kv_adapter_decode"], progress=False, loaders=loaders)
    return path, tmp_path / "submissions", loaders


def test_verify_passes_on_an_honest_result(tiny_result):
    path, subs, loaders = tiny_result
    v = verify_result(path, 2, submissions_dir=subs, loaders=loaders)
    assert v.ok, v.mismatches
    # each sampled document re-run whole, as the run batched it: documents x rhos x questions x conditions
    assert len(v.pairs) == 2 and v.compared == 2 * 3 * 2 * 2
    assert json.loads(path.read_text())["environment"]["batch_size"] == 64  # the batch size verify decodes in


def test_verify_decodes_in_the_batching_the_result_records(tiny_result, monkeypatch):
    """A row's tokens can depend on its batch (in bfloat16), so verify batches as the run did: the
    scheme the result records, and "cache" for a result made before the scheme was recorded."""
    from benchmark.config import BATCHING

    path, subs, loaders = tiny_result
    data = json.loads(path.read_text())
    assert data["environment"]["batching"] == BATCHING == "suffix"
    seen = []
    real = R.greedy_decode

    def spy(*a, **kw):
        seen.append(kw["batching"])
        return real(*a, **kw)

    monkeypatch.setattr(R, "greedy_decode", spy)
    assert verify_result(path, 1, seed="b", submissions_dir=subs, loaders=loaders).ok
    assert set(seen) == {"suffix"}
    del data["environment"]["batching"]
    path.write_text(json.dumps(data, indent=1))
    seen.clear()
    v = verify_result(path, 1, seed="b", submissions_dir=subs, loaders=loaders)
    assert v.ok, v.mismatches
    assert set(seen) == {"cache"}


def test_verify_detects_gold_generations(tiny_result):
    from benchmark.protocol.results import aggregate
    from benchmark.protocol.spec import load_spec

    path, subs, loaders = tiny_result
    data = json.loads(path.read_text())
    for p in data["predictions"]:
        p["generation"], p["prediction"] = " " + p["answers"][0], p["answers"][0]
        p |= load_spec("mini").scoring().score(p["prediction"], p["answers"])
    data["cells"] = aggregate(data["predictions"], data["documents"])
    path.write_text(json.dumps(data, indent=1))
    v = verify_result(path, 1, submissions_dir=subs, loaders=loaders)
    assert not v.ok and v.mismatches and all("stored generation" in m for m in v.mismatches)


def test_the_sample_follows_the_seed_not_the_file(tiny_result):
    """Editing a field of the file (here ``updated``) never moves the sample: only the seed does."""
    path, _, _ = tiny_result
    data = json.loads(path.read_text())
    base = sample_pairs(data, 1, "seed-a")
    for i in range(20):
        assert sample_pairs(data | {"updated": f"2026-01-{i + 1:02d}"}, 1, "seed-a") == base
    assert len({tuple(sample_pairs(data, 1, f"seed-{i}")) for i in range(20)}) > 1
    assert new_seed() != new_seed()


def test_detection_probability_is_the_exact_hypergeometric_figure():
    import itertools

    n, t = 8, 3
    for k in range(1, n + 1):  # enumerate every sample of k pairs of 8, 3 of them tampered
        hit = [any(i < t for i in c) for c in itertools.combinations(range(n), k)]
        assert detection_probability(n, k, t) == pytest.approx(sum(hit) / len(hit))
    assert sample_size(12) == 7 and detection_probability(12, 7) >= 0.95 > detection_probability(12, 6)


def test_verify_detects_a_changed_plan_digest(tiny_result):
    path, subs, loaders = tiny_result
    data = json.loads(path.read_text())
    doc = data["documents"][0]
    key = next(k for k in doc["plans"] if k.startswith("0.5|"))
    doc["plans"][key] = "0" * 64
    path.write_text(json.dumps(data, indent=1))
    v = verify_result(path, 1, seed="x", submissions_dir=subs, loaders=loaders)
    assert not v.ok and any(f"plan {key}" in m for m in v.mismatches), v.mismatches
    assert v.plans_checked >= 2  # every document's base-scored plans, sampled or not


def test_the_leaderboard_shows_what_verify_re_ran_of_this_exact_file(tiny_result):
    from benchmark.board.leaderboard import load_entries
    from benchmark.trust.verify import record_path, write_record

    path, subs, loaders = tiny_result
    runs = path.parents[3]
    [entry] = load_entries(runs)
    assert entry.rerun == "not re-run"
    v = verify_result(path, 1, seed="s", submissions_dir=subs, loaders=loaders)
    assert write_record(path, v, "cpu") == record_path(path) == runs.parent / "verified" / Path(*path.parts[-4:])
    [entry] = load_entries(runs)
    assert entry.rerun == f"{v.plans_checked} plans, 1 of 2 pairs (p={v.detection:.2f})", entry.rerun
    path.write_text(path.read_text() + " ")  # the record is of these bytes only
    [entry] = load_entries(runs)
    assert entry.rerun.startswith("not re-run (the record is of another version")


def test_a_result_made_on_another_kind_of_device_is_not_compared(tiny_result):
    from benchmark.protocol.spec import SpecError

    path, subs, loaders = tiny_result
    data = json.loads(path.read_text())
    data["environment"]["device"] = "cuda:0"
    path.write_text(json.dumps(data, indent=1))
    with pytest.raises(SpecError,
                       match=r"made on cuda; verify re-runs it on the same kind of device \(--device cuda\)"):
        verify_result(path, 1, submissions_dir=subs, loaders=loaders, device="cpu")


def test_verify_detects_an_edited_adapter_loss(tiny_result):
    path, subs, loaders = tiny_result
    data = json.loads(path.read_text())
    doc = data["documents"][0]
    doc["adapter"]["final_loss"] = doc["adapter"]["first_loss"] * 0.5  # a run that learned more than it did
    path.write_text(json.dumps(data, indent=1))
    v = verify_result(path, 2, seed="x", submissions_dir=subs, loaders=loaders)
    assert not v.ok and any("field 'adapter/final_loss'" in m for m in v.mismatches), v.mismatches
