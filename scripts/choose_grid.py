"""Choose the mini tier's rho grid and questions per document by a power target, on the dev split.

The rule (every figure is measured here, on dev documents with more questions than the spec asks):

1. **Random eviction still works**: at least ``--min-interior`` (3) interior rhos where random
   eviction's base ROUGE-L is at least ``--above-floor`` (10) points above its floor (rho = 1).
2. **The strongest press starts to lose**: the grid's largest interior rho is one where the
   strongest press (the best base mean over the pilot grid) scores at least ``--loss`` (5) points
   below its own rho = 0.
3. **Power**: for every press within twice the target of random eviction (a larger gain is found
   anyway), its gain over random eviction (base ROUGE-L, paired on the same
   question and rho, pooled over both datasets and the grid's interior rhos) is detectable at 80%
   power when it is ``--target`` (6) points or more: ``metrics.detectable_difference`` of the
   paired differences, clustered by document, with the standard error scaled from the dev split's
   documents to the test split's (SE x sqrt(dev docs / test docs)). A design's questions per document
   are a subset of the pilot's, stratified like the data (12 of 20 covered), averaged over seeded draws.
4. **Cost**: of the designs that pass, the one with the fewest decode rows per document and
   condition (questions x rhos, rho 0 and 1 included).

The pilot data are the spec's dev documents regenerated with more questions
(``generate_mini --questions``; the documents and their ``train_qa`` do not change), and the
presses run base only (nothing is trained). Runs land in ``--out`` (default ``runs/grid``) and
resume; ``--read-only`` analyses them again without running anything.

    python scripts/choose_grid.py [--pilot-rhos 0.25 0.375 0.5 0.625 0.75 0.875 0.9]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
from pathlib import Path

from tabulate import tabulate

from benchmark.config import BASE
from benchmark.data import generate_mini
from benchmark.protocol.metrics import detectable_difference
from benchmark.protocol.runner import evaluate
from benchmark.protocol.spec import load_spec

PRESSES = {"random": "submissions/random-noadapter", "kvzip": "submissions/kvzip-noadapter",
           "compactor": "submissions/compactor-noadapter",
           "expected-attention": "submissions/expected-attention-noadapter",
           "streamingllm": "submissions/streamingllm-noadapter"}
REFERENCE = "random"
TEST_DOCS = sum(n for split, n, _ in generate_mini.SPLITS if split == "test") * len(generate_mini.DATASETS)
DEV_DOCS = sum(n for split, n, _ in generate_mini.SPLITS if split == "dev") * len(generate_mini.DATASETS)
DRAWS = 20  # seeded question subsets averaged per design


def pilot_data(out: Path, counts: tuple[int, int]) -> list[str]:
    """The dev splits with ``counts`` (covered, uncovered) questions per document, as data files
    named ``pilot-<dataset>`` (a file may not be named like a spec dataset)."""
    folder = out / f"data-{counts[0]}-{counts[1]}"
    if not folder.exists():
        for path in generate_mini.write_all(folder / "all", counts):
            if ".dev." in path.name:
                path.rename(folder / f"pilot-{path.name.replace('.dev', '')}")
    return [str(folder / f"pilot-{ds.name}.jsonl") for ds in generate_mini.DATASETS]


def base_rows(paths: list[Path]) -> dict[tuple, tuple[float, str]]:
    """(dataset/doc, question id, rho) -> (base ROUGE-L, stratum tag) of result files."""
    out = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        for p in data["predictions"]:
            if p["condition"] == BASE:
                key = (f"{data['dataset']['id']}/{p['doc_id']}", p["question_id"], p["rho"])
                out[key] = (p["rouge_l"], p["tags"][0])
    return out


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def at(rows: dict, rhos) -> float:
    """Mean base ROUGE-L of ``rows`` (:func:`base_rows`) at ``rhos``."""
    return mean(v for (_, _, r), (v, _) in rows.items() if r in rhos)


def subset(rows: dict, k: int, seed: int) -> set[tuple[str, str]]:
    """k questions of each document, stratified like the data (its share of covered questions), seeded."""
    tags = {(doc, qid): tag for (doc, qid, _), (_, tag) in rows.items()}
    rng = random.Random(seed)
    n_covered = round(generate_mini.N_COVERED / (generate_mini.N_COVERED + generate_mini.N_UNCOVERED) * k)
    picked = set()
    for doc in sorted({d for d, _ in tags}):
        for tag, n in (("covered", n_covered), ("uncovered", k - n_covered)):
            qids = sorted(q for (d, q), t in tags.items() if d == doc and t == tag)
            picked |= {(doc, q) for q in rng.sample(qids, min(n, len(qids)))}
    return picked


def gain(press: dict, ref: dict, rhos) -> float:
    """Mean of press - reference over the questions both answered at ``rhos``."""
    return mean(press[k][0] - ref[k][0] for k in ref if k[2] in rhos and k in press)


def design_mde(press: dict, ref: dict, rhos: tuple[float, ...], k: int) -> float:
    """The pooled detectable difference of press - reference for this design, at the test split's size."""
    squares = []
    for seed in range(DRAWS):
        keep = subset(ref, k, seed)
        keys = [key for key in ref if key[2] in rhos and (key[0], key[1]) in keep and key in press]
        diffs = [press[key][0] - ref[key][0] for key in keys]
        squares.append(detectable_difference(diffs, [key[0] for key in keys]) ** 2)
    return math.sqrt(mean(squares)) * math.sqrt(DEV_DOCS / TEST_DOCS)


