"""Calibration of the claims engine itself (no LM): simulated studies through the functions that decide real ones.

Each simulated study has the plan's family of primary readings, every one measured on 3 seeds that share their
contexts or documents: the causal CE ratio (a ratio of sums over 40 contexts, paired bootstrap), the redundancy ratio
under two operators, the probing difference (paired over 60 documents), the topic drop with its two paired controls,
and the dense-latent change (one number per seed). Per-seed intervals come from stats.paired_bootstrap, then
claims.combine_seeds and claims.decide_family decide, exactly as claim_rows does for a results.json. Bootstraps run
over many studies at once (the studies are columns of one resampled matrix), which keeps the test to seconds.
"""

from __future__ import annotations

import numpy as np

from scaffold_sae.claims import (EFFECT_VERDICTS, NOT_REPRODUCED, REPRODUCED, SMALLER, UNDECIDED, Part, Primary,
                                 Rule, combine_seeds, decide_family, ratio_reading)
from scaffold_sae.plan import ClaimsPlan
from scaffold_sae.stats import Estimate, Reading, paired_bootstrap

STUDIES, SEEDS, CONTEXTS, DOCUMENTS, N_BOOT = 1000, 3, 40, 60, 300
PLAN = ClaimsPlan(seeds=SEEDS)


def ratio_estimates(rng, effect: float, seed_sd: float, contexts: int = CONTEXTS) -> list[list[Estimate]]:
    """[seed][study] paired-bootstrap estimates of sum(ablated CE) / sum(reference CE) over shared contexts: every
    context has its own hardness, the ablated condition is `effect` x the reference times a per-seed factor (mean 1)
    and per-context noise."""
    hardness = rng.lognormal(1.2, 0.35, (contexts, STUDIES))               # shared by the seeds of a study
    out = []
    for seed in range(SEEDS):
        reference = hardness * rng.lognormal(0, 0.05, (contexts, STUDIES))
        factor = 1 + seed_sd * rng.standard_normal(STUDIES)
        ablated = reference * effect * factor * rng.lognormal(0, 0.15, (contexts, STUDIES))
        values = np.stack([reference, ablated], axis=2).reshape(contexts, 2 * STUDIES)
        est = paired_bootstrap(values, lambda s: s[..., 1::2] / s[..., 0::2], N_BOOT, seed=int(rng.integers(1 << 30)))
        out.append(est)
    return out


def difference_estimates(rng, p_base, shift: float) -> list[list[Estimate]]:
    """[seed][study] paired-bootstrap estimates of the accuracy difference (a - b) over shared documents: each
    document has its own difficulty; a is correct with probability p + shift."""
    difficulty = rng.uniform(-0.1, 0.1, (DOCUMENTS, STUDIES))
    out = []
    for seed in range(SEEDS):
        p = np.clip(p_base + difficulty, 0, 1)
        a = (rng.random((DOCUMENTS, STUDIES)) < np.clip(p + shift, 0, 1)).astype(float)
        b = (rng.random((DOCUMENTS, STUDIES)) < p).astype(float)
        values = np.stack([a, b], axis=2).reshape(DOCUMENTS, 2 * STUDIES)
        out.append(paired_bootstrap(values, lambda s: (s[..., 0::2] - s[..., 1::2]) / DOCUMENTS, N_BOOT,
                                    seed=int(rng.integers(1 << 30))))
    return out


def accuracy_estimates(rng, p: float) -> list[list[Estimate]]:
    out = []
    for seed in range(SEEDS):
        correct = (rng.random((DOCUMENTS, STUDIES)) < p).astype(float)
        out.append(paired_bootstrap(correct, lambda s: s / DOCUMENTS, N_BOOT, seed=int(rng.integers(1 << 30))))
    return out


def reading(e: Estimate, units: int, unit: str) -> Reading:
    return Reading.from_estimate(e, units, unit, "simulated")


