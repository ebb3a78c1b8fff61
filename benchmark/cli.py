"""Command line: parses arguments and calls the runner, the validators or the leaderboard."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .protocol.evaluator import Loaders

RHO_HELP = "rho = fraction of the document's KV entries evicted (0 = full cache, 1 = prompt without the document)"


def _cond_help() -> str:
    from .protocol.spec import CONDITION_HELP

    return "; ".join(f"{k}: {v}" for k, v in CONDITION_HELP.items())


def _count(n: int, noun: str) -> str:
    """``1 problem``, ``2 problems``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def check_evaluate_flags(args) -> None:
    """Every flag value of ``evaluate`` checked before any work starts (no model loaded, nothing
    written); raises SpecError with a one-line message naming the flag."""
    from .protocol.models import check_device
    from .protocol.spec import CONDITIONS, SpecError, load_spec

    for flag, value, what in (("--docs", args.docs, "documents"),
                              ("--questions", args.questions, "questions per document"),
                              ("--batch-size", args.batch_size, "rows decoded together")):
        if value is not None and value < 1:
            raise SpecError(f"{flag} {value}: must be a positive number of {what}")
    if args.rhos is not None:
        bad = [r for r in args.rhos if not 0.0 <= r <= 1.0]  # also refuses nan
        if bad:
            raise SpecError(f"--rhos {' '.join(map(str, bad))}: rho is the evicted fraction, in [0, 1]")
        repeated = sorted({r for r in args.rhos if args.rhos.count(r) > 1})
        if repeated:
            raise SpecError(f"--rhos: {' '.join(map(str, repeated))} given more than once")
    if args.conditions is not None:
        bad = [c for c in args.conditions if c not in CONDITIONS]
        if bad:
            raise SpecError(f"--conditions {' '.join(bad)}: unknown condition (have: {', '.join(CONDITIONS)})")
        if len(set(args.conditions)) != len(args.conditions):
            raise SpecError("--conditions: a condition is given more than once")
        _check_conditions_have_adapter(args.submission, args.conditions)
    check_device(args.device)
    _shard(args.shard)
    spec = load_spec(args.tier)
    if args.model:
        from .protocol.models import locate_model

        locate_model(spec, args.model)  # a spec id, a model folder, or a Hub id the Hub gives
    from .protocol.datasets import resolve_dataset

    for ds in args.dataset or []:
        resolve_dataset(spec, ds).split(args.split)  # a spec id, or a JSONL file (validated in full)


def _check_conditions_have_adapter(submission: str, conditions: list[str]) -> None:
    """Conditions asked for by name that need an adapter the submission does not train (``recipe:
    none``): refused here, not skipped, since the user asked for them."""
    from .protocol.spec import CONDITIONS, SpecError
    from .protocol.submission import load_submission

    sub = load_submission(submission)
    if sub.recipe.enabled:
        return
    needs = [c for c in conditions if "adapter" in CONDITIONS[c].values()]
    if needs:
        raise SpecError(f"--conditions {' '.join(needs)}: {sub.path / 'submission.yaml'} has recipe: none, so there "
                        "is no adapter to run them with; only base applies")


def cmd_evaluate(args) -> int:
    from tabulate import tabulate

    check_evaluate_flags(args)
    if args.dry_run or args.preset:
        return dry_run(args)

    from .config import EvalRequest
    from .protocol.evaluator import LOADERS
    from .protocol.results import load_result
    from .protocol.runner import evaluate

    t0 = time.perf_counter()
    request = EvalRequest(submission=args.submission, tier=args.tier, model_id=args.model, datasets=args.dataset,
                          split=args.split, docs=args.docs, questions=args.questions, rhos=args.rhos,
                          conditions=args.conditions, device=args.device, dtype=args.dtype, out=args.out,
                          batch_size=args.batch_size, shard=_shard(args.shard), worker_timeout=args.worker_timeout)
    if args.executor == "ray":
        from .integrations.executors import run_on_ray

        try:
            # one shard per document: --shard does not apply
            paths = run_on_ray(request, address=args.ray_address, loaders=args.loaders or LOADERS)
        except ImportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    else:
        paths = evaluate(request, loaders=args.loaders or LOADERS)
    for path in paths:
        data = load_result(path)
        print(f"\n{data['submission']['name']} | {data['model']['id']} | {data['dataset']['id']} "
              f"({len(data['documents'])} docs, {data['spec_version']}) -> {path}")
        print(format_cells(data, tabulate))
    print(f"\nwall time: {time.perf_counter() - t0:.1f} s; {peak_memory()}")
    return 0


