"""Choose a QA recipe's learning rate and epochs per model on the dev split (never on test).

For each (lr, epochs) candidate, the recipe of ``--submission`` (default: snapkv, whose recipe
the other QA baselines share) is trained on every dev document and scored under the base
condition and the headline condition (base KV cache, adapter while decoding) at rho = 0 and
rho = 1. The rule cannot reward leakage, or memorisation at the cost of reading:

* the score is the headline ROUGE-L on **covered** dev questions at rho = 1 (facts the adapter
  was trained on, asked in other words, with no document left);
* a candidate is admissible only if its headline at rho = 0 is not below the base model at
  rho = 0 by more than the paired 95% CI (clustered by document): the adapter must not
  override a context the model can read;
* a candidate with a diverged adapter (final loss >= first, or not finite) is not admissible.

Ties (within 0.5 ROUGE-L) go to fewer epochs, then to the lower rate. Put the choice into the
submission's ``adapter.per_model.<model>``. Adapters land in the usual cache, so a rerun only
re-scores.

    python scripts/choose_recipe.py --model qwen2.5-0.5b [--lrs 3e-4 1e-3 3e-3] [--epochs 4 6] [--docs N]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
from tabulate import tabulate

from benchmark.config import BASE, DEFAULT_ADAPTER_HEADLINE
from benchmark.protocol.datasets import load_split
from benchmark.protocol.metrics import paired_bootstrap_ci
from benchmark.protocol.models import load_model
from benchmark.protocol.runner import DocumentRun, model_key
from benchmark.protocol.spec import load_spec
from benchmark.protocol.submission import load_submission

RHOS = [0.0, 1.0]
HEADLINE = DEFAULT_ADAPTER_HEADLINE


def summarise(preds: list[dict]) -> dict:
    """The rule's figures from one candidate's dev predictions."""
    def scores(cond: str, rho: float, tag: str | None = None) -> dict:
        return {(p["doc_id"], p["question_id"]): p["rouge_l"] for p in preds
                if p["condition"] == cond and p["rho"] == rho and (tag is None or tag in p.get("tags", []))}

    def mean(d: dict) -> float:
        return float(np.mean(list(d.values()))) if d else float("nan")

    head0, base0 = scores(HEADLINE, 0.0), scores(BASE, 0.0)
    keys = sorted(head0)
    diff, lo, hi = paired_bootstrap_ci([head0[k] for k in keys], [base0[k] for k in keys], [k[0] for k in keys])
    return {"covered_rho1": mean(scores(HEADLINE, 1.0, "covered")),
            "uncovered_rho1_minus_base": (mean(scores(HEADLINE, 1.0, "uncovered"))
                                          - mean(scores(BASE, 1.0, "uncovered"))),
            "rho0_minus_base": diff, "rho0_ci": (lo, hi), "reads": hi >= 0}


def choose(rows: list[dict]) -> dict | None:
    """The admissible candidate with the best covered score (ties: fewer epochs, lower lr)."""
    ok = [r for r in rows if r["reads"] and not r["diverged"]]
    if not ok:
        return None
    top = max(r["covered_rho1"] for r in ok)
    return min((r for r in ok if r["covered_rho1"] >= top - 0.5), key=lambda r: (r["epochs"], r["lr"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--submission", default="submissions/snapkv")
    ap.add_argument("--model")
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3])
    ap.add_argument("--epochs", type=int, nargs="+", default=[4, 6])
    ap.add_argument("--docs", type=int, help="the first N dev documents of each dataset (default: all)")
    args = ap.parse_args()
    spec = load_spec("mini")
    m = spec.model(args.model)
    model, tok = load_model(m)
    base = load_submission(args.submission).for_model(m.id)
    docs = [doc for ds in spec.datasets for doc in load_split(ds.dev)[:args.docs]]
    rows = []
    for epochs in sorted(args.epochs):
        for lr in sorted(args.lrs):
            train = dataclasses.replace(base.recipe.train, lr=lr, epochs=epochs)
            sub = dataclasses.replace(base, recipe=dataclasses.replace(base.recipe, train=train))
            run = DocumentRun.build(model, tok, spec, sub, model_key=model_key(m), prompt=spec.prompt_for(m),
                                    progress=False)
            t0, preds, diverged = time.perf_counter(), [], 0
            for doc in docs:
                record, doc_preds = run.evaluate(doc, RHOS, [BASE, HEADLINE])
                preds += doc_preds
                diverged += bool(record["adapter"] and record["adapter"].get("diverged"))
                print(f"lr {lr:g} x {epochs} epochs: {doc.doc_id} done, {time.perf_counter() - t0:.0f} s", flush=True)
            rows.append({"lr": lr, "epochs": epochs, **summarise(preds), "diverged": diverged,
                         "seconds": time.perf_counter() - t0})
    print(f"\n{args.submission} recipe on the dev split of {', '.join(d.id for d in spec.datasets)} "
          f"({len(docs)} documents); model {m.id}; "
          f"headline {HEADLINE}; ROUGE-L over both datasets")
    print(tabulate([[r["lr"], r["epochs"], r["covered_rho1"], r["rho0_minus_base"],
                     f"[{r['rho0_ci'][0]:+.1f}, {r['rho0_ci'][1]:+.1f}]", r["uncovered_rho1_minus_base"],
                     r["diverged"], "yes" if r["reads"] and not r["diverged"] else "no", r["seconds"]] for r in rows],
                   headers=["lr", "epochs", "covered @rho=1", "rho=0 - base", "95% CI", "uncovered @rho=1 - base",
                            "diverged", "admissible", "s"],
                   floatfmt=(".0e", "d", ".1f", "+.1f", "", "+.1f", "d", "", ".0f")))
    best = choose(rows)
    if len(rows) == 1:
        print("one candidate only: nothing was chosen (give several --lrs or --epochs to choose)")
    elif best is None:
        print("no candidate is admissible: each one harms reading at rho = 0 or diverged")
    else:
        print(f"chosen: lr {best['lr']:g}, {best['epochs']} epochs "
              f"(adapter.per_model: {{{m.id}: {{lr: {best['lr']:g}, epochs: {best['epochs']}}}}})")


if __name__ == "__main__":
    main()
