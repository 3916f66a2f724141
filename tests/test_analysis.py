"""Structure, causality, redundancy and rank selection on planted cases with known answers; the analysis
protocol (registry, typed JSON results, report sections)."""

import json
import math
from dataclasses import fields

import pytest
import torch

from scaffold_sae import analyses, lm_passes, subspace
from scaffold_sae.analyses import causality, rank_selection, redundancy, runner, structure
from scaffold_sae.analyses.base import AnalysesSettings
from scaffold_sae.analyses.codes import feature_ablation_edit
from scaffold_sae.config import LEGACY, build, merge, nest, tree_keys
from scaffold_sae.compare import compare_studies
from scaffold_sae.report import format_number
from scaffold_sae.study_report import write_report
from scaffold_sae.sae import HybridSAE, SAEConfig, orthonormalise
from scaffold_sae.study import StudyConfig


def planted(n=4000, d=32, r=3, n_sparse=40, seed=0):
    """Activations = a large dense r-dim component + a mean offset on dim 5 (massive) + sparse features."""
    g = torch.Generator().manual_seed(seed)
    basis = orthonormalise(torch.randn(d, r, generator=g))
    dense = torch.randn(n, r, generator=g) * torch.tensor([30.0, 20.0, 15.0][:r]) @ basis.t()
    feats = torch.randn(n_sparse, d, generator=g)
    feats /= feats.norm(dim=1, keepdim=True)
    active = (torch.rand(n, n_sparse, generator=g) < 0.05).float() * torch.rand(n, n_sparse, generator=g) * 3
    offset = torch.zeros(d)
    offset[5] = 500.0
    return dense + active @ feats + offset, basis


def hybrid_with(basis: torch.Tensor, d: int, width: int = 16, b_dec=None) -> HybridSAE:
    sae = HybridSAE(SAEConfig(arch="batchtopk", d_in=d, width=width, k=2, rank=basis.shape[1]))
    sae.set_scaffold(basis)
    if b_dec is not None:
        with torch.no_grad():
            sae.b_dec.copy_(b_dec)
    return sae.eval()


def test_principal_angles_zero_for_same_span_and_90_for_orthogonal():
    g = torch.Generator().manual_seed(1)
    q = orthonormalise(torch.randn(20, 4, generator=g))
    mixed = q @ torch.randn(4, 4, generator=g)  # same span, not orthonormal
    assert subspace.principal_angles(mixed, q).max() < 1e-4
    eye = torch.eye(20)
    assert subspace.principal_angles(eye[:, :2], eye[:, 2:4]).tolist() == pytest.approx([90.0, 90.0])
    tilted = torch.stack([eye[0], (eye[1] + eye[2]) / math.sqrt(2)], 1)
    assert subspace.principal_angles(eye[:, :2], tilted).tolist() == pytest.approx([0.0, 45.0], abs=1e-6)


def test_structure_finds_planted_subspace_and_massive_dim():
    x, basis = planted()
    mu = x.mean(0)
    result = structure.structure(hybrid_with(basis, 32, b_dec=mu), x, "hybrid", outlier_factor=10.0)
    assert max(result.principal_angles_deg) < 3.0 and result.mean_cos2 > 0.99
    assert result.variance_share_scaffold == pytest.approx(result.variance_share_pca, abs=0.01)
    assert result.variance_share_scaffold > 0.95 and result.scaffold_explained_variance > 0.95
    assert result.outlier_dims == [5]
    # the massive dim is an offset, not in the planted span: little of its axis is inside span(U)
    assert result.outlier_dim_in_scaffold[0] == pytest.approx(float(basis[5].pow(2).sum()), abs=1e-5)
    assert result.outlier_energy_scaffold_uncentred == pytest.approx(float(basis[5].pow(2).sum()), abs=1e-5)