def peak_memory() -> str:
    import resource

    import torch

    # this process: the model, training and decoding (a sandbox running submission code prints its own)
    text = f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated():
        text += f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    return text


def _shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise SystemExit(f"error: --shard takes i/n, e.g. 0/4 (got {text!r})") from None
    if not 0 <= i < n:
        raise SystemExit(f"error: --shard {text}: need 0 <= i < n")
    return i, n


def cmd_merge(args) -> int:
    from .protocol.results import merge_shards

    print(f"wrote {merge_shards(args.shards, args.out)}")
    return 0


def dry_run(args) -> int:
    """List the runs a command (or a paper preset) would make, with their cost in prefills and trainings."""
    from pathlib import Path

    import yaml
    from tabulate import tabulate

    from .protocol.datasets import load_split, resolve_dataset
    from .protocol.spec import CONDITIONS, load_spec
    from .protocol.submission import load_submission

    spec = load_spec(args.tier)
    subs = [args.submission]
    if args.preset:
        presets = yaml.safe_load((Path(__file__).parent / "specs" / "paper_presets.yaml").read_text())
        if args.preset not in presets:
            print(f"error: no preset '{args.preset}' (have: {', '.join(presets)})", file=sys.stderr)
            return 2
        print(f"preset {args.preset}: {presets[args.preset]['description']}")
        subs = [str(Path(args.submission).parent / s) for s in presets[args.preset]["submissions"]]
    if args.model:
        from .protocol.models import resolve_model

        models = [resolve_model(spec, args.model)]
    else:
        models = list(spec.models)
    rhos = args.rhos or list(spec.rhos)
    rows = []
    hours: dict[str, float] = {}
    for sub_path in subs:
        try:
            sub = load_submission(sub_path)
            conds = sub.active_conditions(args.conditions or spec.conditions)
            name, recipe = sub.name, sub.recipe.name
            press = sub.compressor_cfg["press"]
        except ValueError:
            sub, name, recipe, conds = (None, Path(sub_path).name + " (missing)", "?",
                                        list(args.conditions or spec.conditions))
            press = "?"
        for m in models:
            for ds in [resolve_dataset(spec, d) for d in args.dataset] if args.dataset else spec.datasets:
                words = None
                try:
                    docs = load_split(ds.test)[: args.docs]
                    n_docs = len(docs)
                    n_q = sum(len(d.questions[: args.questions]) for d in docs)
                    words = [len(d.text.split()) for d in docs]
                except ValueError:
                    n_docs = ds.expected.get("documents", "?")
                    n_q = ds.expected.get("questions", "?")
                prefills = len({CONDITIONS[c][s] for c in conds for s in ("prefill", "score")})
                est = _estimate(spec, sub, m, ds, n_docs, n_q, words, rhos, len(conds), prefills, args)
                if est is not None:
                    hours[m.id] = hours.get(m.id, 0.0) + est.gpu_hours
                rows.append([name, press, recipe, m.id, ds.id, n_docs, n_q, len(rhos), len(conds),
                             n_docs if recipe not in ("none", "?") else 0,
                             n_docs * prefills if isinstance(n_docs, int) else "?",
                             n_q * len(rhos) * len(conds) if isinstance(n_q, int) else "?",
                             f"{est.peak_gib:.1f}" if est else "?", f"{est.gpu_hours:.2f}" if est else "?"])
    print(tabulate(rows, headers=["submission", "compressor", "recipe", "model", "dataset", "docs", "questions", "rhos",
                                  "conditions", "trainings", "prefills", "answers", "est. peak GiB", "est. GPU h"],
                   tablefmt="github"))
    print(f"rho grid: {rhos}")
    _print_estimate_note(hours)
    return 0


