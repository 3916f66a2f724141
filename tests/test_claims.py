"""The report's opening summary: one row per claim of the paper, verdicts only where an interval decides."""

from __future__ import annotations

import dataclasses
import json

import pytest

from scaffold_sae import claims, study_report
from scaffold_sae.analyses import AnalysisResults
from scaffold_sae.analyses.ablation_table import AblationTableResult, Cell, Comparison
from scaffold_sae.analyses.probing import (DatasetInfo, PairedDifference, ProbeConfig, ProbingResult,
                                           SparseProbeScore)
from scaffold_sae.analyses.structure import ScaffoldStructure, StructureResult
from scaffold_sae.analyses.topic_ablation import TopicReadout, TopicResult
from scaffold_sae.stats import Estimate


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
    return {"title": "claims", "config": {"analysis_rank": None}, "saes": saes, "analyses": analyses.to_json()}


def test_known_numbers_give_the_expected_rows_and_verdicts():
    rows = claims.claim_rows(json.loads(json.dumps(known_study())))
    assert [r.verdict for r in rows] == ["reproduced", "undecided", "undecided", "not run", "not reproduced",
                                         "undecided"]
    dense, structure, causal, redundancy, topic, probing = rows
    half = 4.302652729749462 / 3 ** 0.5                                    # t(0.975, 2 df) x sd 1 / sqrt(3 seeds)
    assert (dense.value, dense.low, dense.high) == (-51.0, pytest.approx(-51 - half), pytest.approx(-51 + half))
    assert dense.ours == ("hybrid 1: difference -51 [-53.48, -48.52], -98% (95% t-interval over 3 seeds)")
    assert dense.claim == "dense latents removed by the scaffold (hybrid r=8 vs plain SAE)"
    assert structure.value == 0.995 and structure.note.startswith("no interval")
    assert causal == claims.ClaimRow(
        "causal necessity: scaffold removal costs >= 2x the CE of removing the top-r PCs",
        "CE ratio 1.9 [1.5, 2.3] (r=8, zero: scaffold 3.8 [3.5, 4.1] vs top PCs 2 [1.9, 2.1] x clean CE; "
        "40 contexts)",
        "top-8 PCs removed by the same operator; threshold 2 (paper: 7.5 / 2.8 = 2.7)", "undecided",
        "the interval straddles 2: about 640 CE contexts (now 40) would decide, if the estimate stays where it is; "
        "other operators reach 2: mean: no", 1.9, 1.5, 2.3, threshold=2.0)
    assert redundancy.verdict == "not run" and redundancy.ours == "-"
    assert (topic.value, topic.low, topic.high) == (0.88, 0.82, 0.93)
    assert "decided against halfway 0.55" in topic.against and "topic survives" in topic.note
    assert (probing.value, probing.low, probing.high) == (0.05, -0.02, 0.12) and "k=5" in probing.ours
    assert "documents (now 200) would decide" in probing.note


def test_the_rules_decide_only_outside_the_interval():
    assert claims.side_of(1.0, 1.9, 2.0, claim_below=True) == "reproduced"
    assert claims.side_of(2.0, 3.0, 2.0, claim_below=False) == "reproduced"
    assert claims.side_of(1.5, 2.5, 2.0, claim_below=False) == "undecided"
    assert claims.side_of(2.1, 2.5, 2.0, claim_below=True) == "not reproduced"
    assert claims.sample_to_decide(1.9, 1.5, 2.3, 2.0, 40) == 640          # (0.4 / 0.1)^2 x 40
    assert claims.sample_to_decide(2.0, 1.5, 2.5, 2.0, 40) is None
    straddling = {f"{kind}{seed}": member(kind, seed, rank, dense) for kind, rank, counts in
                  (("baseline", 0, (5, 6, 4)), ("hybrid", 8, (4, 6, 1))) for seed, dense in enumerate(counts)}
    row = claims.dense_row(straddling, 8)                                # differences -1, 0, -3: mean -4/3, sd 1.53
    assert row.verdict == "undecided" and row.low < 0 < row.high
    assert row.note.startswith("the interval straddles 0: about ") and "seeds (now 3)" in row.note


def test_the_report_opens_with_the_summary_ends_with_the_configuration_and_exports_it(tmp_path):
    paths = study_report.write_report(known_study(), tmp_path)
    md = paths.markdown.read_text()
    titles = [line[3:] for line in md.splitlines() if line.startswith("## ")]
    assert titles[0] == "Summary: the paper's claims" and titles[-1] == "Configuration"
    assert "| redundancy: ablating the plain SAE's scaffold-aligned latents costs less CE than removing the " \
           "scaffold | - | - | not run | the redundancy analysis did not run |" in md
    summary = json.loads(paths.json.read_text())["summary"]
    assert [row["verdict"] for row in summary] == ["reproduced", "undecided", "undecided", "not run",
                                                   "not reproduced", "undecided"]
    assert set(summary[0]) == {"claim", "ours", "against", "verdict", "note", "value", "low", "high", "threshold",
                               "claim_below"}
    again = study_report.write_report(study_report.load_results(paths.json), tmp_path / "again")
    assert again.json.read_text() == paths.json.read_text() and again.markdown.read_text() == md


