"""The study end to end: harvest -> lockstep training -> matched-L0 evaluation -> report, and its reuse."""

import json
import subprocess
import sys
from dataclasses import dataclass

import pytest

from scaffold_sae import analyses
from scaffold_sae.config import build
from scaffold_sae.report import Section, Table
from scaffold_sae.study_report import load_results, write_report
from scaffold_sae.sae import ConfigError
from scaffold_sae.study import StudyConfig, run_study, threshold_section


def tiny_study(model_dir, corpus) -> StudyConfig:
    return build(StudyConfig, {"harvest": dict(model=str(model_dir), layer=1, corpus=str(corpus), ctx_len=32,
                                               train_tokens=4096, eval_tokens=1024, ce_tokens=256, batch_size=8),
                               "sae": dict(width=64, k=4, ranks=[0, 2, 4]), "train": dict(tokens=40 * 256,
                                                                                          batch_size=256)})


def test_study_end_to_end_and_rerun_reuses_everything(tmp_path, tiny_model_dir, tiny_corpus):
    cfg = tiny_study(tiny_model_dir, tiny_corpus)
    study = run_study(cfg, tmp_path, progress=False)
    assert sorted(ev["rank"] for ev in study["saes"].values()) == [0, 2, 4]
    for ev in study["saes"].values():
        assert ev["inference"] == "batchtopk" and ev["l0"] == pytest.approx(4.0, rel=0.02)
        assert 0 <= ev["fvu"] < 1.5 and ev["n_predictions"] == 8 * 30
    paths = write_report(study, tmp_path / "report", sections=[threshold_section(study)])
    saved = json.loads(paths.json.read_text())
    assert saved["config"]["sae"]["ranks"] == [0, 2, 4] and "Inference threshold" in paths.markdown.read_text()

    saes_mtime = {p: p.stat().st_mtime for p in (tmp_path / "saes").rglob("*.safetensors")}
    again = run_study(cfg, tmp_path, progress=False)
    assert again["saes"] == study["saes"]
    assert {p: p.stat().st_mtime for p in (tmp_path / "saes").rglob("*.safetensors")} == saes_mtime


