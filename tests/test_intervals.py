"""Bootstrap intervals (evaluation/intervals.py) on simulated data, where the true value is known."""

from __future__ import annotations

import numpy as np
import pytest

from tokenmill.evaluation import intervals
from tokenmill.evaluation.intervals import Units


def simulated_set(rng, n_docs: int, shift: np.ndarray | None = None, noise: float = 0.0):
    """Documents of 1 + Poisson(40) tokens whose mean loss varies by document around 3 nats; token losses
    are Gamma-distributed around the document's mean. The true ratio Σ loss / Σ tokens is 3."""
    tokens = 1 + rng.poisson(40, n_docs)
    doc_mean = rng.normal(3.0, 0.6, n_docs)
    if shift is not None:
        doc_mean = doc_mean + shift
    losses = rng.gamma(4.0, np.clip(doc_mean, 0.1, None) / 4.0 * tokens) + noise * rng.normal(size=n_docs) * tokens
    return tokens.astype(float), losses, doc_mean


def test_the_document_bootstrap_covers_the_true_loss_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    hits = 0
    for trial in range(200):
        tokens, losses, _ = simulated_set(rng, 60)
        lo, hi = intervals.interval(Units("documents", np.arange(60), losses, tokens), seed=trial)
        hits += lo <= 3.0 <= hi
    assert 0.90 <= hits / 200 <= 0.99, hits / 200


def test_accuracy_intervals_cover_the_true_rate_and_agree_with_wilson():
    rng = np.random.default_rng(2)
    hits = 0
    for trial in range(200):
        correct = rng.random(150) < 0.4
        lo, hi = intervals.interval(intervals.of_outcomes(correct), seed=trial)
        hits += lo <= 0.4 <= hi
        w_lo, w_hi = intervals.wilson(int(correct.sum()), 150)
        assert abs(lo - w_lo) < 0.03 and abs(hi - w_hi) < 0.03
    assert 0.90 <= hits / 200 <= 0.99, hits / 200


def test_the_paired_interval_is_narrower_than_the_unpaired_one_on_correlated_data():
    rng = np.random.default_rng(3)
    n = 80
    tokens = (1 + rng.poisson(40, n)).astype(float)
    hardness = rng.normal(3.0, 0.6, n)  # what makes a document hard for both models
    before = Units("documents", np.arange(n), (hardness + rng.normal(0, 0.05, n)) * tokens, tokens)
    after = Units("documents", np.arange(n), (hardness - 0.04 + rng.normal(0, 0.05, n)) * tokens, tokens)
    paired = intervals.paired_difference(before, after)
    separate = [intervals.interval(u) for u in (before, after)]
    unpaired_width = 2 * np.hypot(*[(hi - lo) / 2 for lo, hi in separate])
    assert paired["paired"] and paired["difference"] == pytest.approx(after.value - before.value)
    assert paired["ci"][1] - paired["ci"][0] < unpaired_width / 5
    assert not paired["within_noise"] and paired["ci"][1] < 0  # a real 0.04 gain, found
    assert separate[0][0] < separate[1][1]  # which two separate intervals, overlapping, could not tell


def test_a_difference_of_pure_noise_is_within_noise_about_95_percent_of_the_time():
    rng = np.random.default_rng(4)
    within = 0
    for trial in range(200):
        tokens, losses, doc_mean = simulated_set(rng, 50)
        other = rng.gamma(4.0, np.clip(doc_mean, 0.1, None) / 4.0 * tokens)  # same documents, same true loss
        change = intervals.paired_difference(Units("documents", np.arange(50), losses, tokens),
                                             Units("documents", np.arange(50), other, tokens), seed=trial)
        within += change["within_noise"]
    assert 0.90 <= within / 200 <= 0.99, within / 200


def test_units_of_different_kinds_are_combined_unpaired_and_said_so():
    rng = np.random.default_rng(5)
    tokens, losses, _ = simulated_set(rng, 40)
    docs = Units("documents", np.arange(40), losses, tokens)
    windows = Units("windows", np.arange(40), losses * 1.01, tokens)
    change = intervals.paired_difference(docs, windows)
    assert change["paired"] is False and change["ci"][0] < change["difference"] < change["ci"][1]
    assert intervals.describe_change(change, "nats").endswith(("within noise", "better", "worse"))