def main(argv: list | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model id (default: the spec's default model)")
    ap.add_argument("--pilot-rhos", type=float, nargs="+", default=[0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 0.9])
    ap.add_argument("--pilot-questions", type=int, nargs=2, default=(12, 8), metavar=("COVERED", "UNCOVERED"))
    ap.add_argument("--questions", type=int, nargs="+", default=[10, 12, 15, 20],
                    help="candidate questions per document")
    ap.add_argument("--min-interior", type=int, default=3)
    ap.add_argument("--above-floor", type=float, default=10.0)
    ap.add_argument("--loss", type=float, default=5.0)
    ap.add_argument("--target", type=float, default=6.0)
    ap.add_argument("--out", type=Path, default=Path("runs/grid"))
    ap.add_argument("--read-only", action="store_true", help="analyse the result files in --out, run nothing")
    args = ap.parse_args(argv)
    spec = load_spec("mini")
    model_id = spec.model(args.model).id
    datasets = pilot_data(args.out, tuple(args.pilot_questions))

    rows = {}
    for name, submission in PRESSES.items():
        # rho 0 and 1 do not depend on the press: the reference runs them once
        rhos = [0.0, *args.pilot_rhos, 1.0] if name == REFERENCE else args.pilot_rhos
        if args.read_only:  # the files of an earlier run, whatever spec version it ran under
            paths = sorted((args.out / Path(submission).name / "mini" / model_id).glob("pilot-*.json"))
        else:  # a data file is a dataset with one split, read as "test"; these files hold the dev documents
            paths = evaluate(submission, model_id=model_id, datasets=datasets, rhos=rhos,
                             conditions=[BASE], out=str(args.out))
        rows[name] = base_rows(paths)
    ref = rows[REFERENCE]
    floor, full = at(ref, [1.0]), at(ref, [0.0])

    print(f"Base ROUGE-L on the dev split ({DEV_DOCS} documents, {sum(args.pilot_questions)} questions each), "
          f"model {model_id}: rho = 0 {full:.1f}, rho = 1 (floor) {floor:.1f}")
    table = [[name] + [at(rows[name], [rho]) for rho in args.pilot_rhos] for name in PRESSES]
    print(tabulate(table, headers=["press"] + [f"rho={r:g}" for r in args.pilot_rhos], floatfmt=".1f"))

    strongest = max((n for n in PRESSES if n != REFERENCE), key=lambda n: at(rows[n], args.pilot_rhos))
    working = [r for r in args.pilot_rhos if at(ref, [r]) >= floor + args.above_floor]
    losing = [r for r in args.pilot_rhos if at(rows[strongest], [r]) <= full - args.loss]
    print(f"\nrandom eviction >= floor + {args.above_floor:g} at rho {working}; strongest press {strongest} "
          f">= {args.loss:g} below rho = 0 at rho {losing}")

    candidates = []
    for size in range(args.min_interior, len(args.pilot_rhos) + 1):
        for grid in itertools.combinations(args.pilot_rhos, size):
            if sum(r in working for r in grid) < args.min_interior or max(grid) not in losing:
                continue
            # power matters for presses near random eviction: a gain beyond twice the target is found anyway
            near = [n for n in PRESSES if n != REFERENCE and abs(gain(rows[n], ref, grid)) <= 2 * args.target]
            for k in args.questions:
                mdes = {n: design_mde(rows[n], ref, grid, k) for n in PRESSES if n != REFERENCE}
                worst = max(mdes[n] for n in near or mdes)
                candidates.append((k * (len(grid) + 2), k, grid, worst, mdes))
    candidates.sort(key=lambda c: (c[0], c[3]))
    shown = [c for c in candidates if c[3] <= args.target][:10] + [c for c in candidates if c[3] > args.target][:10]
    table = [[rows_, k, ", ".join(f"{r:g}" for r in grid), f"{worst:.1f}", "pass" if worst <= args.target else "-",
              " ".join(f"{n} {m:.1f}" for n, m in mdes.items())]
             for rows_, k, grid, worst, mdes in sorted(shown, key=lambda c: (c[0], c[3]))]
    print("\nGain over random eviction on each press's pilot grid: "
          + ", ".join(f"{n} {gain(rows[n], ref, args.pilot_rhos):+.1f}" for n in PRESSES if n != REFERENCE))
    print(f"Designs, the 10 cheapest that pass and the 10 cheapest that do not (rows = questions x rhos incl. 0 "
          f"and 1; detectable difference at 80% power, pooled, scaled to {TEST_DOCS} test documents; 'worst' over "
          f"the presses within {2 * args.target:g} points of random eviction on that grid):")
    print(tabulate(table, headers=["rows", "questions", "interior rhos", "worst", f"<= {args.target:g}", "per press"]))
    chosen = next((c for c in candidates if c[3] <= args.target), None)
    if chosen is None:
        print("\nno design meets the target")
        return
    print(f"\nchosen: {chosen[1]} questions per document, rhos [0, {', '.join(f'{r:g}' for r in chosen[2])}, 1] "
          f"({chosen[0]} rows per document and condition; worst detectable difference {chosen[3]:.1f})")


if __name__ == "__main__":
    main()
