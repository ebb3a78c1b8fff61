"""Where the time goes, stage by stage, against the machine's own matmul limit.

One document through the runner's stages (``DocumentRun.evaluate``, the code path a submission
runs), with the adapter trained first (into a temporary store, so that it is trained whatever the
cache holds):

    training   train_adapter on the document's training view (the recipe's steps, or --max-steps)
    prefill    the prefills of the document (one per distinct prefill weights) and the no-context prefix
    scoring    the press's score() calls inside those prefills (timed separately, subtracted from prefill)
    eviction   evict() per (rho, condition) and building the decode rows
    decoding   greedy_decode of every (question, rho, condition) row

For each stage: seconds, tokens/s and the achieved FLOP rate as a fraction of the peak of a square
``torch.matmul`` (1024^3) on this machine with the same thread count and dtype (measured before and
after the run; the better is used, since the machine is shared). FLOPs are counted from what the
model actually ran (forward hooks on the transformer and the LM head): 2 FLOPs per weight per token
for the transformer's linear layers, 2 * vocab * hidden per LM-head row, and 4 * hidden * (key
length) per query token per layer for attention (half the square for a causal prefill without a
mask, the full padded square otherwise, as SDPA computes it; in a decode over shared caches, each
row's own tokens plus its cache's entries). Training adds the backward pass: the base weights are
frozen, so the linear layers need input gradients only (1x their forward) and attention about 2x its
forward; the LoRA weights' own FLOPs are left out (under 3% for r = 16 on the MLP). Scoring and
eviction are not matmul-bound and get no FLOP figure.

    python perf/stages.py [--dataset mini-narrative] [--split dev] [--docs 1] [--questions N]
                          [--model qwen2.5-0.5b] [--dtype float32|bfloat16] [--max-steps N]
                          [--profile training|decoding] [--tiny]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from benchmark.paths import set_offline  # before transformers is imported

set_offline()


def gemm_peak(dtype, n: int = 1024, reps: int = 5) -> float:
    """Best-of-``reps`` FLOP/s of an n x n x n matmul (the machine's practical limit for this dtype)."""
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)  # warm-up: thread pool, packing buffers
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


@dataclass
class Counter:
    """Tokens and FLOPs the model ran, credited to the stage that is current.

    ``DocumentRun.evaluate`` runs the stages in order, and the counter follows them from the model's
    own calls: a forward in training mode is training; after :meth:`start_document`, the first
    forward of the decoder stack alone in evaluation mode starts the prefill (the runner prefills
    without the LM head); a forward of the whole model after that starts the decoding.
    ``on_stage(old, new)`` is called at each switch."""

    linear_params: int  # weights of the transformer's linear layers (embedding and LM head excluded)
    lm_head_params: int
    attn_width: int  # query heads x head_dim
    n_layers: int
    stage: str = "other"
    training: bool = False
    on_stage: Callable[[str, str], None] | None = None

    def __post_init__(self):
        self.tokens: dict[str, int] = {}
        self.flops: dict[str, float] = {}
        self._in_model = False

    def start_document(self) -> None:
        self._enter("training")

    def _enter(self, stage: str) -> None:
        old, self.stage = self.stage, stage
        if old != stage and self.on_stage is not None:
            self.on_stage(old, stage)

    def _add(self, tokens: int, flops: float) -> None:
        self.tokens[self.stage] = self.tokens.get(self.stage, 0) + tokens
        self.flops[self.stage] = self.flops.get(self.stage, 0.0) + flops

    def model_hook(self, module, args, kwargs):  # before a forward of the whole model
        self._in_model = True
        if self.stage == "prefill" and not module.training:
            self._enter("decoding")

    def model_done_hook(self, module, args, kwargs, output):
        self._in_model = False

    def body_hook(self, module, args, kwargs):
        from benchmark.protocol.attention import shared_prefix

        self.training = module.training
        if not module.training and not self._in_model and self.stage == "training":
            self._enter("prefill")
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        bsz, q = ids.shape[0], ids.shape[1]
        cache = kwargs.get("past_key_values")
        past = cache.get_seq_length() if cache is not None else 0
        kv = past + q
        causal_half = kwargs.get("attention_mask") is None and past == 0
        attn = 4 * self.attn_width * bsz * q * kv * self.n_layers * (0.5 if causal_half else 1.0)
        # a decode over shared caches keeps the compressed caches beside the model's cache (which
        # holds only the rows' own tokens): each row also attends over its cache's entries
        for layer in getattr(module, "layers", []):
            shared = shared_prefix(layer.self_attn)
            if shared is not None:
                entries = sum((hi - lo) * k.shape[1] for (lo, hi), k in zip(shared.bounds, shared.keys))
                attn += 4 * self.attn_width * q * entries
        linear = 2 * self.linear_params * bsz * q
        if self.training:  # backward: input gradients of frozen linears (1x), attention (~2x)
            linear, attn = 2 * linear, 3 * attn
        self._add(bsz * q, linear + attn)

    def head_hook(self, module, args):
        rows = args[0].numel() // args[0].shape[-1]
        self._add(0, 2 * self.lm_head_params * rows * (2 if self.training else 1))


