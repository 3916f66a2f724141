"""The like-for-like redundancy curve: sizes, density matching, latent ablation against explicit references."""

import torch

from scaffold_sae.analyses import redundancy
from scaffold_sae.sae import HybridSAE, SAEConfig


def test_curve_sizes_span_one_to_all_and_hold_the_papers_share():
    sizes = redundancy.curve_sizes(16_384, 8)
    assert sizes[0] == (1, False) and sizes[-1] == (16_384, False)
    assert (787, True) in sizes and sum(p for _, p in sizes) == 1
    assert [n for n, _ in sizes] == sorted({n for n, _ in sizes})
    assert (98, True) in redundancy.curve_sizes(2048, 8)


def test_one_curve_point_is_the_papers_share_alone():
    assert redundancy.curve_sizes(2048, 1) == [(98, True)]
    assert redundancy.curve_sizes(2048, 2) == [(1, False), (98, True), (2048, False)]


def test_density_matched_latents_are_outside_the_set_distinct_and_from_the_same_bin():
    m = 200
    density = torch.linspace(0.0, 0.5, m)[torch.randperm(m, generator=torch.Generator().manual_seed(0))]
    chosen = torch.argsort(density, descending=True)[:15]          # the 15 densest: one bin holds 10 latents
    matched = redundancy.density_matched(chosen, density, torch.Generator().manual_seed(1), bins=20)
    assert matched.numel() == 15 and len(set(matched.tolist())) == 15
    assert not set(matched.tolist()) & set(chosen.tolist())
    # S fills the top bin and half of the next: the 15 matches come from the nearest bins, densest first
    ranks = torch.argsort(torch.argsort(density))
    assert ranks[matched].min() >= m - 40
    mid = torch.tensor([100])
    assert abs(int(ranks[redundancy.density_matched(mid, density, torch.Generator().manual_seed(2))]) - 100) < 10


def test_latent_ablation_zero_and_mean_against_explicit_references():
    torch.manual_seed(0)
    sae = HybridSAE(SAEConfig(arch="topk", d_in=8, width=12, k=3, rank=0)).eval()
    x = torch.randn(10, 8)
    chosen = torch.tensor([1, 4, 7])
    mean_codes = torch.rand(12)
    codes = sae.encode(x)
    for op in ("zero", "mean"):
        out = redundancy.latent_edit(sae, chosen, op, mean_codes, "threshold")(x)
        reference = x.clone()
        for i in chosen.tolist():
            c = 0.0 if op == "zero" else float(mean_codes[i])
            reference -= (codes[:, i:i + 1] - c) * sae.W_dec[i]
        assert torch.allclose(out, reference, atol=1e-5), op


def test_a_control_with_too_few_latents_outside_the_set_is_reported_not_printed():
    """Past N = m/2 fewer than N latents lie outside the top N: the report names the shortfall instead of a ratio,
    and the count survives a JSON round trip."""
    from scaffold_sae.stats import Estimate

    density = torch.rand(10, generator=torch.Generator().manual_seed(0))
    assert redundancy.density_matched(torch.arange(8), density, torch.Generator().manual_seed(0)).numel() == 2
    e = Estimate(1.5, 1.4, 1.6)
    points = [redundancy.CurvePoint(2, "zero", e, e, e, e, False, 2),
              redundancy.CurvePoint(8, "zero", e, e, e, e, False, 2)]
    quantiles = {"q50": 0.1, "q90": 0.2, "q99": 0.3, "max": 0.4}
    result = redundancy.RedundancyResult("base", "hyb", 2, 4, "rule", 0.5, 0.5, 0, [], [], quantiles, 0, 0, None, None,
                                         curve=points, curve_contexts=3)
    curve_table = redundancy.sections(result)[0].tables[-1]
    assert curve_table.rows[0][3] == "1.5 [1.4, 1.6]"
    assert curve_table.rows[1][3] == curve_table.rows[1][6] == "n/a: only 2 latents lie outside the top 8"
    from scaffold_sae.analyses.base import from_json, to_json
    assert from_json(redundancy.RedundancyResult, to_json(result)).curve[1].n_random == 2
