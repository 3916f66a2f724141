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


def group_mean_bootstrap(numerators: np.ndarray, counts: np.ndarray, weights: np.ndarray, n_boot: int = 2000,
                         seed: int = 0, level: float = 0.95) -> list[list[Estimate]]:
    """Weighted means of per-group ratios of sums, with paired bootstrap intervals over units (rows).

    numerators [n, q, g]: per unit (e.g. a test document), q quantities in g groups (e.g. its correct predictions by
    q probes in each (split, task) group; 0 where it is not in the group); counts [n, g]: the unit's count in each
    group (1 where it is a test document of the group). Statistic (i, j) = sum_g weights[j, g] * (sum over units of
    numerators[:, i, g]) / (sum over units of counts[:, g]): with per-document correctness, the accuracy of probe i
    averaged over groups as weights row j says. Every quantity is resampled with the same units, so the interval of a
    difference of two probes' correctness (a quantity of its own) is paired. A resample that draws no unit of a group
    leaves that statistic out. Returns [q][j] Estimates."""
    numerators = np.asarray(numerators, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    n, q, g = numerators.shape
    if counts.shape != (n, g) or weights.shape[1] != g:
        raise ValueError(f"shapes do not match: numerators {numerators.shape}, counts {counts.shape}, "
                         f"weights {weights.shape}")
    values = np.concatenate([counts, numerators.reshape(n, q * g)], axis=1)

    def statistic(sums: np.ndarray) -> np.ndarray:
        lead = sums.shape[:-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = sums[..., g:].reshape(*lead, q, g) / sums[..., None, :g]
        empty = np.isnan(ratios)  # a group with no unit in this resample: only the statistics that weigh it are lost
        out = np.where(empty, 0.0, ratios) @ weights.T
        out[(empty.astype(np.float64) @ (weights != 0).T) > 0] = np.nan
        return out.reshape(*lead, q * weights.shape[0])

    flat = paired_bootstrap(values, statistic, n_boot, seed, level)
    j = weights.shape[0]
    return [flat[i * j:(i + 1) * j] for i in range(q)]


def crossed_bootstrap(values: np.ndarray, grouped: np.ndarray, statistic: Statistic, n_boot: int = 2000,
                      seed: int = 0, level: float = 0.95) -> list[Estimate]:
    """paired_bootstrap with random draws (e.g. random bases) crossed with the contexts: values [n, k] are columns
    measured once per context; grouped [g, n, m] are m columns measured under each of g random draws on the same
    contexts. statistic receives sums [..., k + m]: the k column sums, then per grouped column its sum over contexts
    averaged over the draws. Each resample draws g of the draws with replacement (numpy default_rng([seed, 1])) and n
    contexts with replacement (the same draws as paired_bootstrap's, shared by every column, so pairing holds), so
    the interval carries the spread over the random draws as well as over contexts. With g = 1 it is
    paired_bootstrap."""
    values = np.asarray(values, dtype=np.float64)
    grouped = np.asarray(grouped, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] < 1 or grouped.ndim != 3 or grouped.shape[1] != values.shape[0] \
            or grouped.shape[0] < 1:
        raise ValueError(f"values must be [contexts, columns] and grouped [draws, contexts, columns] on the same "
                         f"contexts, got {values.shape} and {grouped.shape}")
    g, n, _ = grouped.shape
    point = np.atleast_1d(statistic(np.concatenate([values.sum(0), grouped.sum(1).mean(0)])))
    contexts = resample_weights(n, n_boot, seed)
    draws = np.random.default_rng([seed, 1]).integers(0, g, size=(n_boot, g))
    draw_weights = np.zeros((n_boot, g))
    np.add.at(draw_weights, (np.repeat(np.arange(n_boot), g), draws.ravel()), 1.0 / g)
    per_draw = np.einsum("bn,gnm->bgm", contexts, grouped)
    sums = np.concatenate([contexts @ values, np.einsum("bg,bgm->bm", draw_weights, per_draw)], axis=1)
    samples = np.asarray(statistic(sums)).reshape(n_boot, -1)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.nanpercentile(samples, [tail, 100.0 - tail], axis=0)
    return [Estimate(float(p), float(lo), float(hi)) for p, lo, hi in zip(point, low, high)]