def _estimate(spec, sub, model_spec, ds, n_docs, n_q, words, rhos, n_conds, prefills, args):
    """The cost model's estimate for one row of the dry run (None where a count is unknown)."""
    from .paper.cost import ARCHITECTURES, DOC_WORDS, Workload, estimate

    if sub is None or not isinstance(n_docs, int) or not isinstance(n_q, int) or model_spec.id not in ARCHITECTURES:
        return None
    if words:
        mean, largest = sum(words) / len(words), max(words)
    elif (ds.mirrors or ds.id) in DOC_WORDS:
        mean, largest = DOC_WORDS[ds.mirrors or ds.id]
    else:
        return None
    sub = sub.for_model(spec.stands_in_for(model_spec.id)).with_train(spec.train_overrides)
    return estimate(Workload(model_id=model_spec.id, recipe=sub.recipe, docs=n_docs, doc_words_mean=mean,
                             doc_words_max=largest, questions=n_q, rhos=tuple(rhos), conditions=n_conds,
                             prefills_per_doc=prefills, max_new_tokens=spec.generation.max_new_tokens,
                             decode_batch=args.batch_size))


def _print_estimate_note(hours: dict[str, float]) -> None:
    from .paper.cost import BANDWIDTH_EFFICIENCY, MFU, REFERENCE_GPU

    if not hours:
        return
    gpu = REFERENCE_GPU
    total = ", ".join(f"{m} {h:.2f} h" for m, h in hours.items())
    print(f"est. = ESTIMATES from benchmark/paper/cost.py's cost model (not measured), bf16 on one {gpu.name} "
          f"({gpu.bf16_flops / 1e12:.0f} TFLOP/s at {MFU:.0%} MFU, {gpu.bandwidth / 1e12:.2f} TB/s at "
          f"{BANDWIDTH_EFFICIENCY:.0%}); peak = the largest phase, weights included; GPU hours in total: {total}")


def format_cells(data: dict, tabulate) -> str:
    """ROUGE-L (95% CI) by rho x condition."""
    conds = [c for c in data["conditions"] if any(x["condition"] == c for x in data["cells"])]
    rows = []
    for rho in data["rhos"]:
        row = [rho]
        for c in conds:
            cell = next((x for x in data["cells"] if x["rho"] == rho and x["condition"] == c), None)
            row.append("" if cell is None
                       else f"{cell['rouge_l']:.1f} [{cell['rouge_l_ci95'][0]:.0f},{cell['rouge_l_ci95'][1]:.0f}]")
        rows.append(row)
    return tabulate(rows, headers=["rho"] + conds, tablefmt="github")


def cmd_validate_data(args) -> int:
    from .protocol.datasets import check_documents, check_leaks, summarize

    status = 0
    for f in args.files:
        docs, problems = check_documents(f)  # every bad line, not only the first
        if not problems:
            problems = check_leaks(f)
        for problem in problems:
            print(f"INVALID {problem}", file=sys.stderr)
        if problems:
            print(f"INVALID {f}: {_count(len(problems), 'problem')}", file=sys.stderr)
            status = 1
            continue
        print(f"ok {f}: {summarize(docs)}")
    return status