class StageProfile:
    """torch.profiler's top operators (by self CPU time) of one part of each evaluation, printed
    when it ends: ``training``, or ``decoding``: from the prefill on (prefill, scoring, eviction and
    decoding together). Follows a :class:`Counter`'s stages (``on_stage``)."""

    def __init__(self, part: str | None):
        self.part, self._prof = part, None

    def on_stage(self, old: str, new: str) -> None:
        if new == ("training" if self.part == "training" else "prefill"):
            self._start()
        elif self.part == "training" and old == "training":
            self.finish()

    def _start(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        if self.part is not None and self._prof is None:
            self._prof = profile(activities=[ProfilerActivity.CPU])
            self._prof.start()

    def finish(self) -> None:
        if self._prof is not None:
            self._prof.stop()
            print(self._prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), flush=True)
            self._prof = None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--submission", default="submissions/snapkv")
    ap.add_argument("--dataset", help="a mini dataset id (default: the spec's first)")
    ap.add_argument("--split", default="dev", choices=["dev", "test"])
    ap.add_argument("--docs", type=int, default=1)
    ap.add_argument("--questions", type=int, help="questions per document (default: all)")
    ap.add_argument("--model", help="a model id of the mini spec (default: the spec's default)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"])
    ap.add_argument("--rhos", type=float, nargs="+", help="default: the spec's grid")
    ap.add_argument("--max-steps", type=int, help="cap the adapter's training steps (for a quicker look)")
    ap.add_argument("--batch-size", type=int, default=64, help="decode batch size (the runner's default)")
    ap.add_argument("--profile", choices=["training", "decoding"],
                    help="also print torch.profiler's top operators (by self CPU time): of training, or of "
                         "answering the questions (prefill, scoring, eviction and decoding together)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or 2))
    from benchmark.protocol.tiny import add_tiny_argument

    add_tiny_argument(ap)
    args = ap.parse_args(argv)

    import torch
    from tabulate import tabulate

    from benchmark.config import EvalRequest
    from benchmark.protocol.adapters import AdapterStore
    from benchmark.protocol.compression import language_model
    from benchmark.protocol.datasets import load_split, resolve_dataset
    from benchmark.protocol.evaluator import LOADERS, Loaders
    from benchmark.protocol.runner import open_run
    from benchmark.protocol.spec import load_spec
    from benchmark.protocol.submission import load_submission
    from benchmark.protocol.tiny import load_tiny_model

    torch.set_num_threads(args.threads)
    peaks = {"float32": gemm_peak(torch.float32), "bfloat16": gemm_peak(torch.bfloat16)}
    print(f"torch {torch.__version__}, {args.threads} threads; 1024^3 matmul peak: "
          f"fp32 {peaks['float32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bfloat16'] / 1e9:.1f} GFLOP/s", flush=True)

    spec = load_spec("mini")
    sub = load_submission(args.submission)
    if args.max_steps:
        train = dataclasses.replace(sub.recipe.train, max_steps=args.max_steps)
        sub = dataclasses.replace(sub, recipe=dataclasses.replace(sub.recipe, train=train))
    request = EvalRequest(submission=args.submission, model_id=args.model, device="cpu", dtype=args.dtype,
                          batch_size=args.batch_size, progress=False)
    run = open_run(spec, sub, request, loaders=Loaders(load_model=load_tiny_model) if args.tiny else LOADERS)
    sub = run.submission  # with the model's train overrides, if any
    model, rhos = run.model, sorted(args.rhos or spec.rhos)
    dtype = str(model.dtype).removeprefix("torch.")
    cfg = model.config
    lm = language_model(model)
    profile = StageProfile(args.profile)
    counter = Counter(
        linear_params=sum(m.weight.numel() for m in lm.layers.modules() if isinstance(m, torch.nn.Linear)),
        lm_head_params=model.lm_head.weight.numel(),
        attn_width=cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads),
        n_layers=cfg.num_hidden_layers, on_stage=profile.on_stage,
    )
    hooks = [lm.register_forward_pre_hook(counter.body_hook, with_kwargs=True),
             model.lm_head.register_forward_pre_hook(counter.head_hook),
             model.register_forward_pre_hook(counter.model_hook, with_kwargs=True),
             model.register_forward_hook(counter.model_done_hook, with_kwargs=True)]
    # the press's score() time, which the runner's prefill timing includes
    score_s = [0.0, 0]
    press_score = run.press.score

    def timed_score(*a, **k):
        t0 = time.perf_counter()
        out = press_score(*a, **k)
        score_s[0] += time.perf_counter() - t0
        score_s[1] += a[1].shape[1] if len(a) > 1 else 0  # document tokens scored (hidden_states)
        return out

    run.press.score = timed_score

    ds = resolve_dataset(spec, args.dataset or spec.datasets[0].id)
    docs = load_split(ds.split(args.split))[: args.docs]
    seconds: dict[str, float] = {}
    conditions = sub.active_conditions(spec.conditions)
    n_rows = n_doc_tokens = 0
    with tempfile.TemporaryDirectory() as store, run:
        run.store = AdapterStore(Path(store))
        for doc in docs:
            qs = list(doc.questions)[: args.questions]
            score_before = score_s[0]
            counter.start_document()
            try:
                record, _ = run.evaluate(doc, rhos, conditions, qs)
            finally:
                profile.finish()
            timings = record["timings"]
            if record["adapter"] is not None:
                seconds["training"] = seconds.get("training", 0.0) + record["adapter"]["seconds"]
            scored = score_s[0] - score_before
            seconds["prefill"] = seconds.get("prefill", 0.0) + timings["prefill_s"] - scored
            seconds["scoring"] = seconds.get("scoring", 0.0) + scored
            seconds["eviction"] = seconds.get("eviction", 0.0) + timings["evict_s"]
            seconds["decoding"] = seconds.get("decoding", 0.0) + timings["decode_s"]
            n_rows += len(qs) * len(rhos) * len(conditions)
            n_doc_tokens += record["n_doc_tokens"]
    for h in hooks:
        h.remove()

    # the machine is shared: measure the peak again after the run and keep the better of the two
    peak = max(peaks[dtype], gemm_peak(model.dtype))
    print(f"{dtype} peak used: {peak / 1e9:.1f} GFLOP/s (best of before and after the run)")
    table, floors = [], {}
    digits = 3 if args.tiny else 1  # a tiny model's stages take milliseconds
    for stage in ("training", "prefill", "scoring", "eviction", "decoding"):
        if stage not in seconds:
            continue
        s = seconds[stage]
        if stage == "scoring":
            tok, flops = score_s[1] // max(1, cfg.num_hidden_layers), None  # document tokens per scoring pass
        elif stage == "eviction":
            tok, flops = n_doc_tokens * len(rhos) * len(conditions), None
        else:
            tok, flops = counter.tokens.get(stage, 0), counter.flops.get(stage, 0.0)
        floor = flops / peak if flops else 0.0  # the stage at 100% of the peak: no code change beats this
        floors[stage] = floor
        table.append([stage, f"{s:.{digits}f}", tok, f"{tok / s:.0f}" if s else "-",
                      f"{flops / s / 1e9:.1f}" if flops else "-", f"{flops / s / peak:.1%}" if flops else "-",
                      f"{floor:.{digits}f}" if flops else "-"])
    total = sum(seconds.values())
    table.append(["total", f"{total:.{digits}f}", "", "", "", "", f"{sum(floors.values()):.{digits}f}"])
    model_name = "tiny (random)" if args.tiny else spec.model(args.model).id
    print(f"\nmodel {model_name} ({dtype}), {len(docs)} {ds.id} {args.split} document(s), "
          f"{n_doc_tokens} document tokens, {n_rows} decode rows (questions x rhos {rhos} x {len(conditions)} "
          f"conditions), submission {sub.name}"
          + (f", training capped at {args.max_steps} steps" if args.max_steps else ""))
    print(tabulate(table, headers=["stage", "seconds", "tokens", "tokens/s", "GFLOP/s", f"of {dtype} peak",
                                         "floor s"],
                   tablefmt="github"))
    print("tokens: training = packed forward tokens; prefill = prompt tokens; scoring = document tokens per "
          "scoring pass; eviction = document entries x rho x condition; decoding = positions run (padded rows "
          "included, each step x batch); floor s = the stage's FLOPs at 100% of the peak (the fastest "
          "this dtype allows on this machine without doing less work)")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