def test_study_cli_rejects_bad_ranks(tmp_path):
    result = subprocess.run([sys.executable, "-m", "scaffold_sae", "study", "--ranks", "4,8", "--out", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "include 0" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@dataclass
class ToyConfig:
    """A toy analysis, registered by a test only."""

    toy_scale: float = 2.0
    """Multiplier of the mean activation norm."""


@dataclass
class ToyResult:
    scaled_norm: float
    """toy_scale x the mean norm of the held-out activation rows."""
    widths: dict[str, int]
    """Sparse latents per SAE."""


def toy_run(context: analyses.AnalysisContext, config: ToyConfig) -> ToyResult:
    return ToyResult(config.toy_scale * float(context.activations.norm(dim=1).mean()),
                     {name: int(sae.cfg.width) for name, sae in context.saes.items()})


def toy_sections(result: ToyResult) -> list[Section]:
    return [Section("Toy analysis", "The mean activation norm, scaled.",
                    tables=[Table(["scaled norm", *result.widths], [[result.scaled_norm, *result.widths.values()]])])]


@pytest.fixture(scope="module")
def toy_study(tmp_path_factory, tiny_model_dir, tiny_corpus):
    """The tiny study with the toy analysis registered after the built-in ones."""
    analyses.register("toy", ToyConfig, ToyResult, toy_run, toy_sections)
    try:
        out = tmp_path_factory.mktemp("toy-study")
        yield run_study(tiny_study(tiny_model_dir, tiny_corpus), out, progress=False), out
    finally:
        analyses.unregister("toy")


def test_a_registered_analysis_runs_in_the_study_and_reaches_the_report(toy_study):
    study, out = toy_study
    assert list(study["analyses"])[:10] == ["version", "n_tokens", "structure", "causality", "ablation_table",
                                            "redundancy", "probing", "topic_ablation", "rank_selection", "toy"]
    assert study["analyses"]["toy"]["widths"] == {name: 64 for name in study["saes"]}
    assert study["analyses"]["timings"]["toy_s"] >= 0 and study["analyses"]["settings"]["toy_scale"] == 2.0
    paths = write_report(study, out / "report")
    md = paths.markdown.read_text()
    titles = [line[3:] for line in md.splitlines() if line.startswith("## ")]
    assert titles.index("Scaffold structure") < titles.index("Choosing the rank") < titles.index("Toy analysis")
    assert "Analysis settings and cost" in titles
    redrawn = write_report(load_results(paths.json), out / "redrawn")      # drawn again from the typed results
    assert redrawn.markdown.read_text() == md and redrawn.html.read_text() == paths.html.read_text()


def test_every_registered_result_round_trips_through_json(toy_study):
    study, _ = toy_study
    typed = analyses.AnalysisResults.from_json(json.loads(json.dumps(study["analyses"])))
    assert typed.to_json() == study["analyses"]
    for name, analysis in analyses.registered().items():
        result = typed[name]
        assert type(result) is analysis.result_cls, name
        assert analysis.from_json(json.loads(json.dumps(analyses.to_json(result)))) == result, name
    assert typed["causality"].ratio("scaffold:remove") > 0                  # methods work on rebuilt results


@pytest.mark.slow
def test_reduced_demo_on_the_embedded_model(tmp_path):
    """The demo's pipeline on real Gemma-3-270M, reduced in size so it runs in CI."""
    result = subprocess.run(
        [sys.executable, "-m", "scaffold_sae", "demo", "--out", str(tmp_path), "--no-progress",
         "--train-tokens", "8192", "--eval-tokens", "1024", "--ce-tokens", "256", "--width", "512", "--k", "16",
         "--ranks", "0,8", "--steps-tokens", str(30 * 1024), "--batch-size", "1024", "--topic-docs", "20",
         "--ablation-random-bases", "1", "--probe-docs", "20"],
        capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "report:" in result.stdout
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results["config"]["harvest"]["model"] == "gemma3-270m" and results["config"]["harvest"]["layer"] == 9
    html = (tmp_path / "report" / "report.html").read_text()
    assert "<img" in html and "http://" not in html and "https://" not in html


def test_study_config_values_are_typed_like_flags(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text("sae:\n  width: abc\n")
    result = subprocess.run([sys.executable, "-m", "scaffold_sae", "study", "--config", str(config),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: sae.width='abc' in {config} is invalid: expected int"
    result = subprocess.run([sys.executable, "-m", "scaffold_sae", "study", "--scaffold-tied", "maybe",
                             "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2 and "sae.scaffold_tied='maybe' is invalid: expected bool" in result.stderr
    assert not (tmp_path / "out").exists()


def test_zero_bootstrap_samples_fail_at_once_with_the_fix():
    """Without this check the study harvested, trained and evaluated, then failed inside the first bootstrap."""
    from scaffold_sae.sae import ConfigError
    from scaffold_sae.study import StudyConfig

    with pytest.raises(ConfigError, match="analyses.bootstrap_samples=0 is invalid"):
        build(StudyConfig, {"analyses.bootstrap_samples": 0}).validate()


def test_ce_tokens_must_leave_eval_contexts_for_the_mean_ablation_mean():
    from scaffold_sae.sae import ConfigError
    from scaffold_sae.study import StudyConfig

    with pytest.raises(ConfigError, match="harvest.ce_tokens=1024 is invalid: must leave at least one eval context"):
        build(StudyConfig, {"harvest": {"eval_tokens": 1024, "ce_tokens": 1024}}).validate()
    build(StudyConfig, {"harvest": {"eval_tokens": 1152, "ce_tokens": 1024}}).validate()


def test_eval_records_from_the_in_sample_mean_rule_are_recomputed(tmp_path):
    import json

    from scaffold_sae import study

    old, new, torn = tmp_path / "old.json", tmp_path / "new.json", tmp_path / "torn.json"
    old.write_text(json.dumps({"rank": 0}))
    new.write_text(json.dumps({"rank": 0, "mean_fit": study.MEAN_FIT}))
    torn.write_text('{"rank": 0, "mean_')
    assert [study._current_eval(p) for p in (old, new, torn, tmp_path / "missing.json")] == [False, True, False, False]


def test_a_study_stopped_while_saving_resumes_its_whole_lockstep_run(tmp_path, monkeypatch):
    """Killed between two saves of the final step: some SAEs are saved and the checkpoint is kept. The rerun trains
    every SAE from that checkpoint (a subset would not match its configuration key), not only the missing ones."""
    from types import SimpleNamespace

    from scaffold_sae import study
    from scaffold_sae.study import StudyConfig, train_missing

    cfg = build(StudyConfig, {"sae": {"ranks": [0, 4], "width": 32, "k": 4}})
    calls = []
    monkeypatch.setattr(study, "train_saes", lambda cache, cfgs, train, out: calls.append([c.rank for c in cfgs]))
    out = tmp_path / "saes"
    (out / "batchtopk_m32_k4_r0_resin").mkdir(parents=True)
    (out / "batchtopk_m32_k4_r0_resin" / "scaffold_sae.json").write_text("{}")
    train_missing(SimpleNamespace(d_model=16), cfg, out, progress=False)
    (out / "checkpoint.pt").write_bytes(b"x")
    train_missing(SimpleNamespace(d_model=16), cfg, out, progress=False)
    assert calls == [[4], [0, 4]]


def test_train_missing_can_train_one_seed_alone(tmp_path, monkeypatch):
    """seeds={1}: only seed 1's SAEs are trained (an experiment adds a seed next to saved ones) and only theirs are
    returned; seed 0's are neither trained nor returned."""
    from types import SimpleNamespace

    from scaffold_sae import study
    from scaffold_sae.study import StudyConfig, train_missing

    cfg = build(StudyConfig, {"sae": {"ranks": [0, 4], "width": 32, "k": 4, "seeds": 2}})
    calls = []
    monkeypatch.setattr(study, "train_saes", lambda cache, cfgs, train, out: calls.append([(c.rank, c.seed)
                                                                                          for c in cfgs]))
    out = tmp_path / "saes"
    dirs = train_missing(SimpleNamespace(d_model=16), cfg, out, progress=False, seeds={1})
    assert calls == [[(0, 1), (4, 1)]]
    assert sorted(dirs) == ["batchtopk_m32_k4_r0_resin_s1", "batchtopk_m32_k4_r4_resin_s1"]


def test_study_can_train_an_uncentred_scaffold():
    from scaffold_sae.sae import SAEConfig
    from scaffold_sae.trainer import sae_names

    cfgs = build(StudyConfig, {"sae": {"ranks": [0, 8], "scaffold_centred": False}}).sae_configs()
    assert [c.scaffold_centred for c in cfgs] == [False, False]
    names = sae_names([SAEConfig(d_in=16, width=32, rank=r, scaffold_centred=c, encoder_input="x")
                       for r, c in ((0, False), (2, True), (2, False))])
    assert names[0].endswith("_r0") and names[1].endswith("_r2") and names[2].endswith("_r2_uncentred")

def test_seeds_and_baselines_train_in_one_pass_with_roles(tmp_path, tiny_model_dir, tiny_corpus):
    """Two seeds of the plain SAE, the hybrids and every extra baseline in one lockstep run; results carry each
    SAE's role and seed, the report gives mean +- sd and states the dense claim against each baseline, and the
    analyses use seed 0's plain SAE and hybrids only."""
    from scaffold_sae.saving import load_sae

    cfg = build(StudyConfig, {"sae": {"ranks": [0, 2], "seeds": 2,
                                      "baselines": "pca_deflation,capacity_matched,other_encoder"},
                              "analyses.probing.probe_docs": 0}, base=tiny_study(tiny_model_dir, tiny_corpus))
    study = run_study(cfg, tmp_path, progress=False)
    kinds = {(ev["kind"], ev["seed"], ev["for_rank"]) for ev in study["saes"].values()}
    assert kinds == {(kind, seed, rank) for seed in (0, 1) for kind, rank in
                     [("baseline", 0), ("hybrid", 2), ("pca_deflation", 2), ("capacity_matched", 2),
                      ("other_encoder", 2)]}
    assert len(study["saes"]) == 10 and all(name.endswith(("_s0", "_s1")) for name in study["saes"])
    by_kind = {(ev["kind"], ev["seed"]): ev for ev in study["saes"].values()}
    assert by_kind[("capacity_matched", 0)]["k"] == 6 and by_kind[("capacity_matched", 0)]["rank"] == 0
    assert by_kind[("other_encoder", 0)]["encoder_input"] == "x" and by_kind[("hybrid", 0)]["encoder_input"] == "residual"
    names = {(ev["kind"], ev["seed"]): name for name, ev in study["saes"].items()}
    deflation = load_sae(tmp_path / "saes" / names[("pca_deflation", 1)])
    assert deflation.cfg.scaffold_lr_mult == 0 and deflation.cfg.scaffold_tied
    structure = study["analyses"]["structure"]["saes"]
    assert [s["sae"] for s in structure] == [names[("hybrid", 0)]]
    assert study["analyses"]["redundancy"]["baseline"] == names[("baseline", 0)]

    paths = write_report(study, tmp_path / "report", sections=[threshold_section(study)])
    md = paths.markdown.read_text()
    assert "## Over seeds" in md and "## Dense latents against each baseline" in md and " ± " in md
    for against in ("baseline", "pca_deflation", "capacity_matched", "other_encoder"):
        assert f"| hybrid r=2 | {against} | 2 |" in md


def test_analyses_run_on_each_requested_seed_and_the_summary_decides_over_them(tmp_path, tiny_model_dir, tiny_corpus):
    """analysis_seeds 2: seed 1's plain SAE and hybrid get their own analyses (cached in analyses_seed1/, reused by a
    rerun), results.json holds them under seed_analyses, and the summary's structure row is the mean over both
    seeds' scaffolds."""
    from scaffold_sae.claims import claim_rows

    cfg = build(StudyConfig, {"sae": {"ranks": [0, 2], "seeds": 2}, "claims.seeds": 2, "analyses": {
        "seeds": 2, "bootstrap_samples": 200, "probing.probe_docs": 0, "topic_ablation.topic_datasets": "",
        "ablation_table": {"ablation_operators": "zero", "ablation_random_bases": 1}}},
        base=tiny_study(tiny_model_dir, tiny_corpus))
    with pytest.raises(ConfigError, match=r"analyses.seeds=3 is invalid: between 1 and sae.seeds \(2\)"):
        build(StudyConfig, {"analyses.seeds": 3}, base=cfg).validate()
    with pytest.raises(ConfigError, match=r"claims.seeds=3 is invalid: the plan cannot read more seeds than the study "
                       r"trains \(sae.seeds=2\)"):
        build(StudyConfig, {"claims.seeds": 3}, base=cfg).validate()
    study = run_study(cfg, tmp_path, progress=False)
    names = {(ev["kind"], ev["seed"]): name for name, ev in study["saes"].items()}
    seed1 = study["seed_analyses"]["1"]
    assert list(study["seed_analyses"]) == ["1"] and (tmp_path / "analyses_seed1" / "analyses.json").is_file()
    assert [s["sae"] for s in seed1["structure"]["saes"]] == [names[("hybrid", 1)]]
    assert [s["sae"] for s in study["analyses"]["structure"]["saes"]] == [names[("hybrid", 0)]]
    assert seed1["redundancy"]["baseline"] == names[("baseline", 1)]
    cos2 = [a["structure"]["saes"][0]["mean_cos2"] for a in (study["analyses"], seed1)]
    structure = claim_rows(study)[1]
    assert structure.value == pytest.approx(sum(cos2) / 2) and " over 2 seeds (95% t-interval [" in structure.ours
    assert study["plan"]["seeds"] == 2 and study["plan_status"].startswith("as planned")
    assert json.loads((tmp_path / "plan.json").read_text()) == study["plan"]   # written before anything trained
    again = run_study(build(StudyConfig, {"claims.min_units": 5}, base=cfg), tmp_path, progress=False)
    assert again["seed_analyses"] == study["seed_analyses"]   # timings: reused
    assert again["plan"] == study["plan"] and "min_units: 30 -> 5" in again["plan_status"]   # the stored plan decides


def test_one_seed_keeps_the_old_names(tmp_path):
    cfg = build(StudyConfig, {"sae.ranks": [0, 8]})
    assert [m.cfg.seed for m in cfg.members()] == [None, None]
    assert [(m.kind, m.seed) for m in build(StudyConfig, {"sae.ranks": [0, 8], "sae.seeds": 3}).members()] == \
        [(kind, s) for s in range(3) for kind in ("baseline", "hybrid")]
    with pytest.raises(ConfigError, match="sae.baselines='pca' is invalid"):
        build(StudyConfig, {"sae.baselines": "pca"}).validate()


def test_matryoshka_with_a_random_scaffold_runs_the_whole_study(tmp_path, tiny_model_dir, tiny_corpus):
    """arch matryoshka through harvest, training, matched-L0 evaluation, every analysis and the report; the
    hybrids take scaffold_init and scaffold_lr_mult from the study config."""
    from scaffold_sae.saving import load_sae

    cfg = build(StudyConfig, {"sae": dict(arch="matryoshka", ranks=[0, 2], scaffold_init="random",
                                          scaffold_lr_mult=2.0),
                              "analyses.probing": dict(probe_docs=20, probe_datasets="sentiment")},
                base=tiny_study(tiny_model_dir, tiny_corpus))
    study = run_study(cfg, tmp_path, progress=False)
    assert sorted(study["saes"]) == ["matryoshka_m64_k4_r0_resin", "matryoshka_m64_k4_r2_resin_random_slr2"]
    hybrid = load_sae(tmp_path / "saes" / "matryoshka_m64_k4_r2_resin_random_slr2")
    assert hybrid.cfg.scaffold_init == "random" and hybrid.cfg.scaffold_lr_mult == 2.0
    for ev in study["saes"].values():
        assert ev["arch"] == "matryoshka" and ev["l0"] == pytest.approx(4.0, rel=0.02)
    assert set(study["analyses"]) >= {"structure", "causality", "redundancy", "probing", "rank_selection"}
    assert all(value is not None for name, value in study["analyses"].items() if name not in ("settings", "timings"))
    assert len(study["analyses"]["structure"]["saes"][0]["principal_angles_deg"]) == 2
    md = write_report(study, tmp_path / "report").markdown.read_text()
    assert "## Scaffold structure" in md and "| hybrid r=2 | baseline | 1 |" in md


def test_study_trains_until_converged_and_reports_the_training(tmp_path, tiny_model_dir, tiny_corpus):
    """StudyConfig's convergence fields reach the trainer; results.json records how each SAE's training ended and
    its curves, and the report draws them (summary first, configuration last)."""

    cfg = build(StudyConfig, {"sae.ranks": [0, 2], "analyses.enabled": False, "train": dict(
        until_converged=True, heldout_every=4, heldout_tokens=512, converge_tol=0.2, tokens=100 * 256)},
        base=tiny_study(tiny_model_dir, tiny_corpus))
    study = run_study(cfg, tmp_path, progress=False)
    runs = study["training"]
    assert set(runs) == set(study["saes"])
    steps = {run["steps"] for run in runs.values()}
    assert len(steps) == 1 and steps.pop() < 100                               # lockstep: all stop together
    for run in runs.values():
        assert run["stop_reason"] == "converged" and run["max_steps"] == 100
        assert run["heldout"]["tokens"][-1] == run["tokens"] == run["steps"] * 256
        assert run["heldout"]["fvu"][-1] == run["heldout_fvu"] and run["curve"]["tokens"][-1] == run["tokens"]
    md = write_report(study, tmp_path / "report").markdown.read_text()
    titles = [line[3:] for line in md.splitlines() if line.startswith("## ")]
    assert titles[0] == "Summary: the paper's claims" and titles[-2:] == ["Training", "Configuration"]
    assert "converged: stopped at step" in md and "| not run |" in md


def test_the_study_writes_browser_sites_that_the_report_links_to(tmp_path, tiny_model_dir, tiny_corpus, capsys):
    """Sites for the baseline and the analysis hybrid (which lists the baseline latents its scaffold absorbed), the
    report's relative links resolve to their index.html, and a rerun reuses them."""
    import re
    from urllib.parse import unquote

    from scaffold_sae.study import study_and_report

    cfg = build(StudyConfig, {"analyses.enabled": False, "browse.tokens": 256},
                base=tiny_study(tiny_model_dir, tiny_corpus))
    paths = study_and_report(cfg, tmp_path, progress=False)
    study = json.loads(paths.json.read_text())
    base, hybrid = "batchtopk_m64_k4_r0_resin", "batchtopk_m64_k4_r4_resin"      # the largest rank by default
    assert study["browse"] == {name: f"browse/{name}/index.html" for name in (base, hybrid)}
    sites = {name: json.loads((tmp_path / "browse" / name / "site.json").read_text()) for name in (base, hybrid)}
    assert sites[base]["meta"]["rank"] == 0 and sites[hybrid]["meta"]["rank"] == 4
    assert sites[hybrid]["meta"]["baseline"] == base and all(d["absorbed"] is not None for d in sites[hybrid]["scaffold"])
    assert sites[base]["meta"]["n_contexts"] == 256 // 32 and not list((tmp_path / "browse").glob(".*"))
    html_links = re.findall(r'<a href="([^"#]+)">', paths.html.read_text())
    md_links = re.findall(r"\]\(([^)]+)\)", paths.markdown.read_text())
    assert html_links == md_links == [f"../browse/{name}/index.html" for name in (base, hybrid)]
    assert all((paths.html.parent / unquote(link)).resolve().is_file() for link in html_links)

    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "browse").rglob("*")}
    study_and_report(cfg, tmp_path, progress=False)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "browse").rglob("*")} == mtimes
    capsys.readouterr()


def test_training_curves_of_an_sae_linked_from_another_run(tmp_path):
    """A study that links a saved SAE from another run (experiment O's seed 0) reports the curves that run logged
    under the name the SAE was trained with; its own SAEs keep theirs."""
    from scaffold_sae.study import training_results

    def saved(folder, name, records):
        (folder / name).mkdir(parents=True)
        (folder / name / "scaffold_sae.json").write_text(json.dumps({"summary": {"steps": 3, "stop_reason": "budget"}}))
        with open(folder / "train_log.jsonl", "a") as log:
            for r in records:
                log.write(json.dumps({"sae": name, **r}) + "\n")

    saved(tmp_path / "old" / "saes", "sae_r0", [{"tokens": 10, "loss": 0.5}, {"tokens": 20, "heldout_fvu": 0.3}])
    saved(tmp_path / "new" / "saes", "sae_r8_s1", [{"tokens": 10, "loss": 0.4}])
    (tmp_path / "new" / "saes" / "sae_r0_s0").symlink_to(tmp_path / "old" / "saes" / "sae_r0")
    got = training_results({"sae_r0_s0": tmp_path / "new" / "saes" / "sae_r0_s0",
                            "sae_r8_s1": tmp_path / "new" / "saes" / "sae_r8_s1"})
    assert got["sae_r0_s0"]["curve"] == {"tokens": [10], "loss": [0.5]}
    assert got["sae_r0_s0"]["heldout"] == {"tokens": [20], "fvu": [0.3]}
    assert got["sae_r8_s1"]["curve"] == {"tokens": [10], "loss": [0.4]} and got["sae_r8_s1"]["steps"] == 3


def test_snapshots_give_the_study_training_curves_that_a_rerun_reuses(tmp_path, tiny_model_dir, tiny_corpus):
    """train.snapshot_every reaches the trainer; the study measures every snapshot on its held-out contexts
    (scaffold_sae.curves), stores the points in results.json and curves.json, and the report draws them."""
    cfg = build(StudyConfig, {"sae.ranks": [0, 2], "analyses.enabled": False, "browse.enabled": False,
                              "train.snapshot_every": 10}, base=tiny_study(tiny_model_dir, tiny_corpus))
    study = run_study(cfg, tmp_path, progress=False)
    assert sorted((p["sae"], p["step"]) for p in study["curves"]) == sorted(
        (name, step) for name in study["saes"] for step in (10, 20, 30, 40))
    final = {p["sae"]: p for p in study["curves"] if p["step"] == 40}
    for name, ev in study["saes"].items():
        assert (final[name]["fvu"], final[name]["dense_10"]) == (ev["fvu"], ev["dense_10"])
    md = write_report(study, tmp_path / "report").markdown.read_text()
    assert "## Training curves" in md and "dense >10% against training tokens" in md
    stamp = (tmp_path / "curves.json").stat().st_mtime_ns
    assert run_study(cfg, tmp_path, progress=False)["curves"] == study["curves"]
    assert (tmp_path / "curves.json").stat().st_mtime_ns == stamp


@dataclass
class SeenResult:
    saes: list[str]
    """The SAEs the analysis was given."""
    controls: list[str]
    """The control SAEs (PCA deflation) it was given."""


def test_analyses_on_saved_saes_take_the_pca_deflation_saes_as_controls(tmp_path, tiny_model_dir, tiny_corpus):
    """saved_analyses.analyse_saved hands the PCA-deflation SAEs to the analyses as controls, as the study does
    (probing pairs them with the hybrids), not as one more hybrid of their rank."""
    from scaffold_sae.saved_analyses import analyse_saved

    cfg = build(StudyConfig, {"sae.ranks": [0, 2], "sae.baselines": "pca_deflation", "analyses.enabled": False,
                              "browse.enabled": False}, base=tiny_study(tiny_model_dir, tiny_corpus))
    run_study(cfg, tmp_path / "run", progress=False)
    analyses.register("seen", ToyConfig, SeenResult,
                      lambda context, config: SeenResult(sorted(context.saes), sorted(context.controls)),
                      lambda result: [])
    try:
        table = analyse_saved(tmp_path / "run", tmp_path / "out", ["seen"], progress=False)
    finally:
        analyses.unregister("seen")
    assert table["analyses"]["seen"]["saes"] == ["batchtopk_m64_k4_r0_resin", "batchtopk_m64_k4_r2_resin"]
    assert table["analyses"]["seen"]["controls"] == ["batchtopk_m64_k4_r2_tied_resin_slr0"]


def test_the_analyse_command_puts_only_the_flags_given_on_the_run_s_stored_settings(tmp_path, tiny_model_dir,
                                                                                    tiny_corpus, capsys):
    """`scaffold-sae analyse RUN` is analyse_saved's command line: the study's flags given replace the run's stored
    settings (the rest stay the run's, not the study's defaults); a folder that is no run fails with one line and
    creates nothing."""
    from scaffold_sae.cli import main
    from scaffold_sae.saved_analyses import analyse_saved

    cfg = build(StudyConfig, {"sae.ranks": [0, 2], "analyses.enabled": False, "browse.enabled": False,
                              "analyses.tokens": 256}, base=tiny_study(tiny_model_dir, tiny_corpus))
    run_study(cfg, tmp_path / "run", progress=False)
    main(["analyse", str(tmp_path / "run"), "--out", str(tmp_path / "cli"), "--analyse", "structure",
          "--analyses.structure.outlier_factor", "3", "--no-progress"])
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'cli' / 'table.json'}"
    got = json.loads((tmp_path / "cli" / "table.json").read_text())
    want = analyse_saved(tmp_path / "run", tmp_path / "lib", ["structure"], {"analyses.structure.outlier_factor": 3},
                         progress=False)
    def timeless(table):
        return {k: v for k, v in table["analyses"].items() if k != "timings"}

    assert timeless(got) == timeless(want) and got["command"]["analyses.structure.outlier_factor"] == 3
    (structure,) = got["analyses"]["structure"]["saes"]
    assert structure["n_tokens"] == 256                                  # the run's analyses.tokens, not the default
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(["analyse", str(tmp_path), "--out", str(tmp_path / "none"), "--no-progress"])
    assert stop.value.code == 2 and not (tmp_path / "none").exists()
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path}: no study_config.json; name a study's output "
                                               "folder (the --out of `scaffold-sae study`, or runs/<slug>/ of an "
                                               "experiment)")
