"""Redundancy: does the plain SAE spread the scaffold over many features? The baseline's decoder rows are scored by
the share of their direction inside span(U) of the primary hybrid (||Q^T w_i||^2 / ||w_i||^2, r/d for a random
direction); the aligned ones are ablated (keeping the SAE's error term) and the CE compared with removing the
scaffold (from the causality analysis, which runs first).

Like for like (issue 11 item 4): the curve ablates the N most aligned baseline latents, N log-spaced up to all of
them, under zero (x - sum f_i w_i) and mean (x - sum (f_i - mean f_i) w_i) ablation, against N random latents matched
in firing density and against removing the scaffold under the same operator (the causal ablation table's cells), each
CE with a paired bootstrap 95% interval over the CE contexts; codes' means and densities come from fit tokens."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from scaffold_sae import probing
from scaffold_sae.analyses.base import AnalysisContext, AnalysisError, register
from scaffold_sae.analyses.codes import feature_ablation_edit, firing_density
from scaffold_sae.analyses.ablation_table import rows_edit
from scaffold_sae.evals import DENSE
from scaffold_sae.lm_passes import ablation_ce, condition_losses
from scaffold_sae.stats import Estimate, paired_bootstrap
from scaffold_sae.report import Section, Table, format_number
from scaffold_sae.subspace import alignment_scores, span_basis


@dataclass
class RedundancyConfig:
    """Settings of the redundancy analysis (it uses the primary hybrid and the CE prefix of the contexts)."""

    redundancy_factor: float = 10.0
    """A baseline feature is scaffold-aligned when the share of its decoder direction inside span(U) exceeds this
    multiple of a random direction's r/d (capped at 0.5)."""
    redundancy_points: int = 8
    """Values of N (log-spaced from 1 to all latents, plus the paper's share 787/16384 of the dictionary) in the
    like-for-like curve; 1: the paper's share only; 0 skips the curve."""
    redundancy_operators: str = "zero,mean"
    """Comma-separated operators of the curve: zero, mean."""


PAPER_SHARE = 787 / 16_384
"""The paper's 787 ablated features of a 16,384-latent dictionary (4.8%)."""


@dataclass
class CurvePoint:
    """CE with N baseline latents ablated under one operator: the N most aligned with span(U), and N random latents
    matched in firing density."""

    n: int
    operator: str
    aligned: Estimate
    """CE / clean with the N most aligned latents ablated."""
    random: Estimate
    """CE / clean with N density-matched random latents ablated."""
    aligned_ce: Estimate
    random_ce: Estimate
    paper_share: bool = False
    """This N is the paper's share of the dictionary (787 / 16,384)."""
    n_random: int | None = None
    """How many random latents the control ablated: N, or fewer when fewer than N latents lie outside the top N
    (then the control is not comparable and the report says so instead of printing its ratio)."""


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
    curve: list[CurvePoint] | None = None
    """The like-for-like curve (None when skipped)."""
    scaffold_removed: dict[str, Estimate] | None = None
    """operator -> CE / clean with the scaffold term ablated by that operator at ordinary positions (from the causal
    ablation table), for the curve."""
    curve_contexts: int | None = None


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
    dense = firing_density(baseline, x, inference) > DENSE
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
    if config.redundancy_points > 0:
        like_for_like_curve(context, config, result, base, context.saes[name], mode)
    return result


def curve_sizes(m: int, points: int) -> list[tuple[int, bool]]:
    """(N, is the paper's share): `points` log-spaced sizes from 1 to m, and round(m x 787 / 16384); points = 1:
    the paper's share alone."""
    paper = max(1, int(round(m * PAPER_SHARE)))
    sizes = {int(round(v)) for v in np.logspace(0, np.log10(m), points)} if points > 1 else set()
    return [(n, n == paper) for n in sorted(sizes | {paper})]


def density_matched(order: torch.Tensor, density: torch.Tensor, generator: torch.Generator,
                    bins: int = 20) -> torch.Tensor:
    """For each latent of `order` (a set S), a distinct latent outside S from the same firing-density bin (bins of
    equal count over the density ranks; the nearest bin with one left when a bin runs out). Fewer than |S| only when
    fewer than |S| latents lie outside S."""
    m = density.numel()
    rank_of = torch.empty(m, dtype=torch.long)
    rank_of[torch.argsort(density, stable=True)] = torch.arange(m)
    bin_of = (rank_of * bins) // m
    chosen = set(order.tolist())
    pools = {b: [] for b in range(bins)}
    for i in torch.randperm(m, generator=generator).tolist():
        if i not in chosen:
            pools[int(bin_of[i])].append(i)
    out = []
    for i in order.tolist():
        home = int(bin_of[i])
        for b in sorted(range(bins), key=lambda b: (abs(b - home), b)):
            if pools[b]:
                out.append(pools[b].pop())
                break
    return torch.tensor(out, dtype=torch.long)


