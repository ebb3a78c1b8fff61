"""``lorakv-bench verify RESULT``: re-run a result file with the committed submission and require
the same plans, adapters and generations.

Conformance re-derives everything a result file claims *from its generations*; verify checks the
generations and plans themselves, with the harness's own code (submission code only ever runs in
the sandbox, :mod:`benchmark.trust.worker`):

* **plans, every document:** where the file records plan digests (``documents[].plans``), the plan
  of every (document, rho) of each base-scored condition is recomputed (one prefill a document, no
  adapter, no decoding) and must match;
* **generations, a sample:** K ranked (document, rho) pairs (0 < rho < 1, what the headline
  averages) are drawn, and each document they fall in is re-run whole, as the run decoded it (every
  rho and condition, in the run's batch size and batching scheme, so each row is batched with the
  same rows): adapter
  trained or loaded; every generation of the document, its ``kv_entries``, plan digests and the
  adapter's size and losses must match.

The sample is drawn with a seed the submitter cannot choose: ``--seed`` (CI passes the pull
request's base commit), else fresh randomness; either way it is printed, so anyone can re-run the
same sample. K is the smallest sample that catches a file with ``tampered`` altered ranked pairs
with probability ``detect`` (:func:`detection_probability`), unless ``--sample`` fixes it.

The re-run uses the result's dtype and must run on the same kind of device (a result made on CUDA is
verified on CUDA): greedy decoding on one device kind and dtype is deterministic, so a single
differing token is a mismatch, while across devices or dtypes kernels differ and generations with
them.
"""

from __future__ import annotations

import math
import random
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..protocol.evaluator import Loaders

#: by default verify re-runs enough pairs to catch this many tampered ranked pairs ...
TAMPERED = 3
#: ... with at least this probability
DETECT = 0.95
#: a re-trained adapter's losses may differ from the recorded ones by this fraction: the same fp32
#: training on another CPU's kernels (AVX2 vs AVX-512) ends 0.13% apart on a committed SmolLM2 adapter
#: with identical generations; an edited loss (a diverged run passed off as trained) is far outside it
LOSS_REL_TOL = 0.01


@dataclass
class Verdict:
    seed: str
    pairs: list[tuple[str, float]]
    ranked: int = 0  # ranked (document, rho) pairs in the file
    detection: float = 0.0  # the chance this sample catches TAMPERED tampered ranked pairs
    plans_checked: int = 0
    compared: int = 0
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.compared > 0 and not self.mismatches


def record_path(result: Path) -> Path:
    """Where a verify record of ``<root>/results/<submission>/<tier>/<model>/<dataset>.json`` lives:
    ``<root>/verified/`` with the same four parts (the leaderboard reads it beside the result)."""
    result = Path(result).resolve()
    return result.parents[4] / "verified" / Path(*result.parts[-4:])


def write_record(result: str | Path, v: Verdict, device: str) -> Path:
    """What verify re-ran of this exact result file (its sha256), for the leaderboard to show."""
    import json

    from ..paths import sha256_file
    from ..protocol.results import now, write_atomic

    out = record_path(Path(result))
    write_atomic(out, json.dumps({
        "result_sha256": sha256_file(result), "ok": v.ok, "seed": v.seed, "plans_checked": v.plans_checked,
        "pairs": [[d, r] for d, r in v.pairs], "ranked_pairs": v.ranked, "predictions_compared": v.compared,
        "detection_of_3_tampered": round(v.detection, 4), "device": device, "date": now(),
    }, indent=1) + "\n")
    return out


def detection_probability(n_pairs: int, k: int, tampered: int = TAMPERED) -> float:
    """The chance that ``k`` pairs drawn without replacement from ``n_pairs`` include at least one
    of ``tampered`` altered pairs: ``1 - C(n - t, k) / C(n, k)``."""
    t = min(tampered, n_pairs)
    if n_pairs == 0 or t == 0:
        return 0.0
    return 1.0 - math.comb(n_pairs - t, k) / math.comb(n_pairs, k)


