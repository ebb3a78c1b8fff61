"""Measure the mini tier's validity gates on the dev split (never on test), with the base model.

A valid embedded tier needs:

1. a model that reads its context: base ROUGE-L at rho = 0 >= 50;
2. facts that cannot be guessed: base ROUGE-L at rho = 1 <= 5;
3. the paper's memory regime: one full document's KV cache is larger than one adapter;
4. compressors that can be told apart: at some rho of the grid, the base curves of SnapKV,
   StreamingLLM and random eviction differ by more than their paired 95% CI (paired over the
   same questions, clustered by document).

The base condition needs no adapter, so this trains nothing. Runs land in ``--out`` (default
``runs/gates``) and resume; a rerun only re-reads them.

    python scripts/validity_gates.py [--model qwen2.5-0.5b] [--rhos 0 0.25 0.5 0.9 1]

``--rhos`` defaults to the spec's grid.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict

import numpy as np
from tabulate import tabulate

from benchmark.config import BASE
from benchmark.protocol.metrics import paired_bootstrap_ci
from benchmark.protocol.runner import evaluate
from benchmark.protocol.spec import load_spec

PRESSES = {"snapkv": "submissions/snapkv-noadapter", "streamingllm": "submissions/streamingllm",
           "random": "submissions/random-noadapter"}


def adapter_bytes(spec, model_id: str, submission: str = "submissions/snapkv") -> int:
    """Bytes of one document adapter of the QA baselines' recipe on this model (fp32, as cached)."""
    from peft import get_peft_model_state_dict

    from benchmark.protocol.models import load_model
    from benchmark.protocol.submission import load_submission

    recipe = load_submission(submission).for_model(model_id).recipe
    model, _ = load_model(spec.model(model_id), "cpu")
    model.add_adapter(recipe.lora.peft_config(), adapter_name="probe")
    state = get_peft_model_state_dict(model, adapter_name="probe")
    return sum(t.numel() * t.element_size() for t in state.values())


def base_scores(data: dict) -> dict[tuple[str, float], dict[str, float]]:
    """(dataset, rho) -> {question key: ROUGE-L} of the base condition of one result file."""
    out: dict = defaultdict(dict)
    for p in data["predictions"]:
        if p["condition"] == BASE:
            out[(data["dataset"]["id"], p["rho"])][(p["doc_id"], p["question_id"])] = p["rouge_l"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model id (default: the spec's default model)")
    ap.add_argument("--rhos", type=float, nargs="+", help="default: the spec's grid")
    ap.add_argument("--out", default="runs/gates")
    args = ap.parse_args()
    spec = load_spec("mini")
    model_id = spec.model(args.model).id
    args.rhos = args.rhos or list(spec.rhos)

    scores: dict[str, dict] = {}
    kv_full = 0
    for name, submission in PRESSES.items():
        # rho 0 and 1 do not depend on the press: run them once, with SnapKV
        rhos = args.rhos if name == "snapkv" else [r for r in args.rhos if 0 < r < 1]
        paths = evaluate(submission, model_id=model_id, split="dev", rhos=rhos, conditions=[BASE], out=args.out)
        scores[name] = {}
        for path in paths:
            data = json.loads(path.read_text())
            scores[name].update(base_scores(data))
            kv_full = max([kv_full] + [p["kv_bytes"] for p in data["predictions"] if p["rho"] == 0])
    datasets = sorted({ds for ds, _ in scores["snapkv"]})

    def mean(name, ds, rho):
        v = list(scores[name][(ds, rho)].values())
        return float(np.mean(v))

    print(f"Validity gates, mini tier ({spec.spec_version}), dev split, model {model_id}, base condition\n")
    rows = []
    for ds in datasets:
        r0, r1 = mean("snapkv", ds, 0.0), mean("snapkv", ds, 1.0)
        rows.append([ds, f"{r0:.1f}", "pass" if r0 >= 50 else "FAIL", f"{r1:.1f}", "pass" if r1 <= 5 else "FAIL"])
    print(tabulate(rows, headers=["dataset", "base rho=0", ">= 50", "base rho=1", "<= 5"]))

    n_adapter = adapter_bytes(spec, model_id)
    print(f"\nfull document KV cache (largest, prompt prefix included): {kv_full / 2**20:.1f} MiB; "
          f"one adapter (snapkv recipe): {n_adapter / 2**20:.1f} MiB -> "
          f"{'pass' if kv_full > n_adapter else 'FAIL'} (cache / adapter = {kv_full / n_adapter:.2f})")

    print("\nBase ROUGE-L by press, and paired differences (95% CI clustered by document)")
    rows, separated = [], []
    for ds in datasets:
        for rho in [r for r in args.rhos if 0 < r < 1]:
            means = {n: mean(n, ds, rho) for n in PRESSES}
            diffs = []
            for a, b in itertools.combinations(PRESSES, 2):
                keys = sorted(scores[a][(ds, rho)])
                d, lo, hi = paired_bootstrap_ci([scores[a][(ds, rho)][k] for k in keys],
                                                [scores[b][(ds, rho)][k] for k in keys], [k[0] for k in keys])
                apart = lo > 0 or hi < 0
                if apart:
                    separated.append((ds, rho, a, b))
                diffs.append(f"{a}-{b} {d:+.1f} [{lo:+.1f}, {hi:+.1f}]{' *' if apart else ''}")
            rows.append([ds, rho, *(f"{means[n]:.1f}" for n in PRESSES), "; ".join(diffs)])
    print(tabulate(rows, headers=["dataset", "rho", *PRESSES, "paired difference (* = CI excludes 0)"]))
    print(f"\npresses told apart at {len(separated)} (dataset, rho, pair) points -> "
          f"{'pass' if separated else 'FAIL'}")


if __name__ == "__main__":
    main()
