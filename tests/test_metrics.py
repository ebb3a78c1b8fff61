"""ROUGE-L / EM after SQuAD normalisation, answer extraction, clustered bootstrap (hand-computed)."""

import pytest

from benchmark.protocol.metrics import clustered_bootstrap_ci, exact_match, extract_answer, normalize_answer, rouge_l


def test_normalisation():
    assert normalize_answer("  The Tollervik Bakery!  ") == "tollervik bakery"
    assert normalize_answer("An apple, a pear.") == "apple pear"
    assert normalize_answer("Ærøskøbing") == "ærøskøbing"


@pytest.mark.parametrize("pred,golds,expected", [
    ("Tollervik", ["Tollervik"], 1.0),
    ("the Tollervik", ["Tollervik"], 1.0),  # article dropped
    ("in Tollervik town", ["Tollervik"], 0.5),  # P=1/3, R=1 -> F=0.5
    ("40 mg daily", ["40 mg", "forty milligrams"], 0.8),  # P=2/3, R=1 -> 0.8, max over golds
    ("mg 40", ["40 mg"], 0.5),  # LCS 1: P=R=1/2
    ("", ["Tollervik"], 0.0),
    ("Ærøskøbing harbour", ["ærøskøbing"], 2 / 3),  # unicode letters are kept as tokens
])
def test_rouge_l_hand_computed(pred, golds, expected):
    assert rouge_l(pred, golds) == pytest.approx(expected)


def test_exact_match():
    assert exact_match("The Tollervik.", ["tollervik"]) == 1.0
    assert exact_match("Tollervik bay", ["Tollervik"]) == 0.0
    assert exact_match("", ["x"]) == 0.0


def test_extraction():
    assert extract_answer(" Tollervik\nmore", "Answer:") == "Tollervik"
    assert extract_answer("\n\n  Anders  \n", "") == "Anders"
    assert extract_answer("Anders}", "The answer is \\boxed{") == "Anders"
    assert extract_answer("I think \\boxed{a {b} c} end") == "a {b} c"
    assert extract_answer("40 mg", "The answer is \\boxed{") == "40 mg"  # unclosed box: all of it
    assert extract_answer("") == ""


def test_clustered_bootstrap_is_wider_than_nothing_and_deterministic():
    vals = [1, 1, 1, 0, 0, 0, 1, 0]
    docs = ["a", "a", "a", "b", "b", "b", "c", "c"]
    lo, hi = clustered_bootstrap_ci(vals, docs, seed=0)
    assert 0 <= lo < 0.5 < hi <= 1
    assert (lo, hi) == clustered_bootstrap_ci(vals, docs, seed=0)
    # identical documents -> zero-width interval
    assert clustered_bootstrap_ci([0.5, 0.5], ["a", "b"]) == (0.5, 0.5)


def test_paired_bootstrap_separates_a_constant_shift_and_not_noise():
    import numpy as np

    from benchmark.protocol.metrics import paired_bootstrap_ci

    rng = np.random.default_rng(1)
    base = rng.uniform(0, 100, 60)
    clusters = [f"d{i // 6}" for i in range(60)]
    mean, lo, hi = paired_bootstrap_ci(base + 3.0, base, clusters)
    assert mean == pytest.approx(3.0) and lo == pytest.approx(3.0) and hi == pytest.approx(3.0)
    noise = base + rng.normal(0, 1, 60)
    mean, lo, hi = paired_bootstrap_ci(noise, base, clusters)
    assert lo < 0 < hi
    with pytest.raises(ValueError, match="same questions"):
        paired_bootstrap_ci(base[:5], base, clusters)


def test_scoring_is_the_specs_rules_on_the_result_scale():
    from benchmark.protocol.metrics import SCALE, Scoring
    from benchmark.protocol.spec import load_spec

    paper, mini = load_spec("paper").scoring(), load_spec("mini").scoring()
    assert (paper.extraction, paper.normalization, paper.budget) == ("boxed_or_last_line", "paper", "paper_floor")
    assert mini == Scoring()
    generation = "Anders}\nHe is named in the first part."
    assert mini.extract(generation, "The answer is \\boxed{") == "Anders"
    assert paper.extract(generation, "The answer is \\boxed{") == "He is named in the first part."
    assert paper.score("the Anders", ["Anders."]) == {"rouge_l": SCALE * 1.0, "exact_match": SCALE * 1.0}
    assert paper.fractions("Anders Berg", ["Anders"])["rouge_l"] == pytest.approx(2 / 3)
    assert (mini.kept(10, 0.95), paper.kept(10, 0.95)) == (1, 0)  # kvpress keeps 1, the paper's floor 0
    with pytest.raises(ValueError, match="budget 'half': choose from kvpress, paper_floor"):
        Scoring(budget="half")
