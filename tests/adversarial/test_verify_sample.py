"""verify's sample cannot be steered: grinding an unchecked field of the result file never moves it,
and the default sample catches a file with 3 tampered ranked (document, rho) pairs at least 95% of
the time over seeds the submitter does not choose."""

from __future__ import annotations

import random

from benchmark.trust.verify import TAMPERED, detection_probability, ranked_pairs, sample_pairs, sample_size


def _result(n_docs: int = 6, rhos=(0.0, 0.5, 0.9, 1.0)) -> dict:
    """The parts of a result file the sample reads: 6 documents x 4 rhos, 2 of them ranked (12 pairs)."""
    return {"submission": {"name": "forger"}, "tier": "mini", "model": {"id": "qwen2.5-0.5b"},
            "dataset": {"id": "mini-narrative", "split": "test"}, "updated": "2026-01-01T00:00:00+00:00",
            "predictions": [{"doc_id": f"d{i}", "rho": r} for i in range(n_docs) for r in rhos]}


def test_grinding_the_file_never_moves_the_sample():
    data = _result()
    k = sample_size(len(ranked_pairs(data)))
    first = sample_pairs(data, k, "base-commit")
    for i in range(2000):  # what a submitter can change freely: `updated`, any unchecked bytes
        assert sample_pairs(data | {"updated": f"2026-01-01T00:00:{i % 60:02d}+00:00", "pad": i}, k,
                            "base-commit") == first


def test_the_default_sample_catches_three_tampered_pairs_95_percent_of_the_time():
    data = _result()
    pairs = ranked_pairs(data)
    k = sample_size(len(pairs))
    assert len(pairs) == 12 and k == 7 and detection_probability(12, k) >= 0.95
    rng = random.Random(0)
    caught, trials = 0, 4000
    for t in range(trials):  # the tamperer picks 3 pairs; the seed is the base commit, unknown to them
        tampered = set(rng.sample(pairs, TAMPERED))
        caught += bool(tampered & set(sample_pairs(data, k, f"{t:040x}")))
    assert caught / trials > 0.93  # 0.955 exactly; the margin is 4000 trials' sampling error
