"""Redundancy: does the plain SAE spread the scaffold over many features? The baseline's decoder rows are scored by
the share of their direction inside span(U) of the primary hybrid (||Q^T w_i||^2 / ||w_i||^2, r/d for a random
direction); the aligned ones are ablated (keeping the SAE's error term) and the CE compared with removing the
scaffold (from the causality analysis, which runs first)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scaffold_sae import probing
from scaffold_sae.analyses.base import AnalysisContext, AnalysisError, register
from scaffold_sae.analyses.codes import feature_ablation_edit, firing_density
from scaffold_sae.lm_passes import ablation_ce
from scaffold_sae.report import Section, Table, format_number
from scaffold_sae.subspace import alignment_scores, span_basis


@dataclass
class RedundancyConfig:
    """Settings of the redundancy analysis (it uses the primary hybrid and the CE prefix of the contexts)."""

    redundancy_factor: float = 10.0
    """A baseline feature is scaffold-aligned when the share of its decoder direction inside span(U) exceeds this
    multiple of a random direction's r/d (capped at 0.5)."""


@dataclass
class RedundancyResult:
    """Baseline SAE features aligned with the scaffold's span, and what ablating them does to CE."""

    baseline: str
    hybrid: str
    rank: int
    d_model: int
    rule: str
    threshold: float
    random_expectation: float
    """r / d: the expected score of a random direction."""
    n_aligned: int
    top_features: list[int]
    """The most aligned features, best first (at most 50)."""
    top_scores: list[float]
    score_quantiles: dict[str, float]
    dense_latents: int
    """Baseline latents firing on more than 10% of the analysis tokens."""
    dense_aligned: int
    """Of those, how many are aligned (selected by the rule)."""
    mean_score_dense: float | None
    mean_score_other: float | None
    ce_clean: float | None = None
    ce_aligned_ablated: float | None = None
    ratio_aligned_ablated: float | None = None
    ce_random_ablated: float | None = None
    """The same number of random (non-aligned) baseline features ablated, for scale."""
    ratio_random_ablated: float | None = None
    ratio_scaffold_removed: float | None = None
    """The hybrid's scaffold removed (from the causality analysis)."""


def aligned_features(scores: torch.Tensor, rank: int, d: int, factor: float = 10.0) -> tuple[torch.Tensor, float]:
    """Features whose score exceeds min(0.5, factor * r / d), best first; and that threshold. The rule: a feature
    counts as aligned when its decoder direction has `factor` times the in-span energy a random direction would
    have, capped at 0.5 (more in span(U) than outside it always counts)."""
    threshold = min(0.5, factor * rank / d)
    idx = torch.nonzero(scores > threshold).flatten()
    return idx[torch.argsort(scores[idx], descending=True)], threshold


def redundancy_scores(baseline, hybrid, x: torch.Tensor, baseline_name: str = "baseline",
                      hybrid_name: str = "hybrid", factor: float = 10.0,
                      inference: str = "batchtopk") -> tuple[RedundancyResult, torch.Tensor]:
    """The geometric part of the redundancy analysis (no model forward); returns the result and the indices of
    the aligned features. `x` [n, d] gives the baseline's dense latents."""
    r, d = int(hybrid.cfg.rank), int(hybrid.cfg.d_in)
    if r < 1:
        raise AnalysisError(f"SAE {hybrid_name!r} has no scaffold (rank 0): redundancy needs a hybrid")
    scores = alignment_scores(baseline.W_dec.detach().cpu(), span_basis(hybrid.U))
    idx, threshold = aligned_features(scores, r, d, factor)
    dense = firing_density(baseline, x, inference) > 0.1
    aligned = torch.zeros_like(dense)
    aligned[idx] = True
    quant = {f"q{int(q * 100)}": float(torch.quantile(scores, q)) for q in (0.5, 0.9, 0.99)}
    quant["max"] = float(scores.max())
    result = RedundancyResult(
        baseline=baseline_name, hybrid=hybrid_name, rank=r, d_model=d,
        rule=f"score = ||P_U w_i||^2 / ||w_i||^2 > min(0.5, {factor:g} x r/d)", threshold=threshold,
        random_expectation=r / d, n_aligned=int(idx.numel()), top_features=[int(i) for i in idx[:50]],
        top_scores=[float(scores[i]) for i in idx[:50]], score_quantiles=quant,
        dense_latents=int(dense.sum()), dense_aligned=int((dense & aligned).sum()),
        mean_score_dense=float(scores[dense].mean()) if dense.any() else None,
        mean_score_other=float(scores[~dense].mean()) if (~dense).any() else None)
    return result, idx


