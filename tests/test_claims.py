"""The report's opening summary: one row per claim of the paper, decided from the plan's primary reading by two
questions (an effect? the paper's size?), with Holm across the family, controls gating, and replications apart."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics

import pytest

from scaffold_sae import claims, study_report
from scaffold_sae.claims import (DEPENDS, NOT_REPRODUCED, NOT_RUN, NOT_TESTED, REPRODUCED, SMALLER, UNDECIDED, Rule,
                                 decide)
from scaffold_sae.config import ConfigError
from scaffold_sae.plan import ClaimsPlan, plan_status, write_plan
from scaffold_sae.analyses import AnalysisResults
from scaffold_sae.analyses.ablation_table import AblationTableResult, Cell, Comparison
from scaffold_sae.analyses.probing import (DatasetInfo, PairedDifference, ProbeConfig, ProbingResult,
                                           SparseProbeScore)
from scaffold_sae.analyses.structure import ScaffoldStructure, StructureResult
from scaffold_sae.analyses.redundancy import CurvePoint, RedundancyResult
from scaffold_sae.analyses.topic_ablation import TopicDifference, TopicReadout, TopicResult
from scaffold_sae.stats import Estimate, Reading


def member(kind: str, seed: int, rank: int, dense: int) -> dict:
    return {"arch": "batchtopk", "inference": "batchtopk", "rank": rank, "kind": kind, "seed": seed,
            "for_rank": rank, "dense_10": dense, "fvu": 0.2}


def cell(subject: str, operator: str, ratio: Estimate) -> Cell:
    e = Estimate(1.0, 1.0, 1.0)
    return Cell(subject, operator, "ordinary", e, ratio, e, e)


def known_study() -> dict:
    """Numbers chosen so that each rule's outcome is known: dense reproduced (3 seeds), structure without an interval,
    the causal ratio straddling 2, no redundancy analysis, the topic surviving, the probing difference straddling 0."""
    saes = {f"{kind}{seed}": member(kind, seed, rank, dense) for kind, rank, counts in
            (("baseline", 0, (50, 52, 54)), ("hybrid", 8, (0, 1, 2))) for seed, dense in enumerate(counts)}
    structure = StructureResult([ScaffoldStructure(
        sae="hybrid0", rank=8, n_tokens=4096, principal_angles_deg=[2.0, 3.5, 4.0], mean_cos2=0.995,
        variance_share_scaffold=0.6, variance_share_pca=0.61, scaffold_explained_variance=0.6, outlier_rule="rule",
        outlier_dims=[3], outlier_mean_abs=[40.0], median_mean_abs=0.5, outlier_dim_in_scaffold=[0.99],
        outlier_energy_scaffold_centred=0.97, outlier_energy_scaffold_uncentred=0.98,
        outlier_energy_pca_centred=0.96, outlier_energy_pca_uncentred=0.95)])
    zero, mean = Estimate(1.9, 1.5, 2.3), Estimate(1.0, 0.99, 1.01)
    table = AblationTableResult(
        sae="hybrid0", rank=8, scaffold_centred=True, n_contexts=40, n_predictions=5000, n_fit_contexts=60,
        n_fit_tokens=7000, n_fit_special=60, ce_clean=Estimate(3.8, 3.7, 3.9),
        cells=[cell("scaffold", "zero", Estimate(3.8, 3.5, 4.1)), cell("pca", "zero", Estimate(2.0, 1.9, 2.1)),
               cell("scaffold", "mean", Estimate(1.1, 1.05, 1.15)), cell("pca", "mean", Estimate(1.1, 1.05, 1.15))],
        comparisons=[Comparison("scaffold:zero", "pca:zero", "ordinary", False, "oblique", zero, zero,
                                zero.verdict(2.0)),
                     Comparison("scaffold:mean", "pca:mean", "ordinary", False, "oblique", mean, mean,
                                mean.verdict(2.0))],
        bootstrap_samples=100, forwards=10, wall_s=1.0)
    topic = TopicResult("hybrid0", "baseline0", 8, 9, [
        TopicReadout("bbc_topic", "clean", 9, Estimate(0.9, 0.85, 0.95), 0.2),
        TopicReadout("bbc_topic", "scaffold:zero:ordinary", 9, Estimate(0.88, 0.82, 0.93), 0.2)],
        {"bbc_topic": 140}, {"bbc_topic": 60}, 256)
    def score(sae, rank, k, acc):
        return SparseProbeScore("bbc_topic", sae, rank, k, Estimate(acc, acc - 0.05, acc + 0.05), 0.02, [acc])

    probing = ProbingResult({"bbc_topic": DatasetInfo(["a", "b"], 200, 60.0)}, {}, [
        score("baseline0", 0, 5, 0.7), score("hybrid0", 8, 5, 0.75), score("baseline0", 0, 1, 0.6)],
        [PairedDifference("bbc_topic", "hybrid0", "baseline0", 8, 5, Estimate(0.05, -0.02, 0.12), 0.03,
                          [Estimate(0.05, -0.02, 0.12)], "undecided")], [], [], ProbeConfig())
    analyses = AnalysisResults(4096, {"structure": structure, "ablation_table": table, "probing": probing,
                                      "topic_ablation": topic})
    return {"title": "claims", "config": {"analysis_rank": None, "eval_tokens": 16384, "ctx_len": 128}, "saes": saes,
            "analyses": analyses.to_json()}


def test_known_numbers_give_the_expected_rows_and_verdicts():
    """Flat config, no plan (results written before plans): the default plan decides; dense (3 seeds, -98%) reaches
    the paper's -84%; structure is not tested under PCA initialisation; the causal ratio 1.9 [1.5, 2.3] shows an effect
    short of 2.7 after Holm; the topic survives; probing straddles 0."""
    rows = claims.claim_rows(json.loads(json.dumps(known_study())))
    assert [r.verdict for r in rows] == [REPRODUCED, NOT_TESTED, SMALLER, NOT_RUN, NOT_REPRODUCED, UNDECIDED]
    dense, structure, causal, redundancy, topic, probing = rows
    changes = [-50 / 50, -51 / 52, -52 / 54]
    mean, sd = sum(changes) / 3, statistics.stdev(changes)
    half = 4.302652729749462 * sd / 3 ** 0.5                               # t(0.975, 2 df)
    assert (dense.value, dense.low, dense.high) == pytest.approx((mean, mean - half, mean + half))
    assert dense.units == 3 * 128 and dense.claim == "dense latents removed by the scaffold (hybrid r=8 vs plain SAE)"
    assert structure.value == 0.995 and structure.note.startswith("the scaffold was initialised at the top PCs")
    # Holm over the four readings that can decide (dense, causal, topic, probing; topic's missing controls leave it
    # undecided but counted): causal has the smallest p, so its interval is taken at 1 - 0.05 / 4, each side scaled
    # by the normal quantiles' ratio
    z, z4 = 1.959963984540054, 2.497705474412374
    assert (causal.low_adjusted, causal.high_adjusted) == pytest.approx((1.9 - 0.4 * z4 / z, 1.9 + 0.4 * z4 / z))
    p = math.erfc((0.4 / z) ** -1 * 0.9 / math.sqrt(2))
    assert causal.p == pytest.approx(p) and causal.p_adjusted == pytest.approx(4 * p)
    assert causal.note.startswith("effect present ([1.39, 2.41] excludes 1), but short of the paper's 2.7 (paired "
                                  "bootstrap over 40 CE contexts); Holm across 4 claims: p ")
    assert "beyond the mean: not measured" in causal.note and "mean, ordinary: 1 [0.99, 1.01]" in causal.note
    assert redundancy.verdict == NOT_RUN and redundancy.ours == "-"
    assert topic.note.startswith("no effect shown ([0.82, 0.93] contains 0.9) and the paper's 0.2 lies outside it")
    assert "the paired difference against r random directions was not measured" in topic.note
    assert (probing.value, probing.low, probing.high) == (0.05, -0.02, 0.12) and "k=5" in probing.ours
    # at its Holm level (probing is in the family): half-width 0.07 x 2.2414 / 1.96 = 0.08; (0.08 / 0.05)^2 x 200
    assert "[-0.03005, 0.1301] contains 0: about 513 documents (now 200) would decide" in probing.note
    assert "the PCA-deflation SAEs were not probed" in probing.note


def reading(value, low, high, units=100) -> Reading:
    return Reading(value, low, high, units, "CE contexts", "test")


def test_two_questions_decide_only_outside_the_interval():
    rule = Rule(1.0, 2.7, below=False)
    assert decide(reading(3.0, 2.5, 3.5), rule).verdict == REPRODUCED                 # effect, reaches 2.7
    assert decide(reading(2.5, 2.0, 3.0), rule).verdict == REPRODUCED                 # effect, 2.7 inside
    smaller = decide(reading(1.5, 1.4, 1.6), rule)
    assert (smaller.verdict, smaller.note) == (SMALLER, "effect present ([1.4, 1.6] excludes 1), but short of the "
                                                        "paper's 2.7")
    assert decide(reading(0.8, 0.7, 0.9), rule).note == "the effect is reversed: [0.7, 0.9] lies on the other side of 1"
    none = decide(reading(1.1, 0.9, 1.3), rule)
    assert (none.verdict, none.note) == (NOT_REPRODUCED, "no effect shown ([0.9, 1.3] contains 1) and the paper's 2.7 "
                                                         "lies outside it")
    wide = decide(reading(1.9, 0.9, 2.9), rule)
    assert (wide.verdict, wide.note) == (UNDECIDED, "[0.9, 2.9] contains 1 and reaches the paper's 2.7: about 124 "
                                                    "CE contexts (now 100) would decide, if the estimate and its "
                                                    "spread stay")   # excluding 1 first: 100 x (1.0 / 0.9)^2 = 123.5
    few = decide(reading(3.0, 2.9, 3.1, units=4), rule)
    assert (few.verdict, few.note) == (UNDECIDED, "4 CE contexts, at least 30 needed")
    assert decide(reading(3.0, 2.5, 3.5), rule, p_adjusted=0.2).verdict == UNDECIDED  # Holm can take it away
    fewer = Rule(0.0, -0.84, below=True)
    assert decide(reading(-0.6, -0.7, -0.5), fewer).verdict == SMALLER                # the x-encoder's -60%
    assert decide(reading(-0.9, -1.0, -0.8), fewer).verdict == REPRODUCED


def topic_with(removed: Estimate, random: Estimate | None, pca: Estimate | None) -> dict:
    condition = "scaffold:zero:ordinary"
    differences = [TopicDifference("bbc_topic", condition, f"{name}:zero:ordinary", 9, e)
                   for name, e in (("random", random), ("pca", pca)) if e is not None]
    result = TopicResult("hybrid0", "baseline0", 8, 9, [
        TopicReadout("bbc_topic", "clean", 9, Estimate(0.9, 0.85, 0.95), 0.2),
        TopicReadout("bbc_topic", condition, 9, removed, 0.2)], {"bbc_topic": 140}, {"bbc_topic": 60}, 256,
        differences)
    return {"topic_ablation": result}


def test_the_topic_verdict_needs_the_scaffold_to_beat_both_controls():
    """The demo's case: the scaffold and r random directions both drop to 0.2, so the paired difference contains 0
    and the claim stays undecided; beating both is reproduced; a control dropping further is not reproduced."""
    plan = ClaimsPlan(seeds=1)

    def verdict(random, pca):
        primary = claims.topic_primary(topic_with(Estimate(0.2, 0.1, 0.3), random, pca), plan, 8)
        return claims.decide_family([primary], plan)[0]

    demo = verdict(Estimate(0.0, -0.1, 0.1), Estimate(-0.15, -0.25, -0.05))
    assert demo.verdict == UNDECIDED and "against r random directions: [-0.1, 0.1] contains 0" in demo.note
    assert "so the effect is not shown specific to it" in demo.note
    assert verdict(Estimate(-0.5, -0.6, -0.4), Estimate(-0.15, -0.25, -0.05)).verdict == REPRODUCED
    further = verdict(Estimate(0.1, 0.05, 0.15), Estimate(-0.15, -0.25, -0.05))
    assert further.verdict == NOT_REPRODUCED and "the effect is not specific to the scaffold" in further.note
    missing = verdict(None, Estimate(-0.15, -0.25, -0.05))
    assert missing.verdict == UNDECIDED and "against r random directions was not measured" in missing.note


def redundancy_with(zero_aligned: Estimate, mean_aligned: Estimate) -> dict:
    e = Estimate(1.0, 1.0, 1.0)
    curve = [CurvePoint(98, "zero", zero_aligned, e, e, e, paper_share=True),
             CurvePoint(98, "mean", mean_aligned, e, e, e, paper_share=True)]
    result = RedundancyResult("baseline0", "hybrid0", 8, 640, "rule", 0.1, 0.01, 98, [], [], {}, 10, 2, None, None,
                              curve=curve, scaffold_removed={"zero": Estimate(3.0, 2.9, 3.1),
                                                             "mean": Estimate(1.2, 1.15, 1.25)}, curve_contexts=200)
    return {"redundancy": result}


def test_redundancy_is_decided_only_where_zero_and_mean_ablation_agree():
    plan = ClaimsPlan(seeds=1)

    def verdict(zero, mean):
        return claims.decide_family([claims.redundancy_primary(redundancy_with(zero, mean), plan)], plan)[0]

    reversed_under_mean = verdict(Estimate(1.6, 1.55, 1.65), Estimate(1.35, 1.3, 1.4))      # as H20 on Gemma-3
    assert reversed_under_mean.verdict == DEPENDS
    assert reversed_under_mean.note.startswith("zero: effect present but smaller than the paper's")
    assert "mean: not reproduced (the effect is reversed" in reversed_under_mean.note
    assert verdict(Estimate(1.1, 1.05, 1.15), Estimate(0.45, 0.42, 0.48)).verdict == REPRODUCED
    assert verdict(Estimate(1.6, 1.55, 1.65), Estimate(1.0, 0.9, 1.1)).verdict == SMALLER


def structure_of(mean_cos2: float, name: str) -> StructureResult:
    return StructureResult([ScaffoldStructure(
        sae=name, rank=8, n_tokens=4096, principal_angles_deg=[2.0, 80.0], mean_cos2=mean_cos2,
        variance_share_scaffold=0.5, variance_share_pca=0.6, scaffold_explained_variance=0.5, outlier_rule="rule",
        outlier_dims=[], outlier_mean_abs=[], median_mean_abs=0.5, outlier_dim_in_scaffold=[],
        outlier_energy_scaffold_centred=None, outlier_energy_scaffold_uncentred=None,
        outlier_energy_pca_centred=None, outlier_energy_pca_uncentred=None)])


def with_seeds(study: dict, more: list[AnalysisResults]) -> dict:
    return json.loads(json.dumps({**study, "seed_analyses": {str(i + 1): a.to_json() for i, a in enumerate(more)}}))


def test_claims_over_analysed_seeds_use_one_interval_over_seeds_and_contexts(tmp_path):
    """Three analysed seeds under a random scaffold init: structure (no interval within a seed) is decided by the
    t-interval over seeds (effect above r/d, short of 0.5); the causal ratio combines the seeds' spread with the shared
    contexts' spread; a seed without a claim's analysis leaves that claim undecided and names the seed."""
    base = known_study()
    base["config"]["scaffold_init"] = "random"
    typed = AnalysisResults.from_json(base["analyses"])
    base["analyses"] = AnalysisResults(4096, {**typed.results, "structure": structure_of(0.30, "hybrid0")}).to_json()
    more = []
    for seed, cos2, ratio in ((1, 0.32, Estimate(1.8, 1.7, 1.9)), (2, 0.28, Estimate(1.85, 1.75, 1.95))):
        table = dataclasses.replace(typed["ablation_table"], comparisons=[dataclasses.replace(
            typed["ablation_table"].comparisons[0], ce_ratio=ratio, reaches_2="no")])
        more.append(AnalysisResults(4096, {"structure": structure_of(cos2, f"hybrid{seed}"), "ablation_table": table}))
    rows = claims.claim_rows(with_seeds(base, more))
    structure, causal, topic = rows[1], rows[2], rows[4]
    half = 4.302652729749462 * 0.02 / 3 ** 0.5                                  # sd of 0.30, 0.32, 0.28 is 0.02
    assert structure.verdict == SMALLER and structure.value == pytest.approx(0.30)
    assert (structure.low, structure.high) == (pytest.approx(0.30 - half), pytest.approx(0.30 + half))
    assert structure.ours.startswith("0.3 ± 0.02 over 3 seeds (95% t-interval [0.2503, 0.3497]; per seed 0.3, "
                                     "0.32, 0.28); seed 0: r=8")
    assert causal.value == pytest.approx((1.9 + 1.8 + 1.85) / 3) and causal.units == 120
    se_seeds, se_contexts = 0.05 / 3 ** 0.5, [0.4 / 1.959963984540054, 0.1 / 1.959963984540054]
    within = (se_contexts[0] ** 2 + 2 * se_contexts[1] ** 2) / 3
    assert causal.high - causal.value > 1.96 * math.sqrt(se_seeds ** 2 + within)
    assert topic.verdict == UNDECIDED and "seed 1: the fixed-probe topic analysis did not run" in topic.note
    assert (rows[3].verdict, rows[3].note) == (NOT_RUN, "the redundancy analysis did not run")      # in no seed
    assert "The analyses ran on 3 seeds" in study_report.write_report(with_seeds(base, more), tmp_path).markdown.read_text()


H17 = [(1.421, 1.401, 1.440), (1.492, 1.475, 1.509), (2.063, 2.039, 2.088), (1.530, 1.512, 1.550),
       (1.628, 1.609, 1.648), (1.470, 1.452, 1.488), (1.440, 1.422, 1.457)]
"""H17: the centred r = 24 scaffold zeroed at all positions over the top-24 PCs, 200 CE contexts, seeds 0-6."""


def h17_study() -> dict:
    e = Estimate(1.0, 1.0, 1.0)
    seeds = []
    for value, low, high in H17:
        ratio = Estimate(value, low, high)
        seeds.append(AnalysisResults(40960, {"ablation_table": AblationTableResult(
            sae="hybrid", rank=24, scaffold_centred=True, n_contexts=200, n_predictions=25200, n_fit_contexts=120,
            n_fit_tokens=15000, n_fit_special=120, ce_clean=e, cells=[],
            comparisons=[Comparison("scaffold:zero", "pca:zero", "all", False, "oblique", ratio, ratio, "no")],
            bootstrap_samples=2000, forwards=1, wall_s=1.0)}).to_json())
    return {"config": {"seeds": 7}, "saes": {}, "analyses": seeds[0],
            "seed_analyses": {str(i): a for i, a in enumerate(seeds) if i}}


def test_h17_is_decided_and_seeds_added_after_a_look_form_a_replication():
    """The old rule (every seed's own interval on one side) left H17 undecided however many seeds ran. Under the
    plan's 3 seeds the primary verdict uses seeds 0-2 only; seeds 3-6 form a replication row of their own."""
    plan = ClaimsPlan(seeds=3, causal_positions="all")
    rows = [r for r in claims.claim_rows(h17_study(), plan) if r.key == "causal"]
    primary, replication = rows
    assert primary.row == "primary" and primary.value == pytest.approx((1.421 + 1.492 + 2.063) / 3)
    assert primary.verdict == NOT_REPRODUCED and "the paper's 2.7 lies outside it" in primary.note
    assert replication.row == "replication" and replication.claim.endswith("replication on seeds 3, 4, 5, 6")
    assert replication.value == pytest.approx((1.530 + 1.628 + 1.470 + 1.440) / 4)
    assert replication.verdict == SMALLER and "never merged into the primary verdict" in replication.note
    (all_seven,) = [r for r in claims.claim_rows(h17_study(), ClaimsPlan(seeds=7, causal_positions="all"))
                    if r.key == "causal"]
    assert all_seven.verdict == SMALLER                                  # more seeds decide: no rule that never can


def test_a_plan_reading_that_was_not_measured_leaves_the_claim_undecided():
    rows = claims.claim_rows(h17_study(), ClaimsPlan(seeds=3))           # the plan says ordinary positions
    assert rows[2].verdict == UNDECIDED
    assert rows[2].note.startswith("the plan's reading (scaffold:zero vs pca:zero at ordinary positions) was not "
                                   "measured; measured: scaffold:zero vs pca:zero (all)")


def test_the_causal_row_says_whether_the_scaffold_matters_beyond_the_mean():
    study = known_study()
    typed = AnalysisResults.from_json(study["analyses"])
    table = typed["ablation_table"]
    extra = Estimate(1.4, 1.3, 1.5)
    table.comparisons.append(Comparison("scaffold:zero", "pca_mean:zero", "ordinary", False, "oblique", extra, extra,
                                        "no"))
    table.cells += [cell("pca_mean", "zero", Estimate(2.7, 2.6, 2.8)), cell("mean", "zero", Estimate(1.5, 1.4, 1.6))]
    study["analyses"] = AnalysisResults(4096, typed.results).to_json()
    causal = claims.claim_rows(json.loads(json.dumps(study)))[2]
    assert ("beyond the mean: scaffold over span[top-r PCs, mean] 1.4 [1.3, 1.5] (the scaffold matters beyond "
            "removing the mean and the top PCs); the mean direction alone 1.5 [1.4, 1.6] x clean CE") in causal.note


def test_probing_credit_names_which_of_the_hybrid_and_the_pca_deflation_sae_beats_which():
    study = known_study()
    study["saes"]["deflation0"] = {**member("pca_deflation", 0, 8, 3), "for_rank": 8}
    typed = AnalysisResults.from_json(study["analyses"])
    typed["probing"].paired.append(PairedDifference("mean", "hybrid0", "deflation0", 8, 5,
                                                    Estimate(-0.04, -0.07, -0.01), None, [], "worse"))
    study["analyses"] = AnalysisResults(4096, typed.results).to_json()
    probing = claims.claim_rows(json.loads(json.dumps(study)))[5]
    assert "hybrid minus pca_deflation, paired: -0.04 [-0.07, -0.01] (pca_deflation probes better)" in probing.note


def test_the_plan_is_stored_first_and_a_change_after_training_is_reported(tmp_path):
    plan = ClaimsPlan()
    assert plan_status(tmp_path, plan).startswith("no plan was stored before training")
    write_plan(tmp_path, plan)
    assert json.loads((tmp_path / "plan.json").read_text())["causal_paper"] == 2.7
    assert plan_status(tmp_path, plan) == "as planned: the plan stored before training began decides every claim"
    changed = dataclasses.replace(plan, seeds=7)
    write_plan(tmp_path, changed)                                        # the first plan stays
    assert json.loads((tmp_path / "plan.json").read_text())["seeds"] == 3
    assert plan_status(tmp_path, changed) == ("the plan changed after training began (seeds: 3 -> 7): the claims "
                                              "are decided under the stored plan")
    study = {**h17_study(), "plan": plan.to_json(), "plan_status": plan_status(tmp_path, changed)}
    md = study_report.write_report(study, tmp_path / "report").markdown.read_text()
    assert "Plan: the plan changed after training began (seeds: 3 -> 7)" in md
    with pytest.raises(ConfigError, match="claims.causal_operator='ablate' is invalid: use one of zero, mean, "
                                          "resample"):
        ClaimsPlan(causal_operator="ablate")
    with pytest.raises(ConfigError, match="claims.family='dense,speed' names 'speed'"):
        ClaimsPlan(family="dense,speed")


def test_a_declared_plan_with_fewer_analysed_seeds_is_undecided():
    study = {**known_study(), "plan": ClaimsPlan(seeds=3).to_json()}
    rows = claims.claim_rows(json.loads(json.dumps(study)))
    assert rows[2].verdict == UNDECIDED and rows[2].note.startswith("1 seed(s) analysed, the plan declares 3: ")
    assert rows[0].verdict == REPRODUCED                                 # dense: 3 trained seeds


def test_the_report_opens_with_the_summary_ends_with_the_configuration_and_exports_it(tmp_path):
    paths = study_report.write_report(known_study(), tmp_path)
    md = paths.markdown.read_text()
    titles = [line[3:] for line in md.splitlines() if line.startswith("## ")]
    assert titles[0] == "Summary: the paper's claims" and titles[-1] == "Configuration"
    assert "| redundancy: ablating the plain SAE's scaffold-aligned latents costs less CE than removing the " \
           "scaffold | - | - | not run | - | the redundancy analysis did not run |" in md
    summary = json.loads(paths.json.read_text())["summary"]
    assert [row["verdict"] for row in summary] == [REPRODUCED, NOT_TESTED, SMALLER, NOT_RUN, NOT_REPRODUCED,
                                                   UNDECIDED]
    assert {"p", "p_adjusted", "low_adjusted", "high_adjusted", "null", "paper", "units", "row"} <= set(summary[2])
    again = study_report.write_report(study_report.load_results(paths.json), tmp_path / "again")
    assert again.json.read_text() == paths.json.read_text() and again.markdown.read_text() == md


def breadth_study(deflation_gap: float) -> dict:
    """A study that probed 40 sae_probes tasks only: the hybrid r=8 beats the plain SAE by 0.02-0.08 per task; the
    PCA-deflation SAE (a control) trails the hybrid by `deflation_gap`, plus or minus 0.01 by task."""
    tasks = [f"sae_probes:{i}_task" for i in range(40)]
    gains = [0.02 + 0.06 * (i % 7) / 6 for i in range(40)]

    def score(task, sae, rank, acc):
        return SparseProbeScore(task, sae, rank, 5, Estimate(acc, acc - 0.05, acc + 0.05), 0.02, [acc])

    def paired(task, sae, base, diff):
        e = Estimate(diff, diff - 0.03, diff + 0.03)
        return PairedDifference(task, sae, base, 8, 5, e, 0.01, [e], e.verdict(0.0))

    sparse, pairs = [], []
    for i, (task, gain) in enumerate(zip(tasks, gains)):
        gap = deflation_gap + 0.01 * (-1) ** i
        sparse += [score(task, "plain", 0, 0.7), score(task, "hybrid", 8, 0.7 + gain),
                   score(task, "deflation", 8, 0.7 + gain - gap)]
        pairs += [paired(task, "hybrid", "plain", gain), paired(task, "deflation", "plain", gain - gap),
                  paired(task, "deflation", "hybrid", -gap)]
    probing = ProbingResult({t: DatasetInfo(["0", "1"], 200, 30.0, 1, 60) for t in tasks}, {}, sparse, pairs, [],
                            [], ProbeConfig(), controls={"deflation": "hybrid"})
    return {"title": "breadth", "config": {}, "saes": {}, "plan": ClaimsPlan(seeds=1).to_json(),
            "analyses": AnalysisResults(4096, {"probing": probing}).to_json()}


def test_probing_over_a_source_s_tasks_is_decided_over_tasks_and_gated_by_pca_deflation():
    """Probed only on sae_probes tasks, the probing claim reads the mean over tasks with its interval over tasks (40
    units), not one pooled mean over documents; the PCA-deflation SAE gates it the same way."""
    from scaffold_sae.probing_sources import mean_interval

    gains = [0.02 + 0.06 * (i % 7) / 6 for i in range(40)]
    probing = claims.claim_rows(json.loads(json.dumps(breadth_study(0.03))))[5]
    mean, low, high = mean_interval(gains)
    assert (probing.value, probing.low, probing.high) == pytest.approx((mean, low, high)) and probing.units == 40
    assert probing.verdict == REPRODUCED and "beats the PCA-deflation SAE" in probing.note
    assert "bootstrap over 40 sae_probes tasks" in probing.note and "(28 tasks better, 0 worse" in probing.ours
    same = claims.claim_rows(json.loads(json.dumps(breadth_study(0.0))))[5]
    assert same.verdict == UNDECIDED and "against the PCA-deflation SAE: " in same.note
    assert "[-0.003, 0.003] mean over tasks; pca_deflation minus plain" in same.note


def test_a_summary_keeps_of_a_source_s_tasks_what_the_breadth_claim_reads():
    """summary.slim_results cuts a probing source's tasks to the primary k (no raw-residual rows, no per-task L0),
    keeps a built-in dataset whole, and the probing claim reads the same from the cut result."""
    from scaffold_sae.summary import PRIMARY_K, dumps, slim_results

    study = breadth_study(0.03)
    probing = study["analyses"]["probing"]
    extra = [{**s, "k": 1} for s in probing["sparse"]] + [{**probing["sparse"][0], "features": "residual"}]
    builtin = {**probing["sparse"][0], "dataset": "bbc_topic", "k": 1}
    probing["sparse"] += extra + [builtin]
    probing["l0"] = {"sae_probes:0_task": {"plain": 5.0}, "bbc_topic": {"plain": 5.0}}
    slimmed = json.loads(dumps(slim_results(study)))["analyses"]["probing"]
    assert [(s["dataset"], s["k"]) for s in slimmed["sparse"] if s["dataset"] == "bbc_topic"] == [("bbc_topic", 1)]
    assert list(slimmed["l0"]) == ["bbc_topic"]
    tasks = [s for s in slimmed["sparse"] if s["dataset"].startswith("sae_probes:")]
    assert len(tasks) == 120 and all(s["k"] == PRIMARY_K and s["features"] != "residual" for s in tasks)
    before = claims.claim_rows(json.loads(json.dumps(study)))[5]
    after = claims.claim_rows(json.loads(dumps(slim_results(study))))[5]
    assert (after.ours, after.verdict, after.value) == (before.ours, before.verdict, before.value)
