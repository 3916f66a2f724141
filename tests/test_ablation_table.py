"""The causal ablation table: running from the cached layer, each operator against an explicit reference, a planted
massive BOS dimension, disjoint fit and CE contexts, and the typed result."""

import copy

import pytest
import torch

from scaffold_sae import analyses, lm_passes
from scaffold_sae.analyses import ablation_table as at
from scaffold_sae.models import from_hf_model
from scaffold_sae.sae import HybridSAE, SAEConfig, orthonormalise

from helpers import make_hf_model


def contexts(n=6, t=12, seed=0):
    ids = torch.randint(4, 100, (n, t), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = 2
    return ids


@pytest.mark.parametrize("layer", [0, 1])
def test_running_from_the_cached_layer_matches_the_full_forward(tiny_lm, layer):
    ids = contexts(3, 10)
    fast = tiny_lm.logits_from(tiny_lm.residual(ids, layer), layer)
    assert torch.allclose(fast, tiny_lm.logits(ids), atol=1e-5)
    assert lm_passes.skips_exactly(tiny_lm, layer, ids)
    assert all(not isinstance(block, torch.nn.Identity) for block in tiny_lm.layers)  # blocks restored


def test_condition_losses_identity_is_clean_and_kl_is_exact(tiny_lm):
    ids = contexts(5, 10)
    q = orthonormalise(torch.randn(tiny_lm.d_model, 4, generator=torch.Generator().manual_seed(1)))

    def same(resid, ordinary, index):
        return resid

    def drop(resid, ordinary, index):
        return resid - resid @ q @ q.t()

    out = lm_passes.condition_losses(tiny_lm, 0, ids, {"same": same, "drop": drop}, batch_size=2,
                                     rows_per_forward=4, sink_factor=0)
    reference = tiny_lm.token_ce(ids)[:, 1:].double().sum(1)
    assert torch.allclose(out.clean, reference, rtol=1e-5)
    assert torch.allclose(out.ce[0], out.clean, rtol=1e-6) and out.kl[0].abs().max() < 1e-5
    full = tiny_lm.logits(ids, layer=0, edit=lambda r: r - r @ q @ q.t())
    clean = tiny_lm.logits(ids)
    p = torch.softmax(clean[:, 1:-1], -1)
    kl = (p * (torch.log_softmax(clean[:, 1:-1], -1) - torch.log_softmax(full[:, 1:-1], -1))).sum(-1).sum(1)
    assert torch.allclose(out.kl[1], kl.double(), rtol=1e-4, atol=1e-6)
    assert out.predictions.tolist() == [8.0] * 5


def test_each_operator_against_an_explicit_reference():
    g = torch.Generator().manual_seed(3)
    resid = torch.randn(2, 5, 6, generator=g)
    ordinary = torch.ones(2, 5, dtype=torch.bool)
    ordinary[:, 0] = False
    ordinary[1, 3] = False                          # a sink
    q = orthonormalise(torch.randn(6, 2, generator=g))
    ref = at.ClassReference(torch.randn(40, 6, generator=g), torch.randn(7, 6, generator=g) + 5.0, seed=1)
    donors = ref.donors(resid, ordinary, 0)
    p = q @ q.t()
    for operator in at.OPERATORS:
        for positions in at.POSITIONS:
            out = at.component_edit(q, q, operator, positions, ref.reference(operator))(resid, ordinary, 0)
            for b in range(2):
                for t in range(5):
                    x = resid[b, t]
                    touched = positions == "all" or bool(ordinary[b, t])
                    mu = ref.mean_ordinary if ordinary[b, t] else ref.mean_special
                    expect = {"zero": x - p @ x, "mean": x - p @ (x - mu),
                              "resample": x - p @ (x - donors[b, t])}[operator] if touched else x
                    assert torch.allclose(out[b, t], expect, atol=1e-5), (operator, positions, b, t)
    # donors: same class, from the fit rows, the same for every condition of a batch
    assert any(torch.equal(donors[0, 0], row) for row in ref.special)
    assert any(torch.equal(donors[0, 2], row) for row in ref.ordinary)
    assert torch.equal(ref.donors(resid, ordinary, 0), donors)
    whole = at.component_edit(None, None, "mean", "all", ref.mean)(resid, ordinary, 0)
    assert torch.allclose(whole[0, 0], ref.mean_special) and torch.allclose(whole[0, 1], ref.mean_ordinary)


@pytest.fixture(scope="module")
def massive_lm(tiny_tokenizer):
    """The tiny Llama with a massive dimension planted at BOS: the BOS embedding (id 2) is 60 on dim 7, every other
    token's is 0 there and block 0 writes nothing into dim 7, so after block 0 dim 7 is 60 at BOS and exactly 0
    elsewhere; block 1's values read dim 7 strongly, so what BOS holds there reaches every later token."""
    model = make_hf_model()
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[:, 7] = 0.0
        emb[2, 7] = 60.0
        block0, block1 = model.model.layers
        block0.self_attn.o_proj.weight[7] = 0.0
        block0.mlp.down_proj.weight[7] = 0.0
        block1.self_attn.v_proj.weight[:, 7] = 1.0
    return from_hf_model(model, copy.deepcopy(tiny_tokenizer), spec="tiny-massive")


def test_planted_massive_bos_dimension_zero_changes_ce_mean_does_not(massive_lm):
    """Zeroing the massive dim at all positions takes BOS off its value and changes CE; setting it to its class
    mean (BOS gets the BOS mean, which is its value, since position 0 sees only itself) leaves CE as it is, and
    zeroing it at ordinary positions only (BOS untouched) barely matters. A mean taken over ordinary tokens alone
    would zero BOS too and fail this test."""
    lm = massive_lm
    ids = contexts(8, 12, seed=4)
    resid = lm.residual(ids, 0)
    assert (resid[:, 0, 7] == 60).all() and (resid[:, 1:, 7] == 0).all()        # massive at BOS only
    e = torch.zeros(lm.d_model, 1)
    e[7] = 1.0
    fit = contexts(8, 12, seed=5)
    rows = lm_passes.position_class_rows(lm, 0, fit, 10_000, sink_factor=0)
    ref = at.ClassReference(*rows, seed=0)
    conditions = {f"{op}|{pos}": at.component_edit(e, e, op, pos, ref.reference(op))
                  for op in at.OPERATORS for pos in at.POSITIONS}
    out = lm_passes.condition_losses(lm, 0, ids, conditions, batch_size=4, sink_factor=0)
    delta = {name: float((out.ce[i] - out.clean).sum() / out.predictions.sum()) for i, name in enumerate(out.names)}
    assert abs(delta["zero|all"]) > 0.01
    for name in ("mean|all", "resample|all", "zero|ordinary", "mean|ordinary", "resample|ordinary"):
        assert abs(delta[name]) < 1e-5, name
    global_mean = at.ClassReference(rows[0], rows[0], seed=0)        # one mean for every position: wrong at BOS
    wrong = lm_passes.condition_losses(lm, 0, ids, {"m": at.component_edit(e, e, "mean", "all", global_mean.mean)},
                                       batch_size=4, sink_factor=0)
    assert abs(float((wrong.ce[0] - wrong.clean).sum() / wrong.predictions.sum())) > 0.5 * abs(delta["zero|all"])


def hybrid(basis, d, tied=True):
    sae = HybridSAE(SAEConfig(arch="batchtopk", d_in=d, width=32, k=4, rank=basis.shape[1], scaffold_tied=tied))
    sae.set_scaffold(basis)
    return sae.eval()


def test_table_on_the_tiny_model(tiny_lm):
    d = tiny_lm.d_model
    ids, fit = contexts(6, 12, seed=6), contexts(6, 12, seed=7)
    x = lm_passes.heldout_activations(tiny_lm, 1, fit, 10_000, sink_factor=0)
    vectors = torch.linalg.eigh(torch.cov(x.t().double()))[1].flip(1)
    sae = hybrid(vectors[:, :3].float(), d)
    cfg = at.AblationTableConfig(ablation_random_bases=2, rows_per_forward=6)
    result = at.ablation_table(tiny_lm, 1, sae, ids, fit, vectors, "r3", cfg, sink_factor=0, bootstrap_samples=200)
    subjects = {c.subject for c in result.cells}
    assert subjects == {"scaffold", "span_u", "pca", "pca_mean", "mean", "random", "residual", at.WITHOUT_SCAFFOLD,
                        at.SPLICED}
    assert len(result.cells) == 2 * (3 * 7 + 3)
    assert {(c.subject, c.dims) for c in result.cells if c.operator == "zero"} == {
        ("scaffold", 3), ("span_u", 3), ("pca", 3), ("pca_mean", 4), ("mean", 1), ("random", 3), ("residual", d)}
    for c in result.cells:
        assert c.ce.low <= c.ce.value <= c.ce.high and c.ratio.low <= c.ratio.value <= c.ratio.high
    # U = V orthonormal with b_dec = 0: the scaffold term is the projector, every reading of it equals span(U)'s
    for op in at.OPERATORS:
        assert result.cell("scaffold", op, "all").ce.value == pytest.approx(result.cell("span_u", op, "all").ce.value,
                                                                            rel=1e-5)
    assert result.cell(at.WITHOUT_SCAFFOLD, at.ERROR_KEPT, "ordinary").ce.value == pytest.approx(
        result.cell("scaffold", "zero", "ordinary").ce.value, rel=1e-5)
    assert len(result.cell("random", "zero", "all").per_basis_ratio) == 2
    like = [c for c in result.comparisons if c.like_for_like]
    assert like and all(c.numerator.split(":")[1] == c.denominator.split(":")[1] for c in like)
    assert {c.reaches_2 for c in result.comparisons} <= {"yes", "no", "undecided"}
    beyond = {(c.numerator, c.denominator, c.positions) for c in result.comparisons if c.question == "beyond_mean"}
    assert beyond == {(f"{s}:{op}", f"{den}:{op}", pos) for s in ("scaffold", "span_u") for den in ("pca_mean", "mean")
                      for op in at.OPERATORS for pos in at.POSITIONS}
    assert {c.question for c in result.comparisons if c.denominator.startswith("random")} == {"control"}
    assert result.n_fit_contexts == 6 and result.forwards > 0 and result.wall_s > 0
    assert result.random_bases == 2 and result.seed == 0
    # the stored per-context sums give back every stored cell's point estimate
    sums = result.context_sums
    assert set(sums.ce) == {f"{s}:{op}:{pos}" for s in ("scaffold", "pca", "pca_mean", "mean", "random")
                            for op in at.OPERATORS for pos in at.POSITIONS}
    assert set(sums.random_ce) == {f"random:{op}:{pos}" for op in at.OPERATORS for pos in at.POSITIONS}
    assert sum(sums.predictions) == result.n_predictions and len(sums.clean) == 6
    for key, per_context in sums.ce.items():
        subject, op, pos = key.split(":")
        assert sum(per_context) / sum(sums.clean) == pytest.approx(result.cell(subject, op, pos).ratio.value, abs=1e-3)
    per_basis = [sum(b) / sum(sums.clean) for b in sums.random_ce["random:zero:all"]]
    assert per_basis == pytest.approx(result.cell("random", "zero", "all").per_basis_ratio, abs=1e-3)
    data = analyses.to_json(result)
    again = analyses.from_json(at.AblationTableResult, data)
    assert again == analyses.from_json(at.AblationTableResult, data)
    assert again.cells[0].ce == result.cells[0].ce and again.comparisons[0].ce_ratio == result.comparisons[0].ce_ratio
    assert again.context_sums == sums
    (section,) = at.sections(result)
    assert section.title == "Causal ablation table" and len(section.tables) == 3
    assert "also removes U V^T b_dec" in section.text            # the centred scaffold's zero reading, named
    assert "beyond the mean" in section.tables[2].caption


def test_new_subjects_remove_the_mean_direction_with_and_without_the_pcs(tiny_lm):
    """pca_mean and mean zeroed at all positions equal the CE of projecting out, by hand, span[top-r PCs, mu]
    (projector from a pseudo-inverse) and mu / |mu|, mu the mean of the ordinary fit rows."""
    d = tiny_lm.d_model
    ids, fit = contexts(4, 10, seed=21), contexts(5, 10, seed=22)
    basis = orthonormalise(torch.randn(d, 2, generator=torch.Generator().manual_seed(23)))
    vectors = orthonormalise(torch.randn(d, d, generator=torch.Generator().manual_seed(24)))
    cfg = at.AblationTableConfig(ablation_subjects="pca_mean,mean", ablation_operators="zero,mean",
                                 ablation_positions="all", ablation_splices=False, rows_per_forward=4)
    result = at.ablation_table(tiny_lm, 1, hybrid(basis, d), ids, fit, vectors, "r2", cfg, sink_factor=0, bootstrap_samples=50)
    mu = lm_passes.position_class_rows(tiny_lm, 1, fit, 8192, sink_factor=0)[0].double().mean(0)
    a = torch.cat([vectors[:, :2].double(), mu[:, None]], 1)
    p_pca_mean = (a @ torch.linalg.pinv(a)).float()
    p_mean = (torch.outer(mu, mu) / mu.dot(mu)).float()

    def ce(edit):
        return tiny_lm.token_ce(ids, layer=1, edit=edit)[:, 1:].double().mean().item()

    assert result.cell("pca_mean", "zero", "all").ce.value == pytest.approx(ce(lambda r: r - r @ p_pca_mean), rel=1e-4)
    assert result.cell("mean", "zero", "all").ce.value == pytest.approx(ce(lambda r: r - r @ p_mean), rel=1e-4)
    assert {c.question for c in result.comparisons} == set()      # no scaffold subject asked for: nothing to compare
    assert result.random_bases == 0 and result.context_sums.random_ce == {}


def test_span_with_against_a_pseudo_inverse():
    from scaffold_sae.subspace import span_with

    g = torch.Generator().manual_seed(0)
    q = orthonormalise(torch.randn(9, 3, generator=g, dtype=torch.float64))
    v = torch.randn(9, generator=g, dtype=torch.float64)
    both = span_with(q, v)
    assert both.shape == (9, 4) and torch.allclose(both.t() @ both, torch.eye(4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(both[:, :3], q)                               # the PCs come first, unchanged
    a = torch.cat([q, v[:, None]], 1)
    assert torch.allclose(both @ both.t(), a @ torch.linalg.pinv(a), atol=1e-10)
    inside = q @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)    # a vector already in the span adds nothing
    assert torch.equal(span_with(q, inside), q)


def test_random_bases_are_drawn_afresh_for_each_seed():
    first, again, second = at.random_bases(16, 3, 10, 0), at.random_bases(16, 3, 10, 0), at.random_bases(16, 3, 10, 1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))          # reproducible within a seed
    for q in first + second:
        assert torch.allclose(q.t() @ q, torch.eye(3), atol=1e-5)
    overlap = [(i, j) for i, a in enumerate(first) for j, b in enumerate(second) if torch.allclose(a, b)]
    assert overlap == []                                                 # no basis shared between seeds
    assert len({tuple(q.flatten()[:4].tolist()) for q in first}) == 10


def test_crossed_bootstrap_against_a_nested_loop():
    """Bases and contexts resampled in each replicate: the interval equals a direct double loop over the same draws,
    it is wider than an interval over contexts with bases averaged first, and one basis gives paired_bootstrap."""
    import numpy as np

    from scaffold_sae.stats import crossed_bootstrap, paired_bootstrap

    rng = np.random.default_rng(5)
    n, g, n_boot = 30, 6, 400
    clean = rng.uniform(90, 110, n)
    values = np.stack([clean, clean * 1.3 + rng.normal(0, 3, n)], 1)
    scale = rng.uniform(1.0, 3.0, g)                                      # bases that differ a lot
    grouped = (clean[None, :] * scale[:, None] + rng.normal(0, 3, (g, n)))[:, :, None]

    def statistic(s):
        return np.stack([s[..., 1] / s[..., 0], s[..., 2] / s[..., 0], s[..., 2] / s[..., 1]], -1)

    est = crossed_bootstrap(values, grouped, statistic, n_boot, seed=7)
    ctx_draws = np.random.default_rng(7).integers(0, n, size=(n_boot, n))
    basis_draws = np.random.default_rng([7, 1]).integers(0, g, size=(n_boot, g))
    samples = []
    for b in range(n_boot):
        c0 = c1 = r = 0.0
        for j in ctx_draws[b]:
            c0 += values[j, 0]
            c1 += values[j, 1]
        for i in basis_draws[b]:
            total = 0.0
            for j in ctx_draws[b]:
                total += grouped[i, j, 0]
            r += total / g
        samples.append([c1 / c0, r / c0, r / c1])
    low, high = np.percentile(np.array(samples), [2.5, 97.5], axis=0)
    point = [values[:, 1].sum() / clean.sum(), grouped.sum(1).mean(0)[0] / clean.sum(),
             grouped.sum(1).mean(0)[0] / values[:, 1].sum()]
    for e, p, lo, hi in zip(est, point, low, high):
        assert (e.value, e.low, e.high) == (pytest.approx(p), pytest.approx(lo), pytest.approx(hi))
    averaged = paired_bootstrap(np.concatenate([values, grouped.mean(0)], 1), statistic, n_boot, seed=7)
    assert est[0] == averaged[0]                                           # columns without bases: unchanged
    assert est[1].high - est[1].low > 3 * (averaged[1].high - averaged[1].low)
    one = crossed_bootstrap(values, grouped[:1], statistic, n_boot, seed=7)
    plain = paired_bootstrap(np.concatenate([values, grouped[0]], 1), statistic, n_boot, seed=7)
    assert [(e.value, e.low, e.high) for e in one] == [pytest.approx((e.value, e.low, e.high)) for e in plain]
    with pytest.raises(ValueError, match="same contexts"):
        crossed_bootstrap(values, grouped[:, :5], statistic, n_boot)


def test_old_comparisons_load_with_their_question():
    old = {"numerator": "scaffold:zero", "denominator": "random:zero", "positions": "all", "like_for_like": True,
           "why": "", "ce_ratio": {"value": 1.0, "low": 0.9, "high": 1.1},
           "excess_ratio": {"value": 1.0, "low": 0.9, "high": 1.1}, "reaches_2": "no"}
    assert analyses.from_json(at.Comparison, old).question == "control"
    assert analyses.from_json(at.Comparison, {**old, "denominator": "pca:mean"}).question == "paper"
    assert analyses.from_json(at.Cell, {"subject": "pca", "operator": "zero", "positions": "all",
                                        **{k: old["ce_ratio"] for k in ("ce", "ratio", "delta", "kl")}}).dims == 0


def test_zeroing_a_centred_scaffold_also_removes_its_share_of_b_dec(tiny_lm):
    """With b_dec != 0 the 'scaffold, zero' cell is x - U V^T x and the error-kept splice is x - U V^T (x - b_dec):
    each against the same edit computed by hand."""
    d = tiny_lm.d_model
    ids, fit = contexts(4, 10, seed=11), contexts(4, 10, seed=12)
    basis = orthonormalise(torch.randn(d, 2, generator=torch.Generator().manual_seed(5)))
    sae = hybrid(basis, d)
    with torch.no_grad():
        sae.b_dec.copy_(3.0 * basis[:, 0] + torch.randn(d, generator=torch.Generator().manual_seed(6)))
    cfg = at.AblationTableConfig(ablation_subjects="scaffold", ablation_operators="zero", ablation_positions="all",
                                 rows_per_forward=4)
    result = at.ablation_table(tiny_lm, 1, sae, ids, fit, basis, "r2", cfg, sink_factor=0, bootstrap_samples=50)
    proj = basis @ basis.t()

    def ce(edit):
        return tiny_lm.token_ce(ids, layer=1, edit=edit)[:, 1:].double().mean().item()

    zero, kept = ce(lambda r: r - r @ proj), ce(lambda r: r - (r - sae.b_dec) @ proj)
    assert result.cell("scaffold", "zero", "all").ce.value == pytest.approx(zero, rel=1e-4)
    assert result.cell(at.WITHOUT_SCAFFOLD, at.ERROR_KEPT, "all").ce.value == pytest.approx(kept, rel=1e-4)
    assert abs(zero - kept) > 1e-3


def test_fit_and_ce_contexts_are_disjoint(tiny_lm, monkeypatch):
    """Every mean, PCA basis and donor is fitted on contexts that are never CE contexts."""
    from scaffold_sae.analyses import runner
    from test_analysis import tiny_cfg

    d = tiny_lm.d_model
    ids = contexts(10, 16, seed=8)
    ids[:, 1] = torch.arange(10) + 4                  # every context distinct
    seen = {"fit": [], "ce": []}
    real_rows, real_losses, real_heldout = at.position_class_rows, at.condition_losses, runner.heldout_activations

    def rows(lm, layer, fit, *a, **k):
        seen["fit"].append(fit)
        return real_rows(lm, layer, fit, *a, **k)

    def losses(lm, layer, ce, *a, **k):
        seen["ce"].append(ce)
        return real_losses(lm, layer, ce, *a, **k)

    def heldout(lm, layer, fit, *a, **k):
        seen["fit"].append(fit)
        return real_heldout(lm, layer, fit, *a, **k)

    monkeypatch.setattr(at, "position_class_rows", rows)
    monkeypatch.setattr(at, "condition_losses", losses)
    monkeypatch.setattr(runner, "heldout_activations", heldout)
    saes = {"r0": HybridSAE(SAEConfig(arch="batchtopk", d_in=d, width=32, k=4, rank=0)).eval(),
            "r2": hybrid(torch.eye(d)[:, :2], d)}
    cfg = tiny_cfg(analysis_ce_tokens=64, ce_tokens=64, ablation_random_bases=1, bootstrap_samples=50)
    only = {name: a for name, a in analyses.registered().items() if name in ("structure", "ablation_table")}
    results, _ = analyses.run_analyses(tiny_lm, 1, saes, "r0", None, ids, cfg, progress=False, analyses=only)
    ce_rows = {tuple(r.tolist()) for c in seen["ce"] for r in c}
    fit_rows = {tuple(r.tolist()) for c in seen["fit"] for r in c}
    assert len(ce_rows) == 4 and len(fit_rows) == 6 and not ce_rows & fit_rows
    assert results["ablation_table"].n_contexts == 4 and results["ablation_table"].n_fit_contexts == 6
    ce, fit = analyses.split_contexts(ids, analyses.SharedConfig(analysis_ce_tokens=64, ce_tokens=64, ctx_len=16))
    assert ce.shape[0] + fit.shape[0] == 10 and not {tuple(r.tolist()) for r in ce} & {tuple(r.tolist()) for r in fit}
    with pytest.raises(analyses.AnalysisError, match="none to fit on"):
        analyses.split_contexts(ids[:4], analyses.SharedConfig(analysis_ce_tokens=64, ce_tokens=64))


@pytest.mark.slow
def test_running_from_the_cached_layer_is_exact_on_gemma3():
    """Gemma-3 picks each block's attention type (sliding / full) by its index: skipping blocks must keep that."""
    from scaffold_sae.models import load_model

    lm = load_model("gemma3-270m")
    ids = lm.tokenizer("The capital of France is Paris, and the capital of Spain is", return_tensors="pt").input_ids
    full = lm.logits(ids)
    fast = lm.logits_from(lm.residual(ids, 9), 9)
    assert (fast - full).abs().max() <= 1e-4 * (1 + full.abs().max())
    assert lm_passes.skips_exactly(lm, 9, ids)