def run(context: AnalysisContext, config: RedundancyConfig) -> RedundancyResult | None:
    """Scores, and the CE with the aligned (and as many random) baseline features ablated, on the same contexts and
    batches as the causality analysis (whose clean CE it reuses when it ran). None without hybrids."""
    if not context.hybrids():
        return None
    name = context.primary_hybrid()
    base = context.saes[context.baseline]
    mode = probing.inference_mode(base)
    result, idx = redundancy_scores(base, context.saes[name], context.activations, context.baseline, name,
                                    config.redundancy_factor, mode)
    aligned = set(idx.tolist())
    others = torch.tensor([i for i in range(base.cfg.width) if i not in aligned], dtype=torch.long)
    generator = torch.Generator().manual_seed(context.shared.seed)
    chosen = others[torch.randperm(others.numel(), generator=generator)[:idx.numel()]]
    edits = {"features:aligned": feature_ablation_edit(base, idx, mode),
             "features:random": feature_ablation_edit(base, chosen, mode)} if idx.numel() else {}
    causality = context.results.get("causality")
    if causality is not None:
        result.ratio_scaffold_removed = causality.ratio("scaffold:remove")
    ce: dict[str, float] = {"clean": causality.ce_clean} if causality is not None else {}
    if edits or causality is None:
        ce.update(ablation_ce(context.lm, context.layer, context.ce_contexts, edits, context.ce_batch_size,
                              context.shared.sink_factor, context.progress, clean=causality is None)[0])
    result.ce_clean = ce["clean"]
    if edits:
        result.ce_aligned_ablated = ce["features:aligned"]
        result.ratio_aligned_ablated = ce["features:aligned"] / ce["clean"]
        result.ce_random_ablated = ce["features:random"]
        result.ratio_random_ablated = ce["features:random"] / ce["clean"]
    else:
        result.ratio_aligned_ablated = result.ratio_random_ablated = 1.0
    return result


def sections(result: RedundancyResult) -> list[Section]:
    rows = [["baseline features aligned with span(U) ablated (error term kept)", result.n_aligned,
             result.ce_aligned_ablated, result.ratio_aligned_ablated],
            ["as many random baseline features ablated", result.n_aligned, result.ce_random_ablated,
             result.ratio_random_ablated],
            [f"{result.hybrid} scaffold removed", "-", None, result.ratio_scaffold_removed]]
    table = Table(["ablation", "features", "CE (nats)", "CE / clean"], rows,
                  caption=f"{result.baseline} features vs span(U) of {result.hybrid} (rank {result.rank}, "
                          f"d = {result.d_model}); clean CE {format_number(result.ce_clean)}")
    q = result.score_quantiles
    geo = Table(["rule", "threshold", "random expectation r/d", "aligned", "dense baseline latents (>10%)",
                 "dense and aligned", "mean score dense", "mean score others", "median score", "90th pct", "99th pct",
                 "max score"],
                [[result.rule, result.threshold, result.random_expectation, result.n_aligned, result.dense_latents,
                  result.dense_aligned, result.mean_score_dense, result.mean_score_other, q["q50"], q["q90"],
                  q["q99"], q["max"]]],
                caption="How much of each baseline decoder direction lies in the scaffold's span")
    top = Table(["feature", "score"], [[i, sc] for i, sc in zip(result.top_features, result.top_scores)],
                caption="The most aligned baseline features (at most 50)")
    text = ("Does the plain SAE encode the scaffold redundantly, spread over many features? (Paper: ablating the 787 "
            "most aligned features raises CE only 2.9x, against 7.5x for removing the scaffold.) Features are ranked "
            "by the share of their decoder direction inside span(U); the rule that picks them is in the table. "
            "Ablation zeroes their codes and keeps the SAE's error term, so only their contribution leaves the "
            "residual stream.")
    return [Section("Scaffold redundancy in the baseline SAE", text, tables=[geo, table, top])]


register("redundancy", RedundancyConfig, RedundancyResult, run, sections)
