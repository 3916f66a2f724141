"""Intervals over contexts: a paired bootstrap of statistics that are functions of per-context sums.

Every CE-type number here is a ratio of sums over contexts (mean CE = sum of CE / number of predictions, CE ratio =
sum of ablated CE / sum of clean CE, ...). Resampling contexts with replacement and recomputing the statistic from the
resampled sums gives its sampling distribution; "paired" because every column (clean, each condition) is resampled
with the same contexts, so the interval of a difference or ratio between conditions reflects the pairing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class Estimate:
    """A point estimate and its percentile bootstrap interval."""

    value: float
    low: float
    high: float

    def excludes(self, threshold: float) -> bool:
        """True when the whole interval lies on one side of `threshold`."""
        return self.low > threshold or self.high < threshold

    def verdict(self, threshold: float) -> str:
        """'yes' (interval >= threshold), 'no' (interval < threshold) or 'undecided' (it straddles it)."""
        if self.low >= threshold:
            return "yes"
        if self.high < threshold:
            return "no"
        return "undecided"


Statistic = Callable[[np.ndarray], np.ndarray]
"""Column sums [..., k] -> statistics [..., s] (vectorised over the leading axes)."""


def resample_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n] counts: how often each of n contexts is drawn in each bootstrap sample (n draws with
    replacement, from numpy's default_rng(seed).integers(0, n, (n_boot, n)))."""
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    weights = np.zeros((n_boot, n))
    np.add.at(weights, (np.repeat(np.arange(n_boot), n), draws.ravel()), 1.0)
    return weights


def paired_bootstrap(values: np.ndarray, statistic: Statistic, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> list[Estimate]:
    """Point estimates and percentile intervals of statistic(column sums) over rows (contexts) of values [n, k],
    every column resampled with the same rows. Returns one Estimate per statistic."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] < 1:
        raise ValueError(f"values must be [contexts, columns] with at least one context, got {values.shape}")
    point = np.atleast_1d(statistic(values.sum(0)))
    samples = np.asarray(statistic(resample_weights(values.shape[0], n_boot, seed) @ values)).reshape(n_boot, -1)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.nanpercentile(samples, [tail, 100.0 - tail], axis=0)
    return [Estimate(float(p), float(lo), float(hi)) for p, lo, hi in zip(point, low, high)]
