"""The paired bootstrap against a slow, obvious loop over resamples."""

import numpy as np
from scipy import stats
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


def test_holm_matches_the_step_down_rule():
    from scaffold_sae.stats import holm, holm_levels

    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])      # 3 x 0.01, max(2 x 0.03, .), 1 x 0.04
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert holm_levels([0.01, 0.04, 0.03]) == pytest.approx([1 - 0.05 / 3, 0.95, 1 - 0.05 / 2])


def test_one_sd_and_the_t_interval():
    from scaffold_sae.stats import mean_sd, sd, t_interval

    assert mean_sd([1.0, None, float("nan"), 3.0]) == (2.0, pytest.approx(2 ** 0.5))
    assert sd([4.0]) is None and mean_sd([]) == (None, None)
    mean, s, low, high = t_interval([1.0, 2.0, 3.0])
    assert (mean, s) == (2.0, 1.0) and high - mean == pytest.approx(4.302652729749462 / 3 ** 0.5)
    with pytest.raises(ValueError, match="a t-interval needs at least 2 values, got 1"):
        t_interval([1.0])


def test_hierarchical_bootstrap_matches_the_slow_reference():
    """Groups (e.g. random bases) and contexts drawn with replacement; crossed: the same contexts for every group."""
    from scaffold_sae.stats import hierarchical_bootstrap, resample_weights

    rng = np.random.default_rng(3)
    values = rng.uniform(1, 2, size=(4, 12, 2))

    def statistic(s):
        return s[..., 1:2] / s[..., 0:1]

    got = hierarchical_bootstrap(values, statistic, n_boot=200, seed=5, level=0.9)
    draws = np.random.default_rng(5)
    groups, contexts = resample_weights(4, 200, draws), resample_weights(12, 200, draws)
    samples = []
    for b in range(200):
        sums = np.zeros(2)
        for g in range(4):
            for n in range(12):
                sums += groups[b, g] * contexts[b, n] * values[g, n]
        samples.append(statistic(sums))
    low, high = np.percentile(np.array(samples), [5, 95], axis=0)
    assert (got[0].value, got[0].low, got[0].high) == pytest.approx(
        (statistic(values.sum((0, 1)))[0], low[0], high[0]), rel=1e-12)
    nested = hierarchical_bootstrap(values, statistic, n_boot=200, seed=5, crossed=False)
    assert nested[0].value == got[0].value and nested[0].low < nested[0].value < nested[0].high


def test_a_reading_over_seeds_adds_the_shared_contexts_spread():
    from scaffold_sae.stats import Reading, over_groups

    half = stats.norm.ppf(0.975) * 0.1                                          # a bootstrap se of 0.1
    seeds = [Reading(v, v - half, v + half, 100, "CE contexts", "bootstrap") for v in (1.0, 1.2, 1.4)]
    combined = over_groups(seeds, "seeds x CE contexts")
    a, b = 0.2 ** 2 / 3, 0.1 ** 2
    df = (a + b) ** 2 / (a * a / 2 + b * b / 99)
    assert combined.value == pytest.approx(1.2) and combined.units == 300 and combined.groups == 3
    assert combined.df == pytest.approx(df)
    assert combined.high - 1.2 == pytest.approx(stats.t.ppf(0.975, df) * (a + b) ** 0.5)
    assert combined.p_value(1.2) == 1.0 and combined.p_value(combined.low) == pytest.approx(0.05)
    assert combined.at_level(0.99)[0] < combined.low