def simulate(rng, causal: float, redundancy: float, probing: float, topic: float, dense: float) -> list[list]:
    """Every study's decided rows. The effects are the true values: causal ratio (1 = none), redundancy ratio
    (1 = none), probing difference (0 = none), topic accuracy drop below clean beyond the controls (0 = none), dense
    relative change (0 = none)."""
    causal_e = ratio_estimates(rng, causal, 0.05)
    zero_a, zero_s = ratio_estimates(rng, redundancy, 0.03), ratio_estimates(rng, 1.0, 0.0)
    mean_a, mean_s = ratio_estimates(rng, redundancy, 0.03), ratio_estimates(rng, 1.0, 0.0)
    probing_e = difference_estimates(rng, 0.75, probing)
    clean = 0.88
    removed = accuracy_estimates(rng, clean - topic)
    vs_random, vs_pca = difference_estimates(rng, 0.6, -topic), difference_estimates(rng, 0.6, -topic)
    dense_changes = dense + 0.1 * rng.standard_normal((SEEDS, STUDIES))
    studies = []
    for i in range(STUDIES):
        def seeds_of(build):
            return combine_seeds([build(s) for s in range(SEEDS)], list(range(SEEDS)))

        primaries = [
            Primary("dense", "dense", "", "", [Part("change", Reading(
                float(dense_changes[:, i].mean()), *t_bounds(dense_changes[:, i]), SEEDS * 100, "seeds x contexts",
                "t over seeds", df=SEEDS - 1, groups=SEEDS), Rule(0.0, -0.84, below=True))]),
            seeds_of(lambda s: Primary("causal", "causal", "", "", [Part("ratio", reading(
                causal_e[s][i], CONTEXTS, "CE contexts"), Rule(1.0, 2.7, below=False))], values_by_seed=[0.0])),
            seeds_of(lambda s: Primary("redundancy", "redundancy", "", "", [
                Part("zero", ratio_reading(zero_a[s][i], zero_s[s][i], CONTEXTS, "zero"), Rule(1.0, 0.387, True)),
                Part("mean", ratio_reading(mean_a[s][i], mean_s[s][i], CONTEXTS, "mean"), Rule(1.0, 0.387, True))],
                combine="agree", values_by_seed=[0.0])),
            seeds_of(lambda s: Primary("topic", "topic", "", "", [
                Part("accuracy", reading(removed[s][i], DOCUMENTS, "documents"), Rule(clean, 0.2, below=True)),
                Part("against random", reading(vs_random[s][i], DOCUMENTS, "documents"), Rule(0.0, None, True)),
                Part("against pca", reading(vs_pca[s][i], DOCUMENTS, "documents"), Rule(0.0, None, True))],
                values_by_seed=[0.0])),
            seeds_of(lambda s: Primary("probing", "probing", "", "", [Part("difference", reading(
                probing_e[s][i], DOCUMENTS, "documents"), Rule(0.0, None, below=False))], values_by_seed=[0.0])),
        ]
        studies.append(decide_family(primaries, PLAN))
    return studies


def t_bounds(values: np.ndarray) -> tuple[float, float]:
    from scaffold_sae.stats import t_interval

    _, _, low, high = t_interval(list(values))
    return low, high


def asserts_an_effect(row) -> bool:
    """The row claims an effect in either direction: the paper's (reproduced, smaller), or a reversed one."""
    return row.verdict in EFFECT_VERDICTS or "reversed" in row.note


def test_no_effect_gives_at_most_five_percent_false_decisions_and_planted_effects_are_found():
    rng = np.random.default_rng(20261203)
    null = simulate(rng, causal=1.0, redundancy=1.0, probing=0.0, topic=0.0, dense=0.0)
    family_wise = np.mean([any(asserts_an_effect(r) for r in rows) for rows in null])
    per_claim = {r.key: np.mean([asserts_an_effect(rows[j]) for rows in null]) for j, r in enumerate(null[0])}
    print(f"\nno effect, {STUDIES} studies: family-wise false decisions {family_wise:.3f}; per claim {per_claim}")
    assert family_wise <= 0.05
    assert all(rate <= 0.05 for rate in per_claim.values())

    planted = simulate(rng, causal=2.7, redundancy=0.387, probing=0.2, topic=0.6, dense=-0.84)
    power = {r.key: np.mean([rows[j].verdict == REPRODUCED for rows in planted]) for j, r in enumerate(planted[0])}
    smaller = {r.key: np.mean([rows[j].verdict in (SMALLER, NOT_REPRODUCED) for rows in planted])
               for j, r in enumerate(planted[0])}
    print(f"effects at the paper's size: power (reproduced) {power}; wrongly smaller / not reproduced {smaller}")
    assert all(rate >= 0.8 for rate in power.values())
    assert all(rate <= 0.05 for rate in smaller.values())


def test_fewer_than_the_minimum_units_never_decide():
    rng = np.random.default_rng(1)
    estimates = ratio_estimates(rng, 3.0, 0.0, contexts=4)        # a large effect on 4 contexts: as the old demo
    rows = [decide_family([combine_seeds([Primary("causal", "causal", "", "", [Part("ratio", reading(
        estimates[s][i], 4, "CE contexts"), Rule(1.0, 2.7, False))], values_by_seed=[0.0]) for s in range(SEEDS)],
        list(range(SEEDS)))], PLAN)[0] for i in range(50)]
    assert {r.verdict for r in rows} == {UNDECIDED}
    assert rows[0].note.startswith("12 seeds x CE contexts, at least 30 needed")