def test_structure_reports_every_angle_and_variance_on_a_known_subspace():
    """Axis-aligned data with known variances; span(U) = {e0, e1, cos60 e2 + sin60 e5}. The answer is exact:
    angles 0, 0, 60 degrees to the top-3 PCs {e0, e1, e2}, and the variance shares follow from the variances."""
    variances = torch.tensor([100.0, 50.0, 20.0, 5.0, 2.0, 1.0, 0.5, 0.2])
    d = variances.numel()
    axes = torch.diag(variances.sqrt())
    x = torch.cat([axes, -axes])                      # mean 0, covariance exactly diagonal
    eye = torch.eye(d)
    c, s = math.cos(math.radians(60)), math.sin(math.radians(60))
    u = torch.stack([eye[0], eye[1], c * eye[2] + s * eye[5]], 1)
    result = structure.structure(hybrid_with(u, d), x, "hybrid")
    assert result.principal_angles_deg == pytest.approx([0.0, 0.0, 60.0], abs=1e-4)
    total = float(variances.sum())
    assert result.variance_share_pca == pytest.approx(170.0 / total, rel=1e-6)
    assert result.variance_share_scaffold == pytest.approx((150.0 + 20.0 * c * c + 1.0 * s * s) / total, rel=1e-6)
    section = structure.sections(structure.StructureResult([result]))[0]
    assert section.tables[0].rows[0][3:6] == pytest.approx([0.0, 0.0, 60.0], abs=1e-4)   # first, median, last
    assert section.figures[0].series[0].y == result.principal_angles_deg


def test_energy_share_matches_slow_reference():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, 6, generator=g)
    q = orthonormalise(torch.randn(6, 2, generator=g))
    dims = [1, 4]
    num = den = 0.0
    for row in x.double():
        o = torch.zeros(6, dtype=torch.float64)
        o[dims] = row[dims]
        num += float((q.double().t() @ o).pow(2).sum())
        den += float(o.pow(2).sum())
    assert subspace.energy_share(x, q, dims) == pytest.approx(num / den, rel=1e-9)
    assert math.isnan(subspace.energy_share(x, q, []))


def test_outlier_rule():
    x = torch.ones(10, 8)
    x[:, 2] = -50.0
    x[:, 6] = 11.0
    x[:, 7] = 9.0
    dims, mean_abs, median = subspace.outlier_dims(x, factor=10.0)
    assert dims == [2, 6] and median == 1.0 and float(mean_abs[2]) == 50.0


def test_alignment_scores_exact_on_hand_built_decoder():
    eye = torch.eye(6)
    w_dec = torch.stack([eye[0], 2 * eye[1], (eye[0] + eye[2]) / math.sqrt(2), eye[3], (eye[1] + 3 * eye[4])])
    scores = subspace.alignment_scores(w_dec, eye[:, :2])
    assert scores.tolist() == pytest.approx([1.0, 1.0, 0.5, 0.0, 0.1])
    idx, threshold = redundancy.aligned_features(scores, rank=2, d=6, factor=1.0)  # min(0.5, 2/6)
    assert threshold == pytest.approx(1 / 3) and sorted(idx.tolist()) == [0, 1, 2] and idx.tolist()[2] == 2
    idx, threshold = redundancy.aligned_features(scores, rank=2, d=6, factor=10.0)  # capped at 0.5
    assert threshold == 0.5 and sorted(idx.tolist()) == [0, 1]


def test_spectrum_rules():
    ev = torch.tensor([100.0, 100.0, 100.0] + [1.0] * 20)
    assert subspace.spectrum_knee(ev) == 3
    assert subspace.participation_ratio(torch.tensor([1.0, 1.0, 1.0, 1.0])) == pytest.approx(4.0)
    assert subspace.participation_ratio(torch.tensor([1.0, 0.0])) == pytest.approx(1.0)
    assert subspace.rank_for_share(torch.tensor([5.0, 3.0, 2.0]), 0.8) == 2
    assert subspace.rank_for_share(torch.tensor([5.0, 3.0, 2.0]), 0.81) == 3
    assert subspace.sweep_knee([0, 2, 4, 8, 16], [60, 30, 5, 1, 0]) == 4   # 5 <= 0 + 0.1 * 60
    assert subspace.sweep_knee([0, 8], [60, 0]) is None                   # too few ranks
    assert subspace.sweep_knee([0, 2, 4], [0, 1, 2]) is None              # no reduction
    selection = rank_selection.select_rank(ev, {0: 60, 2: 30, 4: 5, 8: 1})
    assert selection.recommended == 4 and "sweep" in selection.rule
    assert rank_selection.select_rank(ev).recommended == 3


def test_subspace_edits():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 5, generator=g)
    q = orthonormalise(torch.randn(5, 2, generator=g))
    mu = torch.randn(5, generator=g)
    zero = subspace.subspace_edit(q, q, None)(x)
    assert (zero @ q).abs().max() < 1e-5                            # component gone
    mean = subspace.subspace_edit(q, q, mu)(x)
    assert torch.allclose(mean @ q, (mu @ q).expand(7, 2), atol=1e-5)  # component replaced by the mean's
    assert torch.allclose(mean - mean @ q @ q.t(), x - x @ q @ q.t(), atol=1e-5)  # the rest untouched


