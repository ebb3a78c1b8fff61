"""``lorakv-bench verify RESULT``: re-run a seeded sample of a result file and require identical
generations.

Conformance re-derives everything a result file claims *from its generations*; verify checks
the generations themselves. It draws K (document, rho) pairs with a seed derived from the file's
sha256 (so a submitter cannot pick which pairs get checked, and anyone re-running verify checks
the same ones), re-runs them with the committed submission, through the worker like ``evaluate``,
and compares every generation and ``kv_entries`` at those pairs. Greedy decoding on CPU is
deterministic, so a single differing token is a mismatch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from .paths import sha256_file


@dataclass
class Verdict:
    pairs: list[tuple[str, float]]
    compared: int = 0
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.compared > 0 and not self.mismatches


def sample_pairs(path: Path, data: dict, k: int) -> list[tuple[str, float]]:
    """K (doc_id, rho) pairs of the file, drawn with a seed derived from the file's sha256."""
    pairs = sorted({(p["doc_id"], p["rho"]) for p in data["predictions"]})
    rng = random.Random(int(sha256_file(path)[:16], 16))
    return sorted(rng.sample(pairs, min(k, len(pairs))))


def verify_result(path: str | Path, sample: int = 4, *, submissions_dir=None, device: str = "cpu",
                  isolation: str = "worker", worker_setup: str | None = None) -> Verdict:
    """Re-run ``sample`` (document, rho) pairs of the result file; mismatches name each prediction."""
    from . import runner
    from .conformance import _find_submissions_dir
    from .results import load_result
    from .spec import SpecError

    path = Path(path)
    data = load_result(path)
    subs = Path(submissions_dir) if submissions_dir else _find_submissions_dir(path)
    folder = subs / data["submission"]["name"]
    submission = runner.load_submission(folder)
    if submission.hash() != data["submission"]["hash"]:
        raise SpecError(f"{path}: field 'submission/hash': {data['submission']['hash']} but {folder} hashes to "
                        f"{submission.hash()}; verify re-runs the committed submission, which changed")
    spec = runner.load_spec(data["tier"])
    if spec.hash != data["spec_hash"]:
        raise SpecError(f"{path}: field 'spec_hash': {data['spec_hash']}, this version's {data['tier']} spec is "
                        f"{spec.hash}; verify needs the spec the result was produced under")
    ds = spec.dataset(data["dataset"]["id"])
    docs = {d.doc_id: d for d in runner.load_split(ds.split(data["dataset"]["split"]))}
    verdict = Verdict(sample_pairs(path, data, sample))
    stored = {(p["doc_id"], p["question_id"], p["rho"], p["condition"]): p for p in data["predictions"]}
    conditions = [c for c in data["conditions"] if any(p["condition"] == c for p in data["predictions"])]
    model_id = data["model"]["id"]
    dtype = data["environment"].get("dtype")  # re-run in the precision the result was produced in
    if isolation == "worker":
        from .worker import WorkerRun

        hidden = [f.path for d in spec.datasets for f in (d.test, d.dev) if f is not None]
        run = WorkerRun.start(tier=data["tier"], submission=str(folder), model_id=model_id, device=device,
                              dtype=dtype, batch_size=64, progress=False, hidden_files=hidden, setup=worker_setup)
    else:
        run = runner.open_run(spec, submission, model_id, device, dtype, progress=False)
    try:
        for doc_id in sorted({d for d, _ in verdict.pairs}):
            rhos = [r for d, r in verdict.pairs if d == doc_id]
            if doc_id not in docs:
                verdict.mismatches.append(f"{path}: document {doc_id} is not in the pinned dataset")
                continue
            doc = docs[doc_id]
            qids = {p["question_id"] for p in data["predictions"] if p["doc_id"] == doc_id}
            questions = [q for q in doc.questions if q.id in qids]
            _, preds = run.evaluate(doc, rhos, conditions, questions)
            for p in preds:
                key = (p["doc_id"], p["question_id"], p["rho"], p["condition"])
                old = stored.get(key)
                verdict.compared += 1
                if old is None:
                    verdict.mismatches.append(f"{path}: no stored prediction for {key}")
                elif old["generation"] != p["generation"] or old["kv_entries"] != p["kv_entries"]:
                    what = "generation" if old["generation"] != p["generation"] else "kv_entries"
                    verdict.mismatches.append(
                        f"{path}: document {doc_id}, question {p['question_id']}, rho={p['rho']}, {p['condition']}: "
                        f"stored {what} {old[what]!r:.80} but the re-run gives {p[what]!r:.80}")
    finally:
        if isolation == "worker":
            run.close()
    return verdict
