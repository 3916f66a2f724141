"""Every statistics helper of the project: sample sd and t-intervals over seeds, the paired bootstrap over contexts,
the hierarchical bootstrap over groups (seeds, random bases) and contexts, Holm's correction, and `Reading`, the
interval a claim is decided from.

Every CE-type number here is a ratio of sums over contexts (mean CE = sum of CE / number of predictions, CE ratio =
sum of ablated CE / sum of clean CE, ...). Resampling contexts with replacement and recomputing the statistic from the
resampled sums gives its sampling distribution; "paired" because every column (clean, each condition) is resampled
with the same contexts, so the interval of a difference or ratio between conditions reflects the pairing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy.special import ndtri, stdtr, stdtrit


def sd(values: Sequence[float]) -> float | None:
    """Sample standard deviation (ddof 1) of the values that are numbers (None and NaN left out); None for fewer
    than 2. The project's one sd."""
    return mean_sd(values)[1]


def mean_sd(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample sd (ddof 1) of the values that are numbers (None and NaN left out); None for an empty list,
    sd None for one value."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not kept:
        return None, None
    mean = math.fsum(kept) / len(kept)
    if len(kept) < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in kept) / (len(kept) - 1))


def t_quantile(df: float, level: float = 0.95) -> float:
    """The two-sided t quantile: P(|T_df| <= q) = level."""
    return float(stdtrit(df, 0.5 + level / 2))


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, sample sd and the t-interval (df = n - 1) of at least two values, e.g. one number per seed."""
    if len(values) < 2:
        raise ValueError(f"a t-interval needs at least 2 values, got {len(values)}")
    mean, s = mean_sd(values)
    half = t_quantile(len(values) - 1, level) * s / math.sqrt(len(values))
    return mean, s, mean - half, mean + half


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: sorted ascending, the i-th (from 0) is multiplied by
    m - i, made monotone and capped at 1. Rejecting where adjusted p < alpha controls the family-wise error at alpha."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [1.0] * m, 0.0
    for step, i in enumerate(order):
        running = max(running, min(1.0, (m - step) * float(p_values[i])))
        adjusted[i] = running
    return adjusted


def holm_levels(p_values: Sequence[float], alpha: float = 0.05) -> list[float]:
    """The confidence level of each reading's Holm-adjusted interval: 1 - alpha / (m - step), step its place (from 0)
    in the ascending order of p-values (the level Holm's test of that reading uses)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    levels = [1.0 - alpha] * m
    for step, i in enumerate(order):
        levels[i] = 1.0 - alpha / (m - step)
    return levels


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


@dataclass
class Reading:
    """The interval a claim is decided from: a value, its two-sided interval at `level`, the independent units behind
    it and how it was made. Its p-value and its interval at another level treat each side of the interval as a
    normal (df None) or t (df) spread around the value, so an asymmetric bootstrap interval keeps its shape."""

    value: float
    low: float | None
    high: float | None
    units: int
    """Independent units the interval rests on (contexts, documents, or seeds crossed with contexts)."""
    unit: str
    """What a unit is, e.g. "CE contexts", "seeds x CE contexts"."""
    method: str
    """How the interval was made, e.g. "paired bootstrap over 200 CE contexts"."""
    level: float = 0.95
    df: float | None = None
    """Degrees of freedom of a t-interval (None: bootstrap / normal)."""
    groups: int | None = None
    """Seeds (or other groups) the interval is over (None: one group)."""

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None and math.isfinite(self.low) and math.isfinite(self.high)

    def _quantile(self, level: float) -> float:
        if self.df is not None:
            return t_quantile(self.df, level)
        return float(ndtri(0.5 + level / 2))

    def spread(self, towards: float) -> float:
        """The standard error on the side of `towards` (the half-width there over the level's quantile)."""
        half = (self.value - self.low) if towards < self.value else (self.high - self.value)
        return max(half, 0.0) / self._quantile(self.level)

    def p_value(self, null: float) -> float:
        """Two-sided p-value of `null`: 1 where the value sits on it, 0 where the interval has no width."""
        if not self.has_interval:
            return 1.0
        gap = abs(self.value - null)
        if gap == 0:
            return 1.0
        se = self.spread(null)
        if se == 0:
            return 0.0
        if self.df is not None:
                return float(2 * stdtr(self.df, -gap / se))
        return math.erfc(gap / se / math.sqrt(2))

    def at_level(self, level: float) -> tuple[float, float]:
        """(low, high) at another confidence level, each side scaled by the ratio of quantiles."""
        scale = self._quantile(level) / self._quantile(self.level)
        return self.value - scale * (self.value - self.low), self.value + scale * (self.high - self.value)

    @classmethod
    def from_estimate(cls, e: Estimate, units: int, unit: str, method: str) -> "Reading":
        return cls(float(e.value), e.low, e.high, int(units), unit, method)


def over_groups(readings: Sequence[Reading], unit: str, shared_units: bool = True, level: float = 0.95) -> Reading:
    """One reading from several groups' readings of the same quantity (e.g. one per seed): the mean over groups with a
    t-interval whose variance is the between-group variance / groups plus, where the groups share their units (the
    same contexts for every seed: that noise does not average out over groups), the mean within-group variance; its
    degrees of freedom by Welch-Satterthwaite (groups - 1 for the first part, units - 1 for the second). Conservative:
    the between-group variance already holds part of the within-group noise. Units: groups x units of each group."""
    n = len(readings)
    if n == 1:
        return readings[0]
    mean, between = mean_sd([r.value for r in readings])
    per = min(r.units for r in readings)
    within = [((r.high - r.low) / (2 * r._quantile(r.level))) ** 2 for r in readings if r.has_interval]
    a = between ** 2 / n
    b = math.fsum(within) / len(within) if within and shared_units else 0.0
    parts = a * a / (n - 1) + (b * b / max(per - 1, 1))
    df = (a + b) ** 2 / parts if parts > 0 else float(n - 1)
    half = t_quantile(df, level) * math.sqrt(a + b)
    method = (f"t-interval over {n} seeds (between-seed variance" + (" plus the shared contexts' variance" if b else "")
              + f", df {df:.3g})")
    return Reading(mean, mean - half, mean + half, n * per, unit, method, level, df, n)


Statistic = Callable[[np.ndarray], np.ndarray]
"""Column sums [..., k] -> statistics [..., s] (vectorised over the leading axes)."""


def resample_weights(n: int, n_boot: int, seed: int | np.random.Generator) -> np.ndarray:
    """[n_boot, n] counts: how often each of n contexts is drawn in each bootstrap sample (n draws with
    replacement, from numpy's default_rng(seed).integers(0, n, (n_boot, n)))."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_boot, n))
    weights = np.zeros((n_boot, n))
    np.add.at(weights, (np.repeat(np.arange(n_boot), n), draws.ravel()), 1.0)
    return weights


def _percentiles(point: np.ndarray, samples: np.ndarray, level: float) -> list[Estimate]:
    tail = 100.0 * (1.0 - level) / 2.0
    percentile = np.nanpercentile if np.isnan(samples).any() else np.percentile  # same numbers; nan* is per column
    low, high = percentile(samples, [tail, 100.0 - tail], axis=0)
    return [Estimate(float(p), float(lo), float(hi)) for p, lo, hi in zip(point, low, high)]


def paired_bootstrap(values: np.ndarray, statistic: Statistic, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> list[Estimate]:
    """Point estimates and percentile intervals of statistic(column sums) over rows (contexts) of values [n, k],
    every column resampled with the same rows. Returns one Estimate per statistic."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] < 1:
        raise ValueError(f"values must be [contexts, columns] with at least one context, got {values.shape}")
    point = np.atleast_1d(statistic(values.sum(0)))
    samples = np.asarray(statistic(resample_weights(values.shape[0], n_boot, seed) @ values)).reshape(n_boot, -1)
    return _percentiles(point, samples, level)


def hierarchical_bootstrap(values: np.ndarray, statistic: Statistic, n_boot: int = 2000, seed: int = 0,
                           level: float = 0.95, crossed: bool = True) -> list[Estimate]:
    """Point estimates and percentile intervals of statistic(column sums) over two levels of values [g, n, k]: groups
    (seeds, or random bases) and contexts. Each resample draws g groups with replacement and n contexts with
    replacement, the same contexts for every group when `crossed` (every seed or basis read on the same contexts),
    else afresh within each group (nested). Sums run over the drawn groups and contexts, every column with the same
    draws (paired)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 3 or min(values.shape[:2]) < 1:
        raise ValueError(f"values must be [groups, contexts, columns] with at least one of each, got {values.shape}")
    g, n, _ = values.shape
    rng = np.random.default_rng(seed)
    point = np.atleast_1d(statistic(values.sum((0, 1))))
    groups = resample_weights(g, n_boot, rng)
    if crossed:
        contexts = resample_weights(n, n_boot, rng)
        sums = np.einsum("bg,bgk->bk", groups, np.einsum("bn,gnk->bgk", contexts, values))
    else:
        sums = sum(groups[:, i, None] * (resample_weights(n, n_boot, rng) @ values[i]) for i in range(g))
    samples = np.asarray(statistic(sums)).reshape(n_boot, -1)
    return _percentiles(point, samples, level)


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
