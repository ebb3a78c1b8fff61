"""Choose the mini tier's QA-recipe learning rate and epochs on the dev split (never on test).

For each (lr, epochs) candidate, the recipe of ``--submission`` (default: snapkv, whose recipe
the other QA baselines share) is trained on every dev document and scored under the headline
condition (base KV cache, adapter while decoding) at rho = 0, 0.9 and 1. The chosen candidate
maximises the mean over those rho; ties go to the cheaper one (fewer epochs). Adapters land
in the usual cache, so a rerun only re-scores.

    python scripts/choose_recipe.py [--model smollm2-135m] [--lrs 3e-4 1e-3 3e-3] [--epochs 4 6]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from tabulate import tabulate

from benchmark.datasets import load_split
from benchmark.models import PromptRenderer, load_model
from benchmark.runner import DocumentRun, model_key
from benchmark.spec import load_spec
from benchmark.submission import load_submission

RHOS = [0.0, 0.9, 1.0]
CONDITION = "base_kv_adapter_decode"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--submission", default="submissions/snapkv")
    ap.add_argument("--model")
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3])
    ap.add_argument("--epochs", type=int, nargs="+", default=[4, 6])
    args = ap.parse_args()
    spec = load_spec("mini")
    m = spec.model(args.model)
    model, tok = load_model(m)
    base = load_submission(args.submission)
    renderer = PromptRenderer(tok, spec.prompt_for(m))
    docs = [(ds.id, doc) for ds in spec.datasets for doc in load_split(ds.dev)]
    rows = []
    for epochs in sorted(args.epochs):
        for lr in args.lrs:
            train = dataclasses.replace(base.recipe.train, lr=lr, epochs=epochs)
            sub = dataclasses.replace(base, recipe=dataclasses.replace(base.recipe, train=train))
            run = DocumentRun(model=model, tokenizer=tok, renderer=renderer, spec=spec, submission=sub,
                              model_key=model_key(m), press=sub.make_compressor(), progress=False)
            t0, by_ds = time.perf_counter(), {}
            for ds_id, doc in docs:
                _, preds = run.evaluate(doc, RHOS, [CONDITION])
                by_ds.setdefault(ds_id, {r: [] for r in RHOS})
                for p in preds:
                    by_ds[ds_id][p["rho"]].append(p["rouge_l"])
                print(f"lr {lr:g} x {epochs} epochs: {ds_id}/{doc.doc_id} done, {time.perf_counter() - t0:.0f} s", flush=True)
            per_rho = {r: sum(sum(d[r]) / len(d[r]) for d in by_ds.values()) / len(by_ds) for r in RHOS}
            rows.append([lr, epochs, *(per_rho[r] for r in RHOS), sum(per_rho.values()) / len(RHOS),
                         time.perf_counter() - t0])
    best = max(rows, key=lambda r: (round(r[-2], 1), -r[1]))
    print(f"\n{args.submission} recipe on the dev split of {', '.join(d.id for d in spec.datasets)}; "
          f"model {m.id}; condition {CONDITION}; ROUGE-L averaged over datasets")
    print(tabulate(rows, headers=["lr", "epochs", *(f"rho={r:g}" for r in RHOS), "mean", "s"],
                   floatfmt=(".0e", "d", ".1f", ".1f", ".1f", ".1f", ".0f")))
    if len(rows) == 1:
        print("one candidate only: nothing was chosen (give several --lrs or --epochs to choose)")
    else:
        print(f"chosen: lr {best[0]:g}, {best[1]} epochs")


if __name__ == "__main__":
    main()
