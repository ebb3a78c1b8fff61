"""Adapter training speed: the default QA recipe on real mini documents, with and without
prefix sharing (:func:`benchmark.protocol.adapters.batch_loss`).

Every QA example starts with the same chat prefix; with sharing, each batch runs as one packed
sequence in which that prefix appears once and the rest of every example attends to it under a
tree-shaped mask, without padding. Both ways compute the same loss
and gradients (``tests/test_adapters.py``); this script measures what that saves and prints
the final losses side by side.

    python perf/training.py [--submission submissions/snapkv] [--docs 1] [--model smollm2-135m] [--epochs N]
        [--max-steps N] [--tiny]
"""

from __future__ import annotations

import argparse
import resource

from benchmark.paths import set_offline  # before transformers is imported

set_offline()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--submission", default="submissions/snapkv")
    ap.add_argument("--docs", type=int, default=1, help="documents per mini dataset")
    ap.add_argument("--model")
    ap.add_argument("--epochs", type=int, help="override the recipe's epochs (for a quicker look)")
    ap.add_argument("--max-steps", type=int, help="cap the training steps (for a quicker look)")
    from benchmark.protocol.tiny import add_tiny_argument

    add_tiny_argument(ap)
    args = ap.parse_args(argv)

    import dataclasses

    import torch
    from tabulate import tabulate

    from benchmark.protocol.adapters import build_examples, detach_adapter, train_adapter
    from benchmark.protocol.datasets import load_split
    from benchmark.protocol.models import PromptRenderer, load_model
    from benchmark.protocol.spec import load_spec
    from benchmark.protocol.submission import load_submission
    from benchmark.protocol.tiny import load_tiny_model

    spec = load_spec("mini")
    recipe = load_submission(args.submission).recipe
    if args.epochs:
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, epochs=args.epochs))
    if args.max_steps:
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, max_steps=args.max_steps))
    model_spec = spec.model(args.model)
    model, tok = (load_tiny_model if args.tiny else load_model)(model_spec, "cpu")
    renderer = PromptRenderer(tok, spec.prompt_for(model_spec))
    rows = []
    digits = 3 if args.tiny else 1  # a tiny model trains in milliseconds
    for ds in spec.datasets:
        for doc in load_split(ds.test)[: args.docs]:
            examples = build_examples(doc.training_view(), recipe, renderer, model, model_spec.id)
            for share in (False, True):
                torch.manual_seed(0)
                info = train_adapter(model, "bench", examples, recipe, tok.pad_token_id, progress=False,
                                     share_prefix=share)
                detach_adapter(model, "bench")
                rows.append([f"{ds.id}/{doc.doc_id}", "shared prefix" if share else "plain padded", len(examples),
                             info["steps"], info["tokens"], info["forward_tokens"], f"{info['seconds']:.{digits}f}",
                             f"{info['tokens'] / info['seconds']:.0f}", f"{info['final_loss']:.4f}"])
                print(*rows[-1], sep="  ", flush=True)
    print(f"\nrecipe: {args.submission} ({recipe.train.objective}, r{recipe.lora.r}, dora={recipe.lora.use_dora}, "
          f"{recipe.train.epochs} epochs, batch {recipe.train.batch_size}"
          f"{f', at most {args.max_steps} steps' if args.max_steps else ''}); "
          f"model {'tiny (random)' if args.tiny else model_spec.id}; "
          f"torch threads {torch.get_num_threads()}")
    print(tabulate(rows, headers=["document", "batching", "examples", "steps", "example tokens", "forward tokens",
                                  "seconds", "example tokens/s", "final loss"], tablefmt="github"))
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
