"""bf16 against fp32 on CPU: speed of the model's matmuls and of the runner's stages, and whether
the answers survive (generations and ROUGE-L of the ``base`` condition).

Each dtype loads the model anew and evaluates the same slice (``DocumentRun.evaluate``, the
``base`` condition); with --train-steps, a few adapter training steps are timed too. On a shared
machine, read the ratios rather than the absolute seconds.

    python perf/dtype_ab.py [--model qwen2.5-0.5b] [--docs 1] [--questions 4] [--rhos 0 0.9] [--train-steps 0]
        [--tiny]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from benchmark.paths import set_offline  # before transformers is imported

set_offline()


def linear_rate(dtype, rows: int, out_f: int = 4864, in_f: int = 896, reps: int = 3) -> float:
    """GFLOP/s of F.linear, by default shaped like Qwen2.5-0.5B's MLP up-projection."""
    import torch

    w, x = torch.randn(out_f, in_f).to(dtype), torch.randn(rows, in_f).to(dtype)
    torch.nn.functional.linear(x, w)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.nn.functional.linear(x, w)
        best = min(best, time.perf_counter() - t0)
    return 2 * rows * in_f * out_f / best / 1e9


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--submission", default="submissions/snapkv")
    ap.add_argument("--model")
    ap.add_argument("--dataset")
    ap.add_argument("--split", default="dev", choices=["dev", "test"])
    ap.add_argument("--docs", type=int, default=1)
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--rhos", type=float, nargs="+", default=[0.0, 0.9])
    ap.add_argument("--train-steps", type=int, default=0)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (benchmark.protocol.tiny) in place of the "
                    "spec's, and matmuls of its size: a smoke run of the script")
    args = ap.parse_args(argv)

    import torch
    from tabulate import tabulate

    from benchmark.config import EvalRequest
    from benchmark.protocol.adapters import build_examples, detach_adapter, train_adapter
    from benchmark.protocol.datasets import load_split, resolve_dataset
    from benchmark.protocol.evaluator import LOADERS, Loaders
    from benchmark.protocol.runner import open_run
    from benchmark.protocol.spec import load_spec
    from benchmark.protocol.submission import load_submission
    from benchmark.protocol.tiny import load_tiny_model

    out_f, in_f = (128, 64) if args.tiny else (4864, 896)
    for rows in (48, 512):
        rates = {dt: linear_rate(getattr(torch, dt), rows, out_f, in_f) for dt in args.dtypes}
        print(f"F.linear {rows}x{in_f} -> {out_f}, {torch.get_num_threads()} threads: "
              + ", ".join(f"{dt} {r:.1f} GFLOP/s" for dt, r in rates.items()), flush=True)
    loaders = Loaders(load_model=load_tiny_model) if args.tiny else LOADERS
    spec = load_spec("mini")
    sub = load_submission(args.submission)
    ds = resolve_dataset(spec, args.dataset or spec.datasets[0].id)
    docs = load_split(ds.split(args.split))[: args.docs]
    res = {}
    for dt in args.dtypes:
        run = open_run(spec, sub, EvalRequest(submission=args.submission, model_id=args.model, device="cpu", dtype=dt,
                                              progress=False), loaders=loaders)
        t = {"prefill_s": 0.0, "evict_s": 0.0, "decode_s": 0.0}
        preds = []
        for doc in docs:
            record, got = run.evaluate(doc, sorted(args.rhos), ["base"], list(doc.questions)[: args.questions])
            preds += got
            for k in t:
                t[k] += record["timings"][k]
        if args.train_steps:
            recipe = run.submission.recipe
            recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, max_steps=args.train_steps))
            ex = build_examples(docs[0].training_view(), recipe, run.renderer, run.model, run.model_key)
            info = train_adapter(run.model, "ab", ex, recipe, run.tokenizer.pad_token_id, progress=False)
            detach_adapter(run.model, "ab")
            t["train_step_s"] = info["seconds"] / info["steps"]
        res[dt] = (t, {(p["doc_id"], p["rho"], p["question_id"]): p for p in preds})
        print(dt, {k: round(v, 3) for k, v in t.items()}, flush=True)
        run.close()
        del run
    if len(args.dtypes) == 2:
        (a, (ta, pa)), (b, (tb, pb)) = res.items()
        rows = [[k, f"{ta[k]:.3f}", f"{tb[k]:.3f}", f"{ta[k] / tb[k]:.2f}"] for k in ta]
        print(tabulate(rows, headers=["stage", f"{a} s", f"{b} s", f"{a}/{b}"], tablefmt="github"))
        same = sum(pa[k]["generation"] == pb[k]["generation"] for k in pa)
        print(f"generations identical: {same}/{len(pa)}")
        for rho in sorted(args.rhos):
            ks = [k for k in pa if k[1] == rho]
            ra = sum(pa[k]["rouge_l"] for k in ks) / len(ks)
            rb = sum(pb[k]["rouge_l"] for k in ks) / len(ks)
            agree = sum(pa[k]["generation"] == pb[k]["generation"] for k in ks)
            print(f"rho {rho}: mean ROUGE-L {a} {ra:.1f}, {b} {rb:.1f}; identical {agree}/{len(ks)}")
        for k in [k for k in pa if pa[k]["generation"] != pb[k]["generation"]][:5]:
            print(f"  differs {k}: {a}={pa[k]['generation']!r} {b}={pb[k]['generation']!r}")


if __name__ == "__main__":
    main()
