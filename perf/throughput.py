"""Throughput: three ways of producing the ``base`` condition's answers over a rho grid.

  (1) kvpress   kvpress's own KVPressTextGenerationPipeline, called once per (document, rho)
                with the document's question list (one prefill + compression per call).
  (2) naive     re-prefill and compress the context for every (document, rho, question), then decode.
  (3) ours      lorakv-bench's stages: one prefill + scoring per document for the whole grid,
                eviction per rho, all (rho, question) rows decoded as one batch.

All three use the same tokens (kvpress's pipeline preprocessing), the same press and greedy
decoding; (1) and (3) must give identical answers, which the script checks. Each method runs
in its own process so its peak memory (max RSS) is its own (unless --in-process).

    python perf/throughput.py [--docs 8] [--questions 8] [--rhos 0 0.5 0.75 0.9 0.95] [--tiny] [--in-process]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from benchmark.paths import set_offline  # before transformers is imported

set_offline()

METHODS = ("kvpress", "naive", "ours")


def _setup(args):
    import torch
    from kvpress import SnapKVPress
    from transformers import pipeline

    from benchmark.protocol.datasets import load_split
    from benchmark.protocol.models import load_model
    from benchmark.protocol.spec import load_spec
    from benchmark.protocol.tiny import load_tiny_model

    spec = load_spec("mini")
    model, tok = (load_tiny_model if args.tiny else load_model)(spec.model(args.model), "cpu")
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tok, device="cpu")
    docs = []
    for ds in spec.datasets:
        docs += load_split(ds.test)[: args.docs]
    instruction = "Read the context and answer the question with a few words.\n\nContext:\n"
    work = []
    for d in docs:
        qs = [q.question for q in d.questions[: args.questions]]
        pre = pipe.preprocess(instruction + d.text + "\n\nQuestion: ", qs, answer_prefix="Answer:",
                              max_context_length=10**6)
        work.append((d.doc_id, pre["context_ids"][0].tolist(), [q[0].tolist() for q in pre["questions_ids"]]))
    press = lambda rho: SnapKVPress(compression_ratio=rho, window_size=16)  # noqa: E731
    torch.manual_seed(0)
    return model, tok, pipe, work, press


def run_method(method: str, args) -> dict:
    import torch
    from transformers import DynamicCache

    from benchmark.protocol.compression import evict, prefill
    from benchmark.protocol.generation import Row, greedy_decode

    model, tok, pipe, work, press = _setup(args)
    answers, prefills, t0 = {}, 0, time.perf_counter()
    for n_doc, (doc_id, ctx, questions) in enumerate(work, 1):
        print(f"{method}: document {n_doc}/{len(work)}, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        if method == "kvpress":
            for rho in args.rhos:
                out = pipe._forward({"context_ids": torch.tensor([ctx]),
                                     "questions_ids": [torch.tensor([q]) for q in questions]},
                                    max_new_tokens=args.max_new_tokens, press=press(rho))
                prefills += 1
                for i, a in enumerate(out):
                    answers[f"{doc_id}|{rho}|{i}"] = a.strip()
        elif method == "naive":
            for rho in args.rhos:
                for i, q in enumerate(questions):
                    cache = DynamicCache()
                    with torch.no_grad(), press(rho)(model):
                        model.model(input_ids=torch.tensor([ctx]), past_key_values=cache)
                    prefills += 1
                    kv = [(layer.keys, layer.values) for layer in cache.layers]
                    answers[f"{doc_id}|{rho}|{i}"] = greedy_decode(
                        model, tok, [Row(kv, len(ctx), q)], max_new_tokens=args.max_new_tokens)[0].strip()
        else:  # ours: one prefill and scoring pass serves every rho; everything decoded in one batch
            span = (0, len(ctx))
            kv, scores = prefill(model, ctx, span, press(0.0), list(args.rhos))
            prefills += 1
            rows, keys = [], []
            for rho in args.rhos:
                pruned, _ = evict(kv, scores, span, rho)
                for i, q in enumerate(questions):
                    rows.append(Row(pruned, len(ctx), q))
                    keys.append(f"{doc_id}|{rho}|{i}")
            for k, a in zip(keys, greedy_decode(model, tok, rows, max_new_tokens=args.max_new_tokens, batch_size=64)):
                answers[k] = a.strip()
    wall = time.perf_counter() - t0
    decoded = sum(len(tok.encode(a, add_special_tokens=False)) for a in answers.values())
    return {"method": method, "wall_s": wall, "prefills": prefills, "answers": answers, "decoded_tokens": decoded,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=8, help="documents per mini dataset")
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--rhos", type=float, nargs="+", default=[0.0, 0.5, 0.75, 0.9, 0.95],
                    help="kvpress presses refuse rho = 1, so the comparison grid stops below it")
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--model")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    from benchmark.protocol.tiny import add_tiny_argument

    add_tiny_argument(ap)
    ap.add_argument("--in-process", action="store_true", help="run the methods one after another in this "
                    "process (quicker to start; peak RSS is then the process's so far, not each method's own)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(run_method(args.worker, args)))
        return
    from tabulate import tabulate

    results = {}
    for m in args.methods:
        results[m] = run_method(m, args) if args.in_process else _in_worker(m, args)
        print(f"{m}: {results[m]['wall_s']:.1f} s", file=sys.stderr)
    digits = 3 if args.tiny else 1  # a tiny model's runs take milliseconds
    rows = [[m, f"{r['wall_s']:.{digits}f}", r["prefills"], r["decoded_tokens"],
             f"{r['decoded_tokens'] / r['wall_s']:.1f}", f"{r['peak_rss_mb']:.0f}"] for m, r in results.items()]
    print(tabulate(rows, headers=["method", "wall s", "prefills", "decoded tokens", "tokens/s", "peak RSS MB"],
                   tablefmt="github"))
    if "ours" in results:
        for m in ("kvpress", "naive"):
            if m in results:
                print(f"({m})/(ours) wall-time ratio: {results[m]['wall_s'] / results['ours']['wall_s']:.2f}")
    if "kvpress" in results and "ours" in results:
        a, b = results["kvpress"]["answers"], results["ours"]["answers"]
        same = sum(a[k] == b.get(k) for k in a)
        print(f"answers identical to kvpress's pipeline: {same}/{len(a)}")
        for k in [k for k in a if a[k] != b.get(k)][:5]:
            print(f"  differs {k}: kvpress={a[k]!r} ours={b.get(k)!r}")
        if same != len(a):
            sys.exit(1)


def _in_worker(method: str, args) -> dict:
    """``run_method`` in a process of its own."""
    argv = [sys.executable, __file__, "--worker", method, "--docs", str(args.docs), "--questions", str(args.questions),
            "--max-new-tokens", str(args.max_new_tokens), "--rhos", *map(str, args.rhos)]
    argv += ["--model", args.model] if args.model else []
    argv += ["--tiny"] if args.tiny else []
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True)  # the worker's progress goes to our stderr
    if proc.returncode:
        sys.exit(f"{method} failed (exit {proc.returncode}); its error is above")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