def sample_size(n_pairs: int, detect: float = DETECT, tampered: int = TAMPERED) -> int:
    """The smallest sample whose :func:`detection_probability` reaches ``detect`` (all pairs if none does)."""
    for k in range(1, n_pairs + 1):
        if detection_probability(n_pairs, k, tampered) >= detect:
            return k
    return n_pairs


def ranked_pairs(data: dict) -> list[tuple[str, float]]:
    """The file's (doc_id, rho) pairs with 0 < rho < 1, sorted."""
    return sorted({(p["doc_id"], p["rho"]) for p in data["predictions"] if 0 < p["rho"] < 1})


def sample_pairs(data: dict, k: int, seed: str) -> list[tuple[str, float]]:
    """K ranked pairs drawn with ``seed`` and the file's identity (submission, tier, model, dataset),
    never its contents: editing any field of the file does not move the sample."""
    ident = "|".join([seed, data["submission"]["name"], data["tier"], data["model"]["id"], data["dataset"]["id"],
                      data["dataset"]["split"]])
    pairs = ranked_pairs(data)
    return sorted(random.Random(ident).sample(pairs, min(k, len(pairs))))


def new_seed() -> str:
    return secrets.token_hex(8)


def verify_result(path: str | Path, sample: int | None = None, *, seed: str | None = None, detect: float = DETECT,
                  submissions_dir=None, device: str = "cpu", worker_timeout: float | None = None,
                  progress=None, loaders: Loaders | None = None) -> Verdict:
    """Re-run the result file's plans and a sample of its pairs; mismatches name each prediction.
    ``progress(message)`` is called as each document starts. ``loaders`` load the spec and the
    model (:class:`~benchmark.protocol.evaluator.Loaders`; the real ones by default)."""
    from ..config import UNRECORDED_BATCHING, EvalRequest
    from ..protocol import runner
    from ..protocol.evaluator import LOADERS
    from ..protocol.results import load_result
    from ..protocol.spec import SpecError, spec_name
    from .conformance import _find_submissions_dir

    path = Path(path)
    data = load_result(path)
    subs = Path(submissions_dir) if submissions_dir else _find_submissions_dir(path)
    folder = subs / data["submission"]["name"]
    submission = runner.load_submission(folder)
    if submission.hash() != data["submission"]["hash"]:
        raise SpecError(f"{path}: field 'submission/hash': {data['submission']['hash']} but {folder} hashes to "
                        f"{submission.hash()}; verify re-runs the committed submission, which changed")
    loaders = loaders or LOADERS
    spec = loaders.load_spec(spec_name(data))
    if spec.hash != data["spec_hash"]:
        raise SpecError(f"{path}: field 'spec_hash': {data['spec_hash']}, this version's {data['tier']} spec is "
                        f"{spec.hash}; verify needs the spec the result was produced under")
    if data["model"]["id"] not in {m.id for m in spec.models}:
        raise SpecError(f"{path}: field 'model/id': '{data['model']['id']}' is a model of one's own (evaluate --model "
                        "PATH); verify re-runs results of the spec's models only")
    made_on = str(data["environment"].get("device", "cpu")).split(":")[0]
    if device.split(":")[0] != made_on:  # greedy decoding is exact within one device kind and dtype only
        raise SpecError(f"{path}: field 'environment/device': the result was made on {made_on}; verify re-runs it "
                        f"on the same kind of device (--device {made_on}), not on {device}")
    ds = spec.dataset(data["dataset"]["id"])
    docs = {d.doc_id: d for d in runner.load_split(ds.split(data["dataset"]["split"]))}
    seed = seed or new_seed()
    n_ranked = len(ranked_pairs(data))
    k = sample if sample is not None else sample_size(n_ranked, detect)
    verdict = Verdict(seed, sample_pairs(data, k, seed), ranked=n_ranked)
    verdict.detection = detection_probability(n_ranked, len(verdict.pairs))
    stored = {(p["doc_id"], p["question_id"], p["rho"], p["condition"]): p for p in data["predictions"]}
    records = {d["doc_id"]: d for d in data["documents"]}
    conditions = [c for c in data["conditions"] if any(p["condition"] == c for p in data["predictions"])]
    rhos = sorted({p["rho"] for p in data["predictions"]})
    dtype = data["environment"].get("dtype")  # re-run in the precision the result was produced in
    say = progress or (lambda msg: None)

    def plan_mismatches(doc_id: str, digests: dict) -> None:
        recorded = (records.get(doc_id) or {}).get("plans") or {}
        for key, value in sorted(digests.items()):
            verdict.plans_checked += 1
            if recorded.get(key) != value:
                verdict.mismatches.append(f"{path}: document {doc_id}, plan {key}: recorded "
                                          f"{str(recorded.get(key))[:16]}, the re-run's is {value[:16]}")

    # Decoded in the run's batches: a sampled document is re-run whole (every rho and condition, in the
    # run's batch size and batching), since a row's greedy tokens can depend on the rows batched with it
    # (bf16 does). A result that does not record its batching was decoded config.UNRECORDED_BATCHING.
    batch = data["environment"].get("batch_size")
    batching = data["environment"].get("batching", UNRECORDED_BATCHING)
    request = EvalRequest(submission=str(folder), tier=data["tier"], model_id=data["model"]["id"], device=device,
                          dtype=dtype, progress=False, **({"worker_timeout": worker_timeout} if worker_timeout else {}),
                          batching=batching, **({"batch_size": batch} if batch else {}))
    with runner.open_run(spec, submission, request, loaders=loaders) as run:
        sampled = sorted({d for d, _ in verdict.pairs})
        planned = [d for d in sorted(records) if records[d].get("plans") and d not in sampled]
        for i, doc_id in enumerate(planned):
            say(f"plans {i + 1}/{len(planned)}: {doc_id}")
            if doc_id in docs:
                plan_mismatches(doc_id, run.plan_digests(docs[doc_id], rhos, conditions))
        for i, doc_id in enumerate(sampled):
            say(f"re-run {i + 1}/{len(sampled)}: {doc_id}")
            if doc_id not in docs:
                verdict.mismatches.append(f"{path}: document {doc_id} is not in the pinned dataset")
                continue
            doc = docs[doc_id]
            qids = {p["question_id"] for p in data["predictions"] if p["doc_id"] == doc_id}
            questions = [q for q in doc.questions if q.id in qids]
            record, preds = run.evaluate(doc, rhos, conditions, questions)
            if records.get(doc_id, {}).get("plans"):
                plan_mismatches(doc_id, record["plans"])
            verdict.mismatches += _adapter_mismatches(path, doc_id, (records.get(doc_id) or {}).get("adapter"),
                                                      record["adapter"])
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
    return verdict


def _adapter_mismatches(path: Path, doc_id: str, old: dict | None, new: dict | None) -> list[str]:
    """The recorded adapter is the one the re-run trained (or loaded): same size, steps and losses."""
    if (old is None) != (new is None):
        return [f"{path}: document {doc_id}, field 'adapter': recorded {'none' if old is None else 'an adapter'}, "
                f"the re-run has {'none' if new is None else 'one'}"]
    if old is None:
        return []
    out = []
    for k in ("bytes", "steps"):
        if old.get(k) != new.get(k):
            out.append(f"{path}: document {doc_id}, field 'adapter/{k}': recorded {old.get(k)}, the re-run's is "
                       f"{new.get(k)}")
    for k in ("first_loss", "final_loss"):
        a, b = old.get(k), new.get(k)
        if (a is None) != (b is None) or (a is not None and not abs(a - b) <= LOSS_REL_TOL * max(abs(a), abs(b))):
            out.append(f"{path}: document {doc_id}, field 'adapter/{k}': recorded {a}, the re-run's is {b}")
    return out