def test_feature_ablation_keeps_error_term():
    torch.manual_seed(0)
    sae = HybridSAE(SAEConfig(arch="topk", d_in=8, width=12, k=3, rank=0)).eval()
    x = torch.randn(10, 8)
    assert torch.equal(feature_ablation_edit(sae, torch.tensor([], dtype=torch.long), "threshold")(x), x)
    chosen = torch.tensor([1, 4, 7])
    out = feature_ablation_edit(sae, chosen, "threshold")(x)
    codes = sae.encode(x)
    reference = x.clone()
    for i in chosen.tolist():
        reference -= codes[:, i:i + 1] * sae.W_dec[i]
    assert torch.allclose(out, reference, atol=1e-6)


def test_ablating_nothing_leaves_ce_unchanged_and_real_ablation_changes_it(tiny_lm):
    ids = torch.randint(4, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 2
    d = tiny_lm.d_model
    zero = torch.zeros(d, 1)
    q = orthonormalise(torch.randn(d, 8, generator=torch.Generator().manual_seed(1)))
    ce, count = lm_passes.ablation_ce(tiny_lm, 0, ids, {"nothing": subspace.subspace_edit(zero, zero, None),
                                                       "eight_dirs": subspace.subspace_edit(q, q, None)},
                                     batch_size=1, sink_factor=0)
    assert count == 2 * 10
    clean = float(tiny_lm.token_ce(ids)[:, 1:].mean())
    assert ce["clean"] == pytest.approx(clean, rel=1e-6)
    assert ce["nothing"] == pytest.approx(ce["clean"], rel=1e-6)
    assert abs(ce["eight_dirs"] - ce["clean"]) > 1e-4


def test_causality_with_empty_scaffold_is_neutral(tiny_lm):
    d = tiny_lm.d_model
    ids = torch.randint(4, 100, (2, 10), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 2
    sae = hybrid_with(torch.zeros(d, 2), d)
    mu = torch.zeros(d)
    result = causality.causality(tiny_lm, 0, sae, ids, mu, torch.eye(d), seeds=2, sink_factor=0)
    assert result.ratio("scaffold:remove") == pytest.approx(1.0, rel=1e-6)
    assert result.ratio("scaffold:mean") == pytest.approx(1.0, rel=1e-6)
    assert {o.condition for o in result.outcomes} >= {"pca:zero", "pca:mean", "random:zero", "random:mean"}
    assert next(o for o in result.outcomes if o.condition == "random:mean").sd is not None


def tiny_cfg(**overrides):
    """A small StudyConfig for the analyses; overrides by leaf name (analyses.probing.probe_docs: probe_docs) or by
    the study's flat name from before the config tree (analysis_tokens: analyses.tokens)."""
    values = nest({"analyses": dict(tokens=256, ce_tokens=64, rank=None, bootstrap_samples=200),
              "analyses.causality.random_seeds": 2, "analyses.ablation_table.ablation_random_bases": 2,
              "analyses.topic_ablation.topic_datasets": "", "analyses.redundancy.redundancy_points": 4,
              "analyses.structure.outlier_factor": 10.0, "analyses.redundancy.redundancy_factor": 10.0,
              "analyses.probing": dict(probe_docs=0, probe_tokens=16, probe_datasets=""),
              "harvest": dict(ce_tokens=64, ctx_len=16, sink_factor=10.0, batch_size=4), "seed": 0})
    keys = tree_keys(StudyConfig)
    for name, value in overrides.items():
        path = LEGACY.get(name) or next((k for k in keys if k == name or k.endswith("." + name)), name)
        values = merge(values, nest({path: value}))
    return build(StudyConfig, values)


def numbers(value):
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            if k != "context_sums":  # per-context data kept for a later bootstrap over seeds, not a reported number
                yield from numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from numbers(v)


def test_run_analyses_end_to_end_caches_and_reports_every_number(tiny_lm, tmp_path, monkeypatch):
    d = tiny_lm.d_model
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 100, (8, 16), generator=g)
    ids[:, 0] = 2
    _, fit = analyses.split_contexts(ids, analyses.SharedConfig(analysis_ce_tokens=64, ce_tokens=64))
    x = lm_passes.heldout_activations(tiny_lm, 1, fit, 10_000, sink_factor=10.0)
    _, _, vectors = subspace.pca(x)
    base = HybridSAE(SAEConfig(arch="batchtopk", d_in=d, width=32, k=4, rank=0)).eval()
    hybrid = hybrid_with(vectors[:, :2].float(), d, width=32)
    hybrid.cfg.k = 4
    saes = {"r0": base, "r2": hybrid}
    results, sections = analyses.run_analyses(tiny_lm, 1, saes, "r0", None, ids, tiny_cfg(), out=tmp_path,
                                              progress=False)
    assert results["structure"].saes[0].mean_cos2 > 0.999          # U is the top-2 PCs of the fit tokens
    assert results["rank_selection"].sweep_ranks == [0, 2]
    assert results["causality"].rank == 2 and results["redundancy"].hybrid == "r2"
    titles = [s.title for s in sections]
    assert titles[:5] == ["Scaffold structure", "Scaffold causality", "Causal ablation table",
                          "Scaffold redundancy in the baseline SAE", "Choosing the rank"]
    paths = write_report({"title": "t", "config": {}, "saes": {}}, tmp_path / "report", sections=sections)
    md = paths.markdown.read_text()
    for value in numbers(results.to_json()):
        assert format_number(value) in md, f"{value} missing from the report"
    stored = json.loads((tmp_path / "analyses.json").read_text())
    assert stored["results"] == results.to_json()

    study = {"config": {"model": "tiny", "layer": 1}, "saes": {"r0": {"rank": 0, "dense_10": 7},
                                                              "r2": {"rank": 2, "dense_10": 1}},
             "analyses": results.to_json()}
    compared = compare_studies({"a": study, "b": study})
    row = compared.tables[0].rows[0]
    assert len(compared.tables[0].rows) == 2 and row[:6] == ["a", "tiny", 1, 2, 7, 1]

    real = runner.heldout_activations
    monkeypatch.setattr(runner, "heldout_activations", lambda *a, **k: pytest.fail("recomputed"))
    again, _ = analyses.run_analyses(tiny_lm, 1, saes, "r0", None, ids, tiny_cfg(), out=tmp_path, progress=False)
    assert again == results

    other = ids.clone()  # same shape, one token different: the cached results must not be reused
    other[-1, -1] = 5 if ids[-1, -1] != 5 else 6
    calls = []
    monkeypatch.setattr(runner, "heldout_activations", lambda *a, **k: calls.append(1) or real(*a, **k))
    analyses.run_analyses(tiny_lm, 1, saes, "r0", None, other, tiny_cfg(), out=tmp_path, progress=False)
    assert calls == [1]


def test_clear_errors():
    d = 8
    base = HybridSAE(SAEConfig(arch="batchtopk", d_in=d, width=8, k=2, rank=0))
    with pytest.raises(analyses.AnalysisError, match="no scaffold"):
        structure.structure(base, torch.randn(10, d))
    with pytest.raises(analyses.AnalysisError, match="no hybrid"):
        analyses.primary_hybrid({"r0": base}, None)
    with pytest.raises(analyses.AnalysisError, match="analysis_rank=3"):
        analyses.primary_hybrid({"r0": base, "r2": hybrid_with(torch.eye(d)[:, :2], d)}, 3)


@pytest.mark.slow
def test_analyses_on_the_embedded_model_reduced(tmp_path):
    """Real Gemma-3-270M layer 9, a scaffold set to the top-8 PCs and an untrained dictionary, tiny sizes."""
    from scaffold_sae.corpus import load_corpus, pack_contexts
    from scaffold_sae.models import load_model
    from scaffold_sae.trainer import estimate_threshold

    lm = load_model("gemma3-270m")
    ids = pack_contexts(lm.tokenizer, load_corpus("news"), 64, 512, split="heldout", bos_id=lm.bos_token_id)
    # the analyses fit their PCA on the contexts after the CE ones (128 CE tokens = the first 2 contexts of 64)
    x = lm_passes.heldout_activations(lm, 9, ids[2:], 512)
    mu, _, vectors = subspace.pca(x)
    base = HybridSAE(SAEConfig(arch="batchtopk", d_in=lm.d_model, width=64, k=4, rank=0)).eval()
    hybrid = hybrid_with(vectors[:, :8].float(), lm.d_model, width=64, b_dec=mu.float())
    hybrid.cfg.k = 4
    with torch.no_grad():
        base.b_dec.copy_(mu.float())
        for sae in (base, hybrid):   # probing codes tokens by the JumpReLU threshold training would calibrate
            sae.threshold.fill_(estimate_threshold(sae, x, 4))
    cfg = tiny_cfg(analysis_tokens=512, analysis_ce_tokens=128, ce_tokens=128, probe_docs=20, probe_tokens=32,
                   probe_datasets="bbc_topic", ctx_len=64)
    results, sections = analyses.run_analyses(lm, 9, {"r0": base, "r8": hybrid}, "r0", None, ids, cfg,
                                              out=tmp_path, progress=False)
    found = results["structure"].saes[0]
    assert found.mean_cos2 > 0.99 and 163 in found.outlier_dims
    assert found.outlier_energy_scaffold_centred > 0.9
    ratios = {o.condition: o.ratio for o in results["causality"].outcomes}
    assert ratios["scaffold:mean"] == pytest.approx(ratios["pca:mean"], rel=1e-3)  # same subspace, same centre
    assert results["probing"].datasets["bbc_topic"].documents == 20


def test_registry_lists_the_analyses_in_report_order():
    assert list(analyses.registered()) == ["structure", "causality", "ablation_table", "redundancy", "probing",
                                           "topic_ablation", "rank_selection"]
    for analysis in analyses.registered().values():
        assert analysis.config() == analysis.config_cls()            # every config field has a default
    with pytest.raises(analyses.AnalysisError, match="already registered"):
        analyses.register("structure", structure.StructureConfig, structure.StructureResult, structure.run,
                          structure.sections)
    with pytest.raises(analyses.AnalysisError, match="reserved"):
        analyses.register("settings", structure.StructureConfig, structure.StructureResult, structure.run,
                          structure.sections)


def test_the_study_config_has_one_section_per_registered_analysis():
    """analyses.<name> is the registered analysis's own config class, so no setting is matched by name."""
    nodes = {f.name: f.default_factory for f in fields(runner.AnalysesConfig) if f.name not in
             {g.name for g in fields(AnalysesSettings)}}
    assert nodes == {name: a.config_cls for name, a in analyses.registered().items()}
    names = [path.rsplit(".", 1)[-1] for path in tree_keys(StudyConfig)]
    # each in two sections, meaning two things (claims.<x>: the plan's primary reading; analyses.<x>: what is measured)
    assert sorted(n for n in set(names) if names.count(n) > 1) == ["batch_size", "ce_tokens", "enabled", "rank",
                                                                   "redundancy_operators", "seeds", "tokens",
                                                                   "topic_positions"]


def test_study_sections_reach_the_analysis_configs():
    cfg = tiny_cfg(outlier_factor=3.0, random_seeds=5, probe_datasets="language", max_rank=7)
    assert analyses.registered()["structure"].config(cfg).outlier_factor == 3.0
    assert analyses.registered()["causality"].config(cfg).random_seeds == 5
    assert analyses.registered()["probing"].config(cfg).probe_datasets == "language"
    assert analyses.registered()["rank_selection"].config(cfg).max_rank == 7
    shared = runner.shared_config(cfg)
    assert (shared.analysis_tokens, shared.analysis_ce_tokens, shared.ce_tokens, shared.ctx_len,
            shared.harvest_batch_size, shared.bootstrap_samples) == (256, 64, 64, 16, 4, 200)
    settings = runner.analysis_settings(cfg)
    assert settings["outlier_factor"] == 3.0 and settings["analysis_tokens"] == 256
    assert settings["bootstrap_samples"] == 200 and settings["max_rank"] == 7
    assert analyses.SharedConfig() == runner.shared_config(StudyConfig())   # the view's defaults are the study's


def test_an_unregistered_analysis_keeps_its_json_and_still_reaches_the_report():
    data = {"n_tokens": 5, "someone_elses": {"score": 0.123456, "per_class": [{"name": "a", "acc": 0.75}]}}
    results = analyses.AnalysisResults.from_json(data)
    assert results["someone_elses"] == data["someone_elses"] and results.to_json()["someone_elses"] == data[
        "someone_elses"]
    (section,) = results.sections()
    assert section.title == "Analysis: someone_elses"
    assert ["score", 0.123456] in section.tables[0].rows and ["per_class[0].acc", 0.75] in section.tables[0].rows
