"""The recipe-choice rule of scripts/choose_recipe.py, on synthetic dev predictions: it scores
covered questions at rho = 1 and rejects a candidate that stops the model reading at rho = 0 or
whose adapter diverged, so memorising cannot win."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("choose_recipe",
                                              Path(__file__).parents[1] / "scripts" / "choose_recipe.py")
choose_recipe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(choose_recipe)


def _preds(head_rho0: float, covered_rho1: float, docs: int = 4) -> list[dict]:
    """Base reads at 60 with the document and gets 0 without; the headline as given."""
    out = []
    for d in range(docs):
        for q in range(4):
            tags = ["covered"] if q < 2 else ["uncovered"]
            key = {"doc_id": d, "question_id": q, "tags": tags}
            out += [key | {"condition": "base", "rho": 0.0, "rouge_l": 60.0 + q},
                    key | {"condition": "base", "rho": 1.0, "rouge_l": 0.0},
                    key | {"condition": choose_recipe.HEADLINE, "rho": 0.0, "rouge_l": head_rho0 + q + d % 2},
                    key | {"condition": choose_recipe.HEADLINE, "rho": 1.0,
                           "rouge_l": covered_rho1 if tags == ["covered"] else 0.0}]
    return out


def test_summarise_reads_covered_questions_at_rho_1_and_the_paired_rho_0_difference():
    s = choose_recipe.summarise(_preds(head_rho0=60.0, covered_rho1=40.0))
    assert s["covered_rho1"] == 40.0
    assert s["uncovered_rho1_minus_base"] == 0.0
    assert abs(s["rho0_minus_base"] - 0.5) < 1e-9 and s["reads"]
    harmful = choose_recipe.summarise(_preds(head_rho0=30.0, covered_rho1=90.0))
    assert harmful["rho0_minus_base"] < -25 and not harmful["reads"]


def test_choose_prefers_the_best_admissible_candidate_and_never_a_harmful_or_diverged_one():
    def row(lr, epochs, covered, reads=True, diverged=0):
        return {"lr": lr, "epochs": epochs, "covered_rho1": covered, "reads": reads, "diverged": diverged}

    rows = [row(1e-3, 6, 90.0, reads=False), row(3e-3, 6, 80.0, diverged=1), row(3e-4, 6, 40.0), row(1e-4, 6, 20.0)]
    assert choose_recipe.choose(rows)["lr"] == 3e-4
    # within 0.5 points: fewer epochs first, then the lower rate
    assert choose_recipe.choose([row(3e-4, 6, 40.0), row(1e-3, 4, 39.8)])["epochs"] == 4
    assert choose_recipe.choose([row(1e-3, 6, 40.0), row(3e-4, 6, 39.6)])["lr"] == 3e-4
    assert choose_recipe.choose([row(1e-3, 6, 90.0, reads=False)]) is None
