"""Decode A/B on the runner's own path, interleaved A/B/A/B on the same document so that load on a
shared machine hits every mode alike. Answers must be identical. Modes (``--modes``, the first is
the reference of the ratios):

* ``plain``: every row, batches in row order, each row's cache copied into the batch buffer
* ``copy``: ``greedy_decode`` (identical rows once, longest cache first) with the copying batch
  decode (``batch_decode=generation.decode_batch_copy``)
* ``cache``: ``greedy_decode`` reading each distinct cache once per batch, in place, batched longest
  cache first with every row kept to its batch's end (``batching="cache"``)
* ``shared``: ``greedy_decode`` as it is: as ``cache``, batched shortest question first, a row
  leaving its batch once it stops (``batching="suffix"``, :data:`benchmark.config.BATCHINGS`)

Each (repeat, mode) is one ``DocumentRun.evaluate`` of the document: the runner's whole path, with
the decode of the mode in place of ``greedy_decode``. The adapter is a short-trained one (--steps),
trained at the first evaluation and loaded from a temporary store after; the decode's cost does
not depend on how well it was trained.

    python perf/decode_ab.py [--modes copy shared] [--model qwen2.5-0.5b] [--questions 4] [--repeats 2]
        [--dtype float32] [--tiny]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

from benchmark.paths import set_offline  # before transformers is imported

set_offline()


def plain_decode(model, tok, rows, *, max_new_tokens, stop=(), batch_size=16, batching=None):
    from benchmark.protocol.generation import decode_batch_copy

    out = []
    for i in range(0, len(rows), batch_size):
        out.extend(decode_batch_copy(model, tok, rows[i:i + batch_size], max_new_tokens, stop))
    return out


def decoder(mode: str):
    """A stand-in for the runner's ``greedy_decode`` that decodes the ``mode`` way."""
    from benchmark.protocol.generation import decode_batch_copy, greedy_decode

    def batched(batching, **fixed):  # the runner passes its own batching: this one wins
        return lambda *a, **kw: greedy_decode(*a, **(kw | fixed | {"batching": batching}))

    return {"plain": plain_decode, "copy": batched("cache", batch_decode=decode_batch_copy),
            "cache": batched("cache"), "shared": batched("suffix")}[mode]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", choices=["plain", "copy", "cache", "shared"], default=["copy", "shared"],
                    help="decodes to time, interleaved; the first is the reference (default: copy shared)")
    ap.add_argument("--submission", default="submissions/snapkv")
    ap.add_argument("--model")
    ap.add_argument("--dataset")
    ap.add_argument("--split", default="dev", choices=["dev", "test"])
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--rhos", type=float, nargs="+")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="adapter training steps")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"])
    from benchmark.protocol.tiny import add_tiny_argument

    add_tiny_argument(ap)
    args = ap.parse_args(argv)

    from benchmark.config import EvalRequest
    from benchmark.protocol import runner
    from benchmark.protocol.adapters import AdapterStore
    from benchmark.protocol.datasets import load_split, resolve_dataset
    from benchmark.protocol.evaluator import LOADERS, Loaders
    from benchmark.protocol.spec import load_spec
    from benchmark.protocol.submission import load_submission
    from benchmark.protocol.tiny import load_tiny_model

    spec = load_spec("mini")
    sub = load_submission(args.submission)
    sub = dataclasses.replace(sub, recipe=dataclasses.replace(
        sub.recipe, train=dataclasses.replace(sub.recipe.train, max_steps=args.steps)))
    loaders = Loaders(load_model=load_tiny_model) if args.tiny else LOADERS
    run = runner.open_run(spec, sub, EvalRequest(submission=args.submission, model_id=args.model, device="cpu",
                                                 dtype=args.dtype, progress=False), loaders=loaders)
    ds = resolve_dataset(spec, args.dataset or spec.datasets[0].id)
    doc = load_split(ds.split(args.split))[0]
    qs = list(doc.questions)[: args.questions]
    rhos = sorted(args.rhos or spec.rhos)
    real = runner.greedy_decode
    modes = list(dict.fromkeys(args.modes))
    times = {m: [] for m in modes}
    preds = {}
    with tempfile.TemporaryDirectory() as store, run:
        run.store = AdapterStore(Path(store))  # trained here once, whatever the cache holds
        try:
            for rep in range(args.repeats):
                for name in modes:
                    runner.greedy_decode = decoder(name)  # the name the runner decodes with
                    record, out = run.evaluate(doc, rhos, list(spec.conditions), qs)
                    times[name].append(record["timings"]["decode_s"])
                    preds.setdefault(name, sorted((p["rho"], p["condition"], p["question_id"], p["generation"])
                                                  for p in out))
                    print(f"repeat {rep} {name}: decode {times[name][-1]:.1f} s", file=sys.stderr, flush=True)
        finally:
            runner.greedy_decode = real
    ref = modes[0]
    model_name = "tiny (random)" if args.tiny else spec.model(args.model).id
    print(f"{len(qs)} questions x rhos {rhos} x {len(spec.conditions)} conditions = {len(preds[ref])} rows; "
          f"model {model_name} ({str(run.model.dtype).removeprefix('torch.')})")
    for name in modes:
        print(f"{name}: decode s per repeat {[round(t, 3) for t in times[name]]}")
    ok = True
    for name in modes[1:]:
        ratios = [a / b for a, b in zip(times[ref], times[name])]
        same = sum(a == b for a, b in zip(preds[ref], preds[name]))
        ok &= same == len(preds[ref])
        print(f"{ref}/{name} decode-time ratio per repeat: {[round(r, 2) for r in ratios]}; "
              f"generations identical: {same}/{len(preds[ref])}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
