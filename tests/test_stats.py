"""The paired bootstrap against a slow, obvious loop over resamples."""

import numpy as np
import pytest

from scaffold_sae.stats import Estimate, paired_bootstrap


def slow_bootstrap(values, statistic, n_boot, seed, level):
    """Draw contexts with replacement one sample at a time, sum each column, apply the statistic, take percentiles."""
    draws = np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))
    samples = []
    for b in range(n_boot):
        sums = np.zeros(values.shape[1])
        for i in draws[b]:
            sums += values[i]
        samples.append(statistic(sums))
    samples = np.array(samples)
    tail = 100 * (1 - level) / 2
    return statistic(values.sum(0)), np.percentile(samples, tail, axis=0), np.percentile(samples, 100 - tail, axis=0)


def test_paired_bootstrap_matches_the_slow_reference():
    rng = np.random.default_rng(1)
    counts = rng.integers(50, 120, size=30).astype(float)
    clean = counts * rng.uniform(3, 4, 30)
    ablated = clean * rng.uniform(1.1, 2.0, 30)
    values = np.stack([counts, clean, ablated], 1)

    def statistic(s):
        return np.stack([s[..., 2] / s[..., 1], (s[..., 2] - s[..., 1]) / s[..., 0]], -1)

    got = paired_bootstrap(values, statistic, n_boot=300, seed=7, level=0.9)
    point, low, high = slow_bootstrap(values, statistic, 300, 7, 0.9)
    for estimate, p, lo, hi in zip(got, point, low, high):
        assert (estimate.value, estimate.low, estimate.high) == pytest.approx((p, lo, hi), rel=1e-12)
        assert estimate.low <= estimate.value <= estimate.high


def test_pairing_narrows_the_interval_of_a_ratio_between_correlated_conditions():
    rng = np.random.default_rng(2)
    hardness = rng.lognormal(0, 1, 100)          # contexts differ a lot; the condition scales every one by 1.5
    values = np.stack([hardness, 1.5 * hardness * rng.uniform(0.99, 1.01, 100)], 1)
    (ratio,) = paired_bootstrap(values, lambda s: s[..., 1] / s[..., 0], n_boot=500)
    assert ratio.high - ratio.low < 0.01 and ratio.low < 1.5 < ratio.high


def test_estimate_verdicts():
    assert Estimate(2.5, 2.1, 2.9).verdict(2.0) == "yes"
    assert Estimate(1.5, 1.2, 1.9).verdict(2.0) == "no"
    assert Estimate(2.1, 1.8, 2.4).verdict(2.0) == "undecided"
    assert Estimate(1.0, 0.9, 1.1).excludes(1.5) and not Estimate(1.0, 0.9, 1.1).excludes(1.0)