def cmd_smoke(args) -> int:
    """Load the mini tier end to end: data validated, model provisioned, one question answered."""
    from .protocol.compression import evict, prefill
    from .protocol.datasets import load_split
    from .protocol.generation import Row, greedy_decode
    from .protocol.models import PromptRenderer, check_device, load_model
    from .protocol.spec import load_spec

    check_device(args.device)
    spec = load_spec(args.tier)
    for ds in spec.datasets:
        docs = load_split(ds.test)
        print(f"dataset {ds.id}: {len(docs)} documents, {sum(len(d.questions) for d in docs)} questions (sha256 ok)")
    m = spec.model(args.model)
    t0 = time.perf_counter()
    model, tok = load_model(m, args.device)
    print(f"model {m.id}: loaded in {time.perf_counter() - t0:.1f} s")
    doc = load_split(spec.datasets[0].test)[0]
    r = PromptRenderer(tok, spec.prompt_for(m))
    q = doc.questions[0]
    ids = r.prefix_ids + r.doc_ids(doc.text)
    kv, _ = prefill(model, ids, (len(r.prefix_ids), len(ids)))
    kv, _ = evict(kv, None, (len(r.prefix_ids), len(ids)), 0.0)
    text = greedy_decode(model, tok, [Row(kv, len(ids), r.suffix_ids(q.question))],
                         max_new_tokens=spec.generation.max_new_tokens, stop=spec.generation.stop)[0]
    print(smoke_answer(spec, q, text, r.prompt.answer_prefix))
    return 0


def smoke_answer(spec, question, generation: str, answer_prefix: str) -> str:
    """The smoke test's report of one answer, extracted and scored as the spec's results are."""
    scoring = spec.scoring()
    pred = scoring.extract(generation, answer_prefix)
    return (f"Q: {question.question}\nA: {pred!r}  gold: {list(question.answers)}  "
            f"{scoring.score(pred, question.answers)}")


def cmd_validate(args) -> int:
    """Conformance of submission folders and result files; every problem names file and field."""
    from .trust.conformance import RESULT_CHECKS, SUBMISSION_CHECKS, check_result_file, check_submissions_isolated

    status = 0
    # submissions in the sandbox, each with code of its own in a process of its own
    submitted = check_submissions_isolated([t for t in args.paths if not str(t).endswith(".json")])
    for target in args.paths:
        problems = check_result_file(target) if str(target).endswith(".json") else submitted[str(target)]
        for p in problems:
            print(f"FAIL {p}", file=sys.stderr)
        print(f"{'ok  ' if not problems else 'FAIL'} {target}"
              + (f" ({_count(len(problems), 'problem')})" if problems else ""))
        if args.verbose:
            for check in RESULT_CHECKS if str(target).endswith(".json") else SUBMISSION_CHECKS:
                print(f"  check: {check}")
        status |= bool(problems)
    return status


def cmd_publish(args) -> int:
    """Copy complete, conformant run files into the leaderboard's results (validated first)."""
    from pathlib import Path

    from .protocol.results import load_result, result_path_of, write_atomic
    from .protocol.spec import current_version, spec_name
    from .trust.conformance import check_result_file

    status = 0
    for run_file in args.run_files:
        problems = check_result_file(run_file, submissions_dir=args.submissions)
        data = None if problems else load_result(run_file)
        if data is not None and spec_name(data) != data["tier"]:  # shown while kept, never added anew
            problems = [f"{run_file}: field 'spec_version': '{data['spec_version']}' is superseded; re-run it on "
                        f"the current {data['tier']} spec ({current_version(data['tier'])})"]
        for p in problems:
            print(f"FAIL {p}", file=sys.stderr)
        if problems:
            print(f"not published: {run_file} ({_count(len(problems), 'problem')})", file=sys.stderr)
            status = 1
            continue
        dest = result_path_of(args.results, data)
        if Path(run_file).resolve() != dest.resolve():
            write_atomic(dest, Path(run_file).read_text(encoding="utf-8"))
        print(f"published {run_file} -> {dest}")
    if status == 0:
        print("now run `lorakv-bench leaderboard` and commit leaderboard/")
    return status


