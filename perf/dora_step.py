"""Seconds per DoRA training step, with peft's identity-matrix ``B @ A`` and with the direct one.

One batch of a dev document's QA examples (the default submission's recipe, packed as in
training), the default model; the two ways alternate (peft, direct, peft, direct, ...) so that
load on a shared machine hits both alike. It prints each way's median seconds per step, the
ratio, and the largest difference between the two ways' losses (0 when the update is identical).

    OMP_NUM_THREADS=2 python perf/dora_step.py [--model qwen2.5-0.5b] [--steps 3] [--rounds 2] [--tiny]
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmark.paths import set_offline  # before transformers is imported

set_offline()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--submission", default="submissions/snapkv")
    ap.add_argument("--model", help="a model id of the mini spec (default: the spec's default)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round and way")
    ap.add_argument("--rounds", type=int, default=2)
    from benchmark.protocol.tiny import add_tiny_argument

    add_tiny_argument(ap)
    args = ap.parse_args(argv)

    import torch

    from benchmark.protocol.adapters import batch_loss, build_examples, direct_dora_lora_weight
    from benchmark.protocol.datasets import load_split
    from benchmark.protocol.models import PromptRenderer, load_model
    from benchmark.protocol.runner import model_key
    from benchmark.protocol.spec import load_spec
    from benchmark.protocol.submission import load_submission
    from benchmark.protocol.tiny import load_tiny_model

    spec = load_spec("mini")
    m = spec.model(args.model)
    model, tok = (load_tiny_model if args.tiny else load_model)(m)
    sub = load_submission(args.submission).for_model(m.id)
    renderer = PromptRenderer(tok, spec.prompt_for(m))
    doc = load_split(spec.datasets[0].dev)[0]
    batch = build_examples(doc.training_view(), sub.recipe, renderer, model, model_key(m))[:sub.recipe.train.batch_size]
    model.add_adapter(sub.recipe.lora.peft_config(), adapter_name="bench")
    model.set_adapter("bench")
    for n, p in model.named_parameters():
        p.requires_grad_(".bench." in n or n.endswith(".bench"))
    model.train()

    def step() -> tuple[float, float]:  # no optimizer step: both ways see the same weights
        t0 = time.perf_counter()
        loss, _ = batch_loss(model, batch, tok.pad_token_id)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, loss.item()

    times = {"peft": [], "direct": []}
    losses = {"peft": set(), "direct": set()}
    step()  # warm-up
    for _ in range(args.rounds):
        for way in times:
            for _ in range(args.steps):
                if way == "direct":
                    with direct_dora_lora_weight():
                        s, loss = step()
                else:
                    s, loss = step()
                times[way].append(s)
                losses[way].add(loss)
    peft_s, direct_s = statistics.median(times["peft"]), statistics.median(times["direct"])
    diff = max(abs(a - b) for a in losses["peft"] for b in losses["direct"])
    model_name = "tiny (random)" if args.tiny else m.id
    print(f"model {model_name}, {len(batch)} examples, torch {torch.__version__}, {torch.get_num_threads()} threads")
    digits = 4 if args.tiny else 2  # a tiny model's steps take milliseconds
    print(f"seconds per step (forward + backward, median of {len(times['peft'])}): peft {peft_s:.{digits}f}, "
          f"direct {direct_s:.{digits}f}, ratio {peft_s / direct_s:.2f}x; largest loss difference {diff:.2e}")


if __name__ == "__main__":
    main()