def latent_edit(sae, latents: torch.Tensor, operator: str, mean_codes: torch.Tensor, inference: str):
    """x -> x - sum_{i in S} (f_i(x) - c_i) w_i, c = 0 (zero) or the fit mean of the codes (mean); error kept."""
    from scaffold_sae.analyses.codes import codes_of

    idx = latents.long()
    w = sae.W_dec.detach()[idx].float().cpu()
    centre = torch.zeros(idx.numel()) if operator == "zero" else mean_codes[idx].float()

    def rows(x: torch.Tensor) -> torch.Tensor:
        codes = codes_of(sae, x, inference)[:, idx].float().cpu()
        return x - ((codes - centre) @ w).to(x.device)

    return rows


def like_for_like_curve(context: AnalysisContext, config: RedundancyConfig, result: RedundancyResult, base, hybrid,
                        inference: str) -> None:
    """Fill result.curve: the N most aligned latents vs N density-matched random ones, zero and mean ablated."""
    from scaffold_sae.analyses.ablation_table import OPERATORS, parse_choices
    from scaffold_sae.analyses.codes import codes_of

    operators = parse_choices(config.redundancy_operators, OPERATORS[:2], "redundancy_operators")
    scores = alignment_scores(base.W_dec.detach().cpu(), span_basis(hybrid.U))
    order = torch.argsort(scores, descending=True)
    x = context.activations
    codes = torch.cat([codes_of(base, part, inference).float().cpu() for part in x.split(4096)])
    density, mean_codes = (codes != 0).double().mean(0), codes.double().mean(0)
    generator = torch.Generator().manual_seed(context.shared.seed)
    sizes = curve_sizes(int(base.cfg.width), config.redundancy_points)
    conditions, n_random = {}, {}
    for n, _ in sizes:
        aligned = order[:n]
        matched = density_matched(aligned, density, generator)
        n_random[n] = int(matched.numel())
        for op in operators:
            conditions[f"aligned|{n}|{op}"] = rows_edit(latent_edit(base, aligned, op, mean_codes, inference),
                                                        "ordinary")
            conditions[f"random|{n}|{op}"] = rows_edit(latent_edit(base, matched, op, mean_codes, inference),
                                                       "ordinary")
    losses = condition_losses(context.lm, context.layer, context.ce_contexts, conditions, context.ce_batch_size,
                              8, context.shared.sink_factor, context.progress)
    values = np.concatenate([losses.predictions.numpy()[:, None], losses.clean.numpy()[:, None],
                             losses.ce.numpy().T], 1)
    k = len(losses.names)
    est = paired_bootstrap(values, lambda s: np.concatenate([s[..., 2:] / s[..., 1:2], s[..., 2:] / s[..., :1]], -1),
                           context.shared.bootstrap_samples, context.shared.seed)
    ratio = dict(zip(losses.names, est[:k]))
    ce = dict(zip(losses.names, est[k:]))
    result.curve = [CurvePoint(n, op, ratio[f"aligned|{n}|{op}"], ratio[f"random|{n}|{op}"], ce[f"aligned|{n}|{op}"],
                               ce[f"random|{n}|{op}"], paper, n_random[n]) for n, paper in sizes for op in operators]
    result.curve_contexts = int(context.ce_contexts.shape[0])
    table = context.results.get("ablation_table")
    if table is not None:
        result.scaffold_removed = {c.operator: c.ratio for c in table.cells
                                   if c.subject == "scaffold" and c.positions == "ordinary" and c.operator in operators}


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
    tables = [geo, table, top]
    if result.curve:
        def iv(e):
            return f"{format_number(e.value)} [{format_number(e.low)}, {format_number(e.high)}]"

        removed = result.scaffold_removed or {}

        def control(p, e):
            if p.n_random is None or p.n_random == p.n:
                return iv(e)
            return f"n/a: only {p.n_random} latents lie outside the top {p.n}"
        tables.append(Table(
            ["N latents ablated", "operator", "top-N aligned: CE / clean", "N density-matched random: CE / clean",
             "scaffold removed, same operator", "aligned CE", "random CE", "paper's share (787/16384)"],
            [[p.n, p.operator, iv(p.aligned), control(p, p.random),
              iv(removed[p.operator]) if p.operator in removed else None, iv(p.aligned_ce), control(p, p.random_ce),
              "yes" if p.paper_share else ""] for p in result.curve],
            caption=f"Like for like: {result.baseline}'s latents ranked by alignment with span(U), zero- or "
                    f"mean-ablated (error kept) at ordinary positions, {result.curve_contexts} CE contexts, paired "
                    f"bootstrap 95% intervals; the scaffold column is the causal ablation table's scaffold cell; "
                    f"the random latents are drawn outside the top N, so past N = m/2 there are too few of them"))
    return [Section("Scaffold redundancy in the baseline SAE", text, tables=tables)]


register("redundancy", RedundancyConfig, RedundancyResult, run, sections)