def test_the_topic_claim_names_its_random_control():
    """A drop to chance that r random directions removed the same way also produce is reproduced but flagged as not
    specific to the scaffold; a control that keeps the topic is named without the flag."""
    def topic(control: Estimate) -> TopicResult:
        return TopicResult("hybrid0", "baseline0", 8, 9, [
            TopicReadout("bbc_topic", "clean", 9, Estimate(0.9, 0.85, 0.95), 0.2),
            TopicReadout("bbc_topic", "scaffold:zero:ordinary", 9, Estimate(0.2, 0.1, 0.3), 0.2),
            TopicReadout("bbc_topic", "random:zero:ordinary", 9, control, 0.2)],
            {"bbc_topic": 140}, {"bbc_topic": 60}, 256)

    same = claims.topic_row(topic(Estimate(0.21, 0.12, 0.3)), None, 8)
    assert same.verdict == "reproduced" and same.note.endswith(
        "control: r random directions removed the same way give 0.21 [0.12, 0.3], so the drop is not specific to "
        "the scaffold")
    kept = claims.topic_row(topic(Estimate(0.85, 0.8, 0.9)), None, 8)
    assert kept.verdict == "reproduced" and kept.note.endswith("give 0.85 [0.8, 0.9]")


def test_the_topic_claim_names_the_paired_difference_from_the_top_pcs():
    from scaffold_sae.analyses.topic_ablation import TopicDifference

    result = TopicResult("hybrid0", "baseline0", 8, 9, [
        TopicReadout("bbc_topic", "clean", 9, Estimate(0.9, 0.85, 0.95), 0.2),
        TopicReadout("bbc_topic", "scaffold:zero:ordinary", 9, Estimate(0.2, 0.1, 0.3), 0.2)],
        {"bbc_topic": 140}, {"bbc_topic": 60}, 256,
        [TopicDifference("bbc_topic", "scaffold:zero:ordinary", "pca:zero:ordinary", 9, Estimate(-0.1, -0.2, -0.02)),
         TopicDifference("bbc_topic", "scaffold:zero:ordinary", "pca:zero:ordinary", 12, Estimate(0.1, -0.1, 0.3))])
    row = claims.topic_row(result, None, 8)
    assert row.note.endswith("scaffold minus the top-r PCs removed the same way, paired: -0.1 [-0.2, -0.02] (the "
                             "scaffold leaves less topic)")
    result.differences[0].difference = Estimate(0.05, -0.05, 0.15)
    assert claims.topic_row(result, None, 8).note.endswith("(undecided)")


def structure_of(mean_cos2: float, name: str) -> StructureResult:
    return StructureResult([ScaffoldStructure(
        sae=name, rank=8, n_tokens=4096, principal_angles_deg=[2.0, 80.0], mean_cos2=mean_cos2,
        variance_share_scaffold=0.5, variance_share_pca=0.6, scaffold_explained_variance=0.5, outlier_rule="rule",
        outlier_dims=[], outlier_mean_abs=[], median_mean_abs=0.5, outlier_dim_in_scaffold=[],
        outlier_energy_scaffold_centred=None, outlier_energy_scaffold_uncentred=None,
        outlier_energy_pca_centred=None, outlier_energy_pca_uncentred=None)])


def with_seeds(study: dict, more: list[AnalysisResults]) -> dict:
    return json.loads(json.dumps({**study, "seed_analyses": {str(i + 1): a.to_json() for i, a in enumerate(more)}}))


def test_claims_over_analysed_seeds_use_a_t_interval_that_every_seed_agrees_with(tmp_path):
    """Three analysed seeds: structure (no interval within a seed) is decided by the t-interval of mean cos^2 over
    seeds against 0.5; the causal ratio's t-interval lies below 2 but seed 0's own interval straddles 2, so it stays
    undecided; a seed without a claim's analysis leaves that row at seed 0's."""
    base = known_study()
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
    assert structure.verdict == "not reproduced" and structure.value == pytest.approx(0.30)
    assert (structure.low, structure.high) == (pytest.approx(0.30 - half), pytest.approx(0.30 + half))
    assert structure.ours.startswith("0.3 ± 0.02 over 3 seeds (95% t-interval [0.2503, 0.3497]; per seed 0.3, "
                                     "0.32, 0.28); seed 0: r=8")
    assert structure.note.startswith("the t-interval over 3 seeds lies below 0.5; seed 0: no interval")
    assert causal.verdict == "undecided" and causal.value == pytest.approx((1.9 + 1.8 + 1.85) / 3)
    assert causal.note.startswith("the t-interval over 3 seeds lies below 2, but not every seed's own interval does "
                                  "(seed 0: undecided, seed 1: not reproduced, seed 2: not reproduced)")
    assert topic.verdict == "not reproduced" and topic.ours.startswith("fixed probe") and "seeds [1, 2]" in topic.note
    assert (rows[3].verdict, rows[3].note) == ("not run", "the redundancy analysis did not run")      # in no seed
    assert "The analyses ran on 3 seeds" in study_report.write_report(with_seeds(base, more), tmp_path).markdown.read_text()


def test_over_seeds_names_the_seeds_that_would_decide():
    rows = [claims.ClaimRow("c", "o", "a", "undecided", "n", v, None, None, threshold=0.5) for v in (0.4, 0.6, 0.55)]
    row = claims.over_seeds(rows)
    assert row.verdict == "undecided" and row.threshold == 0.5
    assert row.note.startswith("the interval straddles 0.5: about ") and "seeds (now 3)" in row.note