def cmd_verify(args) -> int:
    """Re-run every plan and a sample of (document, rho) pairs of each result file; all must be identical."""
    from .protocol.models import check_device
    from .trust.verify import TAMPERED, new_seed, verify_result, write_record

    if args.sample is not None and args.sample < 1:
        print(f"error: --sample {args.sample}: must be a positive number of (document, rho) pairs", file=sys.stderr)
        return 2
    if not 0 < args.detect < 1:
        print(f"error: --detect {args.detect}: must be a probability between 0 and 1", file=sys.stderr)
        return 2
    check_device(args.device)
    seed = args.seed or new_seed()
    print(f"verify: sample seed {seed} (re-run this sample with --seed {seed})")
    status = 0
    for path in args.results:
        v = verify_result(path, args.sample, seed=seed, detect=args.detect, submissions_dir=args.submissions,
                          device=args.device, worker_timeout=args.worker_timeout, loaders=args.loaders,
                          progress=lambda msg, p=path: print(f"  {p}: {msg}", file=sys.stderr, flush=True))
        for m in v.mismatches:
            print(f"MISMATCH {m}", file=sys.stderr)
        pairs = ", ".join(f"{d}@{r}" for d, r in v.pairs)
        print(f"{'ok  ' if v.ok else 'FAIL'} {path}: {v.plans_checked} plans recomputed; {v.compared} predictions "
              f"re-run at {len(v.pairs)} of {v.ranked} ranked (document, rho) pairs ({pairs}): a file with "
              f"{TAMPERED} tampered ranked pairs is caught with probability {v.detection:.3f}"
              f"{f' (target {args.detect})' if args.sample is None else ''}; {len(v.mismatches)} differ")
        if args.record:
            print(f"     record: {write_record(path, v, args.device)}")
        status |= not v.ok
    return status


def cmd_export_adapter(args) -> int:
    from .integrations.export import METADATA, export_adapter

    out = export_adapter(args.result, args.doc_id, args.out, args.model)
    print(f"wrote {out} (adapter_config.json, adapter_model.safetensors, {METADATA}); load it with "
          f"peft.PeftModel.from_pretrained(base_model, '{out}')")
    return 0


def cmd_leaderboard(args) -> int:
    from .board.leaderboard import DATA_CSV, DATA_JSON, render, stale_files
    from .board.page import PAGE_HTML, load_rows, summary_markdown

    if args.summary:  # regenerate, then print only the summary: stdout is the summary's Markdown
        base = load_rows(args.summary)
        render(args.results, args.out, args.plots)
        print(summary_markdown(base, load_rows(Path(args.out).parent / DATA_JSON)), end="")
        return 0
    data = ", ".join(str(Path(args.out).parent / n) for n in (DATA_JSON, DATA_CSV, PAGE_HTML))

    if args.check:
        stale = stale_files(args.results, args.out, args.plots)
        for f in stale:
            print(f"stale: {f}")
        if stale:
            print("run `lorakv-bench leaderboard` to regenerate", file=sys.stderr)
        else:
            print(f"up to date: {args.out}, {data} and {args.plots}/ match {args.results}")
        return int(bool(stale))
    render(args.results, args.out, args.plots)
    print(f"wrote {args.out}, {data} and {args.plots}/")
    return 0


def cmd_prepare_data(args) -> int:
    from .paper.paper_data import PaperDataError, prepare_data
    from .paths import cache_dir

    out = args.out or cache_dir() / "data" / f"{args.name}.jsonl"
    try:
        summary = prepare_data(args.name, args.source, out, selection=args.selection)
    except PaperDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(summary)
    rc = _record_prepared_sha256(args.name, Path(summary["out"]), summary["sha256"])
    if rc == 0:
        _record_answer_digest(args.name, Path(summary["out"]))
    return rc


def _record_answer_digest(name: str, out: Path) -> Path:
    """The digest of the prepared split's answers, in the package, so results on this data can be
    checked where the data is absent (commit it)."""
    from .paper.paper_data import write_answer_digest
    from .protocol.spec import load_spec

    spec = load_spec("paper")
    digest = write_answer_digest(out, name, "test", spec.metric.normalization)
    print(f"answer digest written to {digest}: commit it, so results on {name} can be validated without the data")
    return digest


