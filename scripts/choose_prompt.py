"""Choose the mini tier's prompt on the dev split (never on test).

For each candidate prompt: base model, no adapter, ROUGE-L with the full document (rho = 0)
and with no document (rho = 1). The chosen prompt maximises full-context ROUGE-L; the
no-context score shows the facts really are unguessable.

    python scripts/choose_prompt.py [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from tabulate import tabulate

from benchmark.config import BASE
from benchmark.protocol.adapters import Recipe
from benchmark.protocol.datasets import load_split
from benchmark.protocol.models import load_model
from benchmark.protocol.runner import DocumentRun, model_key
from benchmark.protocol.spec import Prompt, load_spec
from benchmark.protocol.submission import Submission

CANDIDATES = {
    "instruct+Answer:": Prompt(None, "Read the context and answer the question with a few words.\n\n"
                                     "Context:\n{document}\n\nQuestion: {question}", "Answer:"),
    "sys+Answer:": Prompt("Answer the question with a few words taken from the context.",
                          "Context:\n{document}\n\nQuestion: {question}", "Answer:"),
    "question-last": Prompt(None, "Context:\n{document}\n\nAnswer the question in a few words.\nQuestion: {question}",
                            ""),
    "paper-boxed": Prompt(None, "Here is a context: {document}\nQuestion: {question} Answer the question "
                                "(one word or a few words) by putting the answer inside the brackets of the "
                                "\"\\boxed{{}}\" notation.", "The answer is \\boxed{"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    spec = load_spec("mini")
    m = spec.model(args.model)
    model, tok = load_model(m)
    none = Submission(name="prompt-probe", path=Path("."), raw={"adapter": {"recipe": "none"}}, recipe=Recipe("none"))
    rows = []
    for name, prompt in CANDIDATES.items():
        if args.only and name not in args.only:
            continue
        gen = (spec.generation if not prompt.answer_prefix.endswith("{")
               else dataclasses.replace(spec.generation, stop=("}", "\n")))
        run = DocumentRun.build(model, tok, dataclasses.replace(spec, generation=gen), none, model_key=model_key(m),
                                prompt=prompt, press=None, progress=False)
        t0 = time.perf_counter()
        for ds in spec.datasets:
            scores = {0.0: [], 1.0: []}
            for doc in load_split(ds.dev):
                _, preds = run.evaluate(doc, [0.0, 1.0], [BASE])
                for p in preds:
                    scores[p["rho"]].append(p["rouge_l"])
            rows.append([name, ds.id, sum(scores[0.0]) / len(scores[0.0]), sum(scores[1.0]) / len(scores[1.0]),
                         time.perf_counter() - t0])
    print(tabulate(rows, headers=["prompt", "dataset (dev)", "ROUGE-L full", "ROUGE-L no doc", "s"], floatfmt=".1f"))


if __name__ == "__main__":
    main()