def _record_prepared_sha256(name: str, out, actual: str) -> int:
    """Write ``<out>.sha256`` (sha256sum format) and compare with the paper spec's pin, if it has one."""
    from .protocol.spec import load_spec

    Path(f"{out}.sha256").write_text(f"{actual}  {Path(out).name}\n")
    spec = load_spec("paper")
    pinned = next((d.test.sha256 for d in spec.datasets if d.id == name), None)
    print(f"sha256 {actual} (recorded in {out}.sha256)")
    if pinned is None:
        print(f"spec {spec.spec_version} does not pin {name}'s sha256 yet: pin test.sha256 to this value "
              "once the selection is confirmed to be the paper's")
        return 0
    if pinned != actual:
        print(f"error: {out}: sha256 {actual} differs from the sha256 spec {spec.spec_version} pins for {name} "
              f"({pinned}); the prepared data is not the paper's selection", file=sys.stderr)
        return 1
    print(f"matches the sha256 spec {spec.spec_version} pins for {name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .config import EXECUTORS, PAPER_DATASETS, REHEARSED_TIERS, RUN_DTYPES, SPLITS, TIERS

    p = argparse.ArgumentParser(prog="lorakv-bench", description=__doc__)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("evaluate", help="run the protocol for a submission",
                       description=f"{RHO_HELP}. Conditions: {_cond_help()}.")
    e.add_argument("submission", help="a submission folder, e.g. submissions/snapkv")
    rehearsals = ", ".join(f"{tier} (= {rehearsed} --rehearse)" for tier, rehearsed in REHEARSED_TIERS.items())
    e.add_argument("--tier", default=TIERS[0], help=f"{TIERS[0]} (default, CPU), "
                   + ", ".join(t for t in TIERS[1:] if t not in REHEARSED_TIERS) + f", or {rehearsals}")
    e.add_argument("--model", help="model id from the spec (default: the spec's default model), or a model of your "
                   "own: a local transformers folder (config.json, weights, tokenizer) or a Hugging Face Hub id "
                   "(ORG/NAME, where the Hub is reachable), run with the spec's data, prompt and generation")
    e.add_argument("--dataset", action="append", help="dataset id, or a JSONL file in the document format (see "
                   "validate-data; results are named after the file and carry its sha256); repeatable; default: all "
                   "of the tier")
    e.add_argument("--split", default=SPLITS[0], choices=SPLITS)
    e.add_argument("--docs", type=int, help="only the first N documents")
    e.add_argument("--questions", type=int, help="only the first N questions per document")
    e.add_argument("--rhos", type=float, nargs="+", help=RHO_HELP)
    e.add_argument("--conditions", nargs="+", help="subset of: " + _cond_help())
    e.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    e.add_argument("--dtype", choices=list(RUN_DTYPES),
                   help="model weights and compute (default: the spec's; float32 specs run as bfloat16 on cuda); "
                   "recorded in the result's environment")
    e.add_argument("--batch-size", type=int, default=64,
                   help="questions decoded together (rows of question x rho x condition)")
    e.add_argument("--out", default="runs", help="root of the result files (default runs/; `publish` copies a "
                   "complete, validated result into leaderboard/results)")
    e.add_argument("--shard", help="i/n: run documents i, i+n, ... (independent work units); join with `merge`")
    e.add_argument("--executor", choices=EXECUTORS, default=EXECUTORS[0],
                   help="ray: one Ray task per (dataset, document) work unit, GPUs declared on cuda, shards merged")
    e.add_argument("--ray-address", help="an existing Ray cluster (default: start a local instance)")
    e.add_argument("--worker-timeout", type=float, default=900.0, metavar="SECONDS",
                   help="time each request to the sandbox running a submission's own code (a press's plan, a "
                   "hook's QA pairs) may take (default 900)")
    e.add_argument("--rehearse", action="store_true", help="; ".join(
        f"with --tier {rehearsed}: run the {rehearsed} tier's rehearsal, its whole code path on a CPU with stand-in "
        f"models and fixture documents (spec {tier}; see docs/tiers.md); its results are tier {tier}, never "
        f"{rehearsed} results" for tier, rehearsed in REHEARSED_TIERS.items()))
    e.add_argument("--dry-run", action="store_true", help="list the runs and their cost, run nothing")
    e.add_argument("--preset", help="paper experiment group (main, training-formats, compression-methods, "
                   "target-modules); submissions are looked up beside SUBMISSION")
    e.set_defaults(func=cmd_evaluate)

    v = sub.add_parser("validate-data", help="check JSONL files against the document format")
    v.add_argument("files", nargs="+")
    v.set_defaults(func=cmd_validate_data)

    mg = sub.add_parser("merge", help="join shard result files (--shard i/n) into the unsharded result file")
    mg.add_argument("out")
    mg.add_argument("shards", nargs="+")
    mg.set_defaults(func=cmd_merge)

    val = sub.add_parser("validate", help="conformance of submissions/<name> folders and result .json files")
    val.add_argument("paths", nargs="+")
    val.add_argument("-v", "--verbose", action="store_true", help="list the checks run on each path")
    val.set_defaults(func=cmd_validate)

    pub = sub.add_parser("publish", help="validate run files (runs/...) and copy them into leaderboard/results")
    pub.add_argument("run_files", nargs="+", metavar="RUN_FILE")
    pub.add_argument("--results", default="leaderboard/results", help="root of the leaderboard's result files")
    pub.add_argument("--submissions", help="submissions folder (default: the nearest submissions/ above the file)")
    pub.set_defaults(func=cmd_publish)

    ver = sub.add_parser("verify", help="re-run a seeded sample of a result file and require identical generations")
    ver.add_argument("results", nargs="+", metavar="RESULT")
    ver.add_argument("--sample", type=int, help="ranked (document, rho) pairs to re-run (default: enough to catch 3 "
                     "tampered pairs with the --detect probability)")
    ver.add_argument("--detect", type=float, default=0.95, help="detection probability the default sample reaches")
    ver.add_argument("--seed", help="seed of the sample (default: fresh randomness, printed); CI passes the pull "
                     "request's base commit")
    ver.add_argument("--worker-timeout", type=float, default=900.0, metavar="SECONDS",
                     help="time each request to the sandbox running a submission's own code may take")
    ver.add_argument("--record", action="store_true", help="write what was re-run to leaderboard/verified/ beside the "
                     "result file (committed by maintainers; the leaderboard shows it)")
    ver.add_argument("--device", default="cpu", help="cpu (default: generations are reproducible there) or cuda")
    ver.add_argument("--submissions", help="submissions folder (default: the nearest submissions/ above the file)")
    ver.set_defaults(func=cmd_verify)

    ex = sub.add_parser("export-adapter", help="write one document's adapter of a result as a peft folder "
                        "(adapter_config.json + weights, lorakv.json naming document, recipe, submission, spec)")
    ex.add_argument("result", metavar="RESULT", help="a result file of a submission that trains adapters")
    ex.add_argument("doc_id", metavar="DOC_ID", help="the document whose adapter to export")
    ex.add_argument("out", metavar="OUT", help="the folder to write (new or empty)")
    ex.add_argument("--model", help="the model folder, for a result of a local model of one's own (`evaluate "
                    "--model PATH`); it becomes the adapter's base_model_name_or_path")
    ex.set_defaults(func=cmd_export_adapter)

    lb = sub.add_parser("leaderboard", help="regenerate leaderboard/README.md, its plots, "
                        "its data (leaderboard.json, leaderboard.csv) and its web page (index.html) "
                        "from the result files")
    lb.add_argument("--results", default="leaderboard/results")
    lb.add_argument("--out", default="leaderboard/README.md",
                    help="the page; leaderboard.json and leaderboard.csv are written beside it")
    lb.add_argument("--plots", default="leaderboard/plots")
    only = lb.add_mutually_exclusive_group()
    only.add_argument("--check", action="store_true", help="only report whether the leaderboard is up to date")
    only.add_argument("--summary", metavar="BASE_JSON", help="regenerate, then print as Markdown only the entries "
                      "that are new or changed against BASE_JSON (an earlier leaderboard.json), with their rank and "
                      "paired difference with the leader (a pull request's job summary)")
    lb.set_defaults(func=cmd_leaderboard)

    pd = sub.add_parser("prepare-data", help="convert a paper-tier dataset to the benchmark's JSONL")
    pd.add_argument("name", choices=PAPER_DATASETS)
    pd.add_argument("--source", help="local files in the original format: NarrativeQA's parquet dir, or its "
                    "narrativeqa_full_text.zip with narrativeqa-master.zip beside it (the paper's route, checked "
                    "against the paper's rebuilt JSONL); LongHealth's benchmark_v5.json")
    pd.add_argument("--selection", help="selection JSON (default: the paper's, shipped in the package)")
    pd.add_argument("--out", help="output JSONL (default: $LORAKV_CACHE/data/<name>.jsonl, where the paper spec looks)")
    pd.set_defaults(func=cmd_prepare_data)

    s = sub.add_parser("smoke", help="load the tier: data validated, model provisioned, one question answered")
    s.add_argument("--tier", default=TIERS[0], help=f"{' or '.join(TIERS)}, or a spec YAML file")
    s.add_argument("--model")
    s.add_argument("--device")
    s.set_defaults(func=cmd_smoke)
    return p


def _uses_hub(args) -> bool:
    """prepare-data, the paper tier and ``--model ORG/NAME`` (a Hub id, no local folder) may
    download (weights, datasets): leave HF's offline mode to the user's environment there.
    Everything else (the mini tier, validation, the leaderboard) never needs a hub."""
    from .config import REHEARSED_TIERS, TIERS

    if args.command == "prepare-data" or getattr(args, "tier", TIERS[0]) not in (TIERS[0], *REHEARSED_TIERS):
        return True
    model = getattr(args, "model", None)
    return bool(model) and "/" in model and not Path(model).expanduser().exists()


def _rehearsal_tier(args) -> None:
    """``--rehearse``: the tier becomes the rehearsal of the tier named (paper -> paper-rehearsal)."""
    from .config import REHEARSED_TIERS
    from .protocol.spec import SpecError

    if not getattr(args, "rehearse", False):
        return
    rehearsals = {rehearsed: tier for tier, rehearsed in REHEARSED_TIERS.items()}
    if args.tier not in rehearsals:
        raise SpecError(f"--rehearse: tier {args.tier} has no rehearsal (tiers with one: {', '.join(rehearsals)})")
    args.tier = rehearsals[args.tier]


def main(argv: list[str] | None = None, *, loaders: Loaders | None = None) -> int:
    """Run one command. ``loaders``: what ``evaluate`` and ``verify`` load the spec and the model
    with (:class:`~benchmark.protocol.evaluator.Loaders`; None: the real ones)."""
    args = build_parser().parse_args(argv)
    args.loaders = loaders
    from .paths import set_offline
    from .protocol.spec import SpecError

    try:
        _rehearsal_tier(args)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    set_offline(hub=_uses_hub(args))  # nothing in the mini tier touches a hub; make sure no library tries to
    from .extras import MissingExtra
    from .trust.worker import WorkerError

    try:
        return args.func(args)
    except (SpecError, MissingExtra, WorkerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # evaluate keeps every finished document in its result file; verify is cheap to restart
        resumable = args.command in ("evaluate", "verify")
        print("interrupted" + ("; re-run the same command to resume" if resumable else ""), file=sys.stderr)
        return 130


def lm_eval_main() -> int:
    """``lorakv-lm-eval``: a one-line error naming the extra when lm-eval is not installed."""
    from .extras import MissingExtra

    try:
        from .integrations.lm_eval_model import cli_main
    except MissingExtra as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
