"""What the scaffold is: structure, causality, redundancy and rank selection (issue 5).

Each analysis is a function a researcher can call alone; it returns a typed dataclass (JSON via
dataclasses.asdict) and a report `Section`. `run_analyses` runs them all (plus probing, see probing.py) inside
the study and caches the results in <out>/analyses.json.

Conventions, shared with evals.py: statistics use the held-out positions `evals.eval_mask` keeps (not position 0,
not BOS/special tokens, not attention sinks); every edit of the residual stream is applied at those positions only
(BOS and sinks keep their original values), and CE leaves out the prediction made at position 0.

Definitions (one place):
- Subspaces. Scaffold: span(U), orthonormalised (U may be a free, non-orthonormal factor). PCA: the top-r
  eigenvectors of the covariance of held-out activations around their mean mu. Random: r orthonormal Gaussian
  directions (one basis per seed).
- Ablations of a rank-r linear component A = L R^T (scaffold: L = U, R = V; PCA / random: L = R = an orthonormal
  basis Q), applied to a token x:
    zero:   x - A x                       the component set to zero (the literal "projected out");
    remove: x - A (x - b_dec)              the scaffold only: its own output term U V^T (x - b_dec) removed;
    mean:   x - A (x - mu)                 the component replaced by its mean over held-out tokens.
  "mean" keeps the average and destroys the per-token information; "zero" also moves the activation off its
  distribution. A large CE rise under "mean" says the per-token content is needed; a rise under "zero" alone says
  the model needs the offset, i.e. the edit is off-distribution.
- Outlier (massive-activation) dimensions: dims j with mean_n |x_nj| > outlier_factor x the median over dims of
  mean_n |x_nj| (default 10x). Their energy share in a subspace with orthonormal basis Q is
  sum_n ||Q^T o_n||^2 / sum_n ||o_n||^2 where o_n is x_n (uncentred) or x_n - mu (centred) with every other
  coordinate zeroed; per dim it is ||Q^T e_j||^2 (1 when e_j lies in the subspace).
- Redundancy score of a baseline decoder row w_i: ||Q^T w_i||^2 / ||w_i||^2 (r/d expected for a random direction).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from scaffold_sae import archs, evals
from scaffold_sae.report import Figure, Section, Series, Table, format_number, jsonable
from scaffold_sae.sae import orthonormalise, random_orthonormal

Rows = Callable[[torch.Tensor], torch.Tensor]
"""An edit of activation rows [n, d] -> [n, d] (applied at eval_mask positions)."""


class AnalysisError(ValueError):
    """An analysis that cannot run as asked."""


# ----------------------------------------------------------------------------------------------------------
# Pure linear algebra (tested against slow references)
# ----------------------------------------------------------------------------------------------------------


def span_basis(u: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis [d, r] of span(u) (u [d, r] of full column rank)."""
    return orthonormalise(u.detach().double().cpu())


def pca(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean [d], eigenvalues [d] (descending) and eigenvectors [d, d] (columns) of the covariance of x [n, d]."""
    x = x.detach().double().cpu()
    mu = x.mean(0)
    xc = x - mu
    cov = xc.t() @ xc / max(1, x.shape[0] - 1)
    values, vectors = torch.linalg.eigh(cov)
    order = torch.argsort(values, descending=True)
    return mu, values[order].clamp_min(0.0), vectors[:, order]


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Principal angles in degrees, ascending, between span(a) and span(b) (a [d, p], b [d, q])."""
    qa, qb = span_basis(a), span_basis(b)
    cosines = torch.linalg.svdvals(qa.t() @ qb).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cosines)).sort().values


def outlier_dims(x: torch.Tensor, factor: float = 10.0) -> tuple[list[int], torch.Tensor, float]:
    """Dims whose mean |x| exceeds factor x the median dim's mean |x|, sorted by mean |x| (largest first);
    also returns every dim's mean |x| and the median."""
    mean_abs = x.detach().double().abs().mean(0).cpu()
    median = float(mean_abs.median())
    dims = torch.nonzero(mean_abs > factor * median).flatten()
    dims = dims[torch.argsort(mean_abs[dims], descending=True)]
    return [int(j) for j in dims], mean_abs, median


def energy_share(x: torch.Tensor, basis: torch.Tensor, dims: list[int]) -> float:
    """sum_n ||Q^T o_n||^2 / sum_n ||o_n||^2 with o_n = x_n restricted to `dims` (other coordinates zero) and
    Q the orthonormal `basis` [d, r]. NaN when there are no dims."""
    if not dims:
        return float("nan")
    idx = torch.tensor(dims)
    xo = x.detach().double().cpu()[:, idx]
    qo = basis.detach().double().cpu()[idx]
    return float((xo @ qo).pow(2).sum() / xo.pow(2).sum().clamp_min(1e-300))


def variance_share(x: torch.Tensor, basis: torch.Tensor) -> float:
    """Share of the total (centred) variance of x [n, d] lying in span(basis) (orthonormal [d, r])."""
    xc = x.detach().double().cpu()
    xc = xc - xc.mean(0)
    return float((xc @ basis.double()).pow(2).sum() / xc.pow(2).sum().clamp_min(1e-300))


def alignment_scores(w_dec: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """||Q^T w_i||^2 / ||w_i||^2 for every decoder row w_i of w_dec [m, d], Q orthonormal [d, r]."""
    w = w_dec.detach().double().cpu()
    inside = (w @ basis.double()).pow(2).sum(1)
    return inside / w.pow(2).sum(1).clamp_min(1e-300)


def participation_ratio(eigenvalues: torch.Tensor) -> float:
    """(sum lambda)^2 / sum lambda^2: the effective number of dimensions of a spectrum."""
    ev = eigenvalues.double().clamp_min(0.0)
    return float(ev.sum() ** 2 / ev.pow(2).sum().clamp_min(1e-300))


def rank_for_share(eigenvalues: torch.Tensor, share: float) -> int:
    """Smallest r whose top-r eigenvalues hold at least `share` of the total."""
    ev = eigenvalues.double().clamp_min(0.0)
    cumulative = ev.cumsum(0) / ev.sum().clamp_min(1e-300)
    return int(torch.searchsorted(cumulative, torch.tensor(share - 1e-12, dtype=torch.float64)).item()) + 1


def spectrum_knee(eigenvalues: torch.Tensor, max_rank: int = 64) -> int:
    """Knee of the log-eigenvalue curve over the first `max_rank` components: the point farthest below the chord
    joining the first and last points (both axes scaled to [0, 1]) is where the spectrum flattens; returns the
    number of PCs before that point (at least 1)."""
    ev = eigenvalues.double().clamp_min(1e-300)[:max_rank]
    if ev.numel() < 3:
        return int(ev.numel())
    y = torch.log10(ev)
    x = torch.linspace(0.0, 1.0, ev.numel(), dtype=torch.float64)
    y = (y - y[-1]) / (y[0] - y[-1]).clamp_min(1e-300)
    chord = 1.0 - x
    return max(1, int(torch.argmax(chord - y).item()))


def sweep_knee(ranks: list[int], dense: list[int], tolerance: float = 0.1) -> int | None:
    """Smallest rank whose dense-latent count achieves (1 - tolerance) of the largest reduction seen in the
    sweep relative to rank 0: dense(r) <= min + tolerance * (dense(0) - min). None without a rank-0 baseline, at
    least two other ranks, or any reduction."""
    pairs = sorted(zip(ranks, dense))
    if len(pairs) < 3 or pairs[0][0] != 0:
        return None
    base, lowest = pairs[0][1], min(d for _, d in pairs)
    if lowest >= base:
        return None
    cut = lowest + tolerance * (base - lowest)
    return next(r for r, d in pairs if d <= cut)


def subspace_edit(left: torch.Tensor, right: torch.Tensor, center: torch.Tensor | None) -> Rows:
    """x -> x - L R^T (x - center) (center None: x - L R^T x)."""
    left, right = left.detach().float(), right.detach().float()
    c = None if center is None else center.detach().float()

    def edit(x: torch.Tensor) -> torch.Tensor:
        xc = x if c is None else x - c.to(x.device)
        return x - (xc @ right.to(x.device)) @ left.to(x.device).t()

    return edit


@torch.no_grad()
def firing_density(sae, x: torch.Tensor, inference: str, chunk: int = 4096) -> torch.Tensor:
    """Per-latent share of the rows of x [n, d] on which the latent fires (codes of chunks of `chunk` rows)."""
    fires = sum((codes_of(sae, part, inference) != 0).sum(0).cpu() for part in x.split(chunk))
    return fires.double() / x.shape[0]


@torch.no_grad()
def codes_of(sae, x: torch.Tensor, inference: str) -> torch.Tensor:
    """Sparse codes of rows x (moved to the SAE's device and dtype)."""
    param = next(iter(sae.parameters()))
    return evals.reconstruct(sae, x.to(param.device, param.dtype), inference).codes


def feature_ablation_edit(sae, features: torch.Tensor, inference: str) -> Rows:
    """Zero the given latents of `sae` keeping its error term: x -> x - sum_{i in S} f_i(x) W_dec[i]."""
    idx = features.long().to(sae.W_dec.device)
    w = sae.W_dec.detach()[idx]

    def edit(x: torch.Tensor) -> torch.Tensor:
        codes = codes_of(sae, x, inference)
        return x - (codes[:, idx] @ w).to(x.device, x.dtype)

    return edit


# ----------------------------------------------------------------------------------------------------------
# Model passes
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def heldout_activations(lm, layer: int, contexts: torch.Tensor, n_tokens: int, batch_size: int = 8,
                        sink_factor: float = evals.DEFAULT_SINK_FACTOR, progress: bool = False) -> torch.Tensor:
    """Up to n_tokens residual rows [n, d] (float32) at the eval_mask positions of the first contexts."""
    rows, count = [], 0
    for batch in evals._batches(contexts, batch_size, progress, desc="analysis: activations"):
        resid = lm.residual(batch, layer)
        x = resid[evals.eval_mask(lm, resid, batch, sink_factor)].float().cpu()
        rows.append(x)
        count += x.shape[0]
        if count >= n_tokens:
            break
    if not count:
        raise AnalysisError("no held-out tokens to analyse: give contexts with at least 2 positions")
    return torch.cat(rows)[:n_tokens]


@torch.no_grad()
def ablation_ce(lm, layer: int, contexts: torch.Tensor, edits: Mapping[str, Rows], batch_size: int = 4,
                sink_factor: float = evals.DEFAULT_SINK_FACTOR, progress: bool = False) -> tuple[dict[str, float], int]:
    """Mean next-token CE (nats) clean and under each edit (applied at eval_mask positions); one full forward
    per condition and batch. Returns ({"clean": ce, name: ce, ...}, number of predictions)."""
    totals = {"clean": 0.0, **{name: 0.0 for name in edits}}
    count = 0
    for batch in evals._batches(contexts, batch_size, progress, desc=f"analysis: CE x{len(edits) + 1}"):
        def masked(rows: Rows) -> Callable[[torch.Tensor], torch.Tensor]:
            def edit(resid: torch.Tensor) -> torch.Tensor:
                keep = evals.eval_mask(lm, resid, batch, sink_factor)
                out = resid.clone()
                out[keep] = rows(resid[keep]).to(resid.dtype)
                return out
            return edit

        clean = lm.token_ce(batch)[:, 1:]
        totals["clean"] += float(clean.double().sum())
        count += clean.numel()
        for name, rows in edits.items():
            totals[name] += float(lm.token_ce(batch, layer, masked(rows))[:, 1:].double().sum())
    if not count:
        raise AnalysisError("no predictions: contexts need at least 3 positions")
    return {name: total / count for name, total in totals.items()}, count


# ----------------------------------------------------------------------------------------------------------
# 1. Structure
# ----------------------------------------------------------------------------------------------------------


@dataclass
class StructureResult:
    """How the scaffold's span relates to the top principal components and the outlier dimensions."""

    sae: str
    rank: int
    n_tokens: int
    """Held-out tokens the statistics use."""
    principal_angles_deg: list[float]
    """Principal angles between span(U) and the top-r PCA subspace, ascending (0 = shared direction)."""
    mean_cos2: float
    """Mean squared cosine of those angles: 1 = identical subspaces, r/d expected by chance."""
    variance_share_scaffold: float
    """Share of the held-out (centred) variance lying in span(U)."""
    variance_share_pca: float
    """Share held by the top-r PCs (the most any r-dim subspace can hold)."""
    scaffold_explained_variance: float
    """1 - FVU of the scaffold alone as a predictor: b_dec + U V^T (x - b_dec)."""
    outlier_rule: str
    outlier_dims: list[int]
    outlier_mean_abs: list[float]
    median_mean_abs: float
    outlier_dim_in_scaffold: list[float]
    """||Q^T e_j||^2 per outlier dim j: how much of that axis lies in span(U)."""
    outlier_energy_scaffold_centred: float
    outlier_energy_scaffold_uncentred: float
    outlier_energy_pca_centred: float
    outlier_energy_pca_uncentred: float


def structure(sae, x: torch.Tensor, name: str = "sae", outlier_factor: float = 10.0,
              pca_result: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> StructureResult:
    """Structure of a hybrid's scaffold on held-out activations x [n, d] (see the module docstring)."""
    r = int(sae.cfg.rank)
    if r < 1:
        raise AnalysisError(f"SAE {name!r} has no scaffold (rank 0): structure needs a hybrid")
    mu, values, vectors = pca_result if pca_result is not None else pca(x)
    q = span_basis(sae.U)
    u, v, b = (t.detach().double().cpu() for t in (sae.U, sae.V, sae.b_dec))
    p = vectors[:, :r]
    angles = principal_angles(q, p)
    dims, mean_abs, median = outlier_dims(x, outlier_factor)
    x64 = x.double()
    with torch.no_grad():
        scaffold_pred = b + (x64 - b) @ v @ u.t()
    return StructureResult(
        sae=name, rank=r, n_tokens=int(x.shape[0]),
        principal_angles_deg=[float(a) for a in angles],
        mean_cos2=float(torch.cos(torch.deg2rad(angles)).pow(2).mean()),
        variance_share_scaffold=variance_share(x, q),
        variance_share_pca=float(values[:r].sum() / values.sum().clamp_min(1e-300)),
        scaffold_explained_variance=1.0 - evals.fvu(x, scaffold_pred),
        outlier_rule=f"mean |x_j| > {outlier_factor:g} x median over dims of mean |x_j|",
        outlier_dims=dims, outlier_mean_abs=[float(mean_abs[j]) for j in dims], median_mean_abs=median,
        outlier_dim_in_scaffold=[float(q[j].pow(2).sum()) for j in dims],
        outlier_energy_scaffold_centred=energy_share(x - mu.float(), q, dims),
        outlier_energy_scaffold_uncentred=energy_share(x, q, dims),
        outlier_energy_pca_centred=energy_share(x - mu.float(), p, dims),
        outlier_energy_pca_uncentred=energy_share(x, p, dims),
    )


def structure_section(results: list[dict]) -> Section:
    rows = [[s["sae"], s["rank"], s["n_tokens"], s["mean_cos2"], s["variance_share_scaffold"], s["variance_share_pca"],
             s["scaffold_explained_variance"], s["outlier_energy_scaffold_centred"],
             s["outlier_energy_scaffold_uncentred"], s["outlier_energy_pca_centred"],
             s["outlier_energy_pca_uncentred"]] for s in results]
    table = Table(["SAE", "rank", "tokens", "mean cos^2 (angles)", "variance in span(U)", "variance in top-r PCs",
                   "scaffold alone: expl. var.", "outlier energy in span(U), centred",
                   "outlier energy in span(U), uncentred", "outlier energy in top-r PCs, centred",
                   "outlier energy in top-r PCs, uncentred"], rows,
                  caption="Scaffold subspace vs the top-r principal components of held-out activations")
    tables = [table]
    if results:
        first = results[0]
        median = first["median_mean_abs"]
        tables.append(Table(
            ["dim", "mean |x|", "x median dim", *[f"share of axis in span(U), r={s['rank']}" for s in results]],
            [[j, a, a / median if median else None, *[s["outlier_dim_in_scaffold"][i] for s in results]]
             for i, (j, a) in enumerate(zip(first["outlier_dims"], first["outlier_mean_abs"]))],
            caption=f"Outlier dimensions ({first['outlier_rule']}; median dim's mean |x| = "
                    f"{format_number(median)})"))
    figures = [Figure(title="Principal angles between span(U) and the top-r PCA subspace",
                      series=[Series(f"r={s['rank']}", list(range(1, len(s["principal_angles_deg"]) + 1)),
                                     s["principal_angles_deg"]) for s in results],
                      xlabel="angle index", ylabel="degrees")] if results else []
    text = ("Is the scaffold the top principal subspace and the massive-activation dimensions? Principal angles near "
            "0 and a mean cos^2 near 1 mean span(U) coincides with the top-r PCs (r/d by chance); energy shares near "
            "1 mean the outlier dimensions live inside span(U).")
    return Section("Scaffold structure", text, tables=tables, figures=figures)


# ----------------------------------------------------------------------------------------------------------
# 2. Causality
# ----------------------------------------------------------------------------------------------------------


@dataclass
class CEOutcome:
    """CE under one edit of the residual stream."""

    condition: str
    """subspace:variant, e.g. scaffold:remove, pca:mean, random:zero."""
    ce: float
    """Mean next-token CE in nats (mean over seeds for random)."""
    ratio: float
    """ce / clean CE."""
    sd: float | None = None
    """Standard deviation of the ratio over seeds (random directions only)."""


@dataclass
class CausalityResult:
    """Next-token CE with the scaffold, the top-r PCs or r random directions ablated."""

    sae: str
    rank: int
    n_predictions: int
    ce_clean: float
    outcomes: list[CEOutcome]
    seeds: int
    definitions: dict[str, str] = field(default_factory=lambda: {
        "zero": "x - A x (component set to zero)",
        "remove": "x - U V^T (x - b_dec) (the scaffold's own output term removed)",
        "mean": "x - A (x - mu) (component replaced by its held-out mean)"})

    def ratio(self, condition: str) -> float:
        return next(o.ratio for o in self.outcomes if o.condition == condition)


def causality(lm, layer: int, sae, contexts: torch.Tensor, mu: torch.Tensor, pca_basis: torch.Tensor,
              name: str = "sae", seeds: int = 3, batch_size: int = 4, sink_factor: float = evals.DEFAULT_SINK_FACTOR,
              progress: bool = False, extra: Mapping[str, Rows] | None = None
              ) -> tuple[CausalityResult, dict[str, float]]:
    """CE ratios for the scaffold (zero / remove / mean), the top-r PCs (zero / mean) and r random orthonormal
    directions (zero / mean, `seeds` bases). `pca_basis` [d, >= r] holds the PCs; `extra` adds named edits whose
    raw CEs come back in the second return value."""
    r = int(sae.cfg.rank)
    if r < 1:
        raise AnalysisError(f"SAE {name!r} has no scaffold (rank 0): causality needs a hybrid")
    u, v, b = sae.U.detach(), sae.V.detach(), sae.b_dec.detach()
    q_pca = pca_basis[:, :r].float()
    edits: dict[str, Rows] = {
        "scaffold:zero": subspace_edit(u, v, None),
        "scaffold:remove": subspace_edit(u, v, b),
        "scaffold:mean": subspace_edit(u, v, mu),
        "pca:zero": subspace_edit(q_pca, q_pca, None),
        "pca:mean": subspace_edit(q_pca, q_pca, mu),
    }
    for seed in range(seeds):
        q = random_orthonormal(u.shape[0], r, torch.Generator().manual_seed(1000 + seed))
        edits[f"random{seed}:zero"] = subspace_edit(q, q, None)
        edits[f"random{seed}:mean"] = subspace_edit(q, q, mu)
    edits.update(extra or {})
    ce, count = ablation_ce(lm, layer, contexts, edits, batch_size, sink_factor, progress)
    clean = ce["clean"]
    outcomes = [CEOutcome(c, ce[c], ce[c] / clean) for c in
                ("scaffold:zero", "scaffold:remove", "scaffold:mean", "pca:zero", "pca:mean")]
    for variant in ("zero", "mean"):
        values = np.array([ce[f"random{s}:{variant}"] for s in range(seeds)])
        if seeds:
            outcomes.append(CEOutcome(f"random:{variant}", float(values.mean()), float(values.mean() / clean),
                                      float((values / clean).std(ddof=1)) if seeds > 1 else 0.0))
    result = CausalityResult(sae=name, rank=r, n_predictions=count, ce_clean=clean, outcomes=outcomes, seeds=seeds)
    return result, {k: ce[k] for k in (extra or {})}


def causality_section(result: dict) -> Section:
    rows = [[o["condition"], o["ce"], o["ratio"], o["sd"]] for o in result["outcomes"]]
    table = Table(["condition", "CE (nats)", "CE / clean", "sd of ratio over seeds"],
                  [["clean", result["ce_clean"], 1.0, None], *rows],
                  caption=f"{result['sae']} (rank {result['rank']}), {result['n_predictions']} held-out predictions; "
                          f"random: {result['seeds']} seeds")
    defs = "; ".join(f"{k}: {v}" for k, v in result["definitions"].items())
    text = ("Is the scaffold needed by the model? Each r-dimensional component is ablated from the residual stream "
            "at every evaluated position (BOS and sinks keep their values) and the next-token CE is compared with "
            "the clean CE (paper, Gemma-2-2B r=24: scaffold 7.5x, top-24 PCA directions 2.8x). " + defs + ". mu is "
            "the held-out mean. A rise under 'mean' means the per-token content of the component is needed; a "
            "rise under 'zero' only means removing the component's offset takes the model off-distribution.")
    return Section("Scaffold causality", text, tables=[table])


# ----------------------------------------------------------------------------------------------------------
# 3. Redundancy
# ----------------------------------------------------------------------------------------------------------


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


def redundancy_section(result: dict) -> Section:
    rows = [["baseline features aligned with span(U) ablated (error term kept)", result["n_aligned"],
             result["ce_aligned_ablated"], result["ratio_aligned_ablated"]],
            ["as many random baseline features ablated", result["n_aligned"], result["ce_random_ablated"],
             result["ratio_random_ablated"]],
            [f"{result['hybrid']} scaffold removed", "-", None, result["ratio_scaffold_removed"]]]
    table = Table(["ablation", "features", "CE (nats)", "CE / clean"], rows,
                  caption=f"{result['baseline']} features vs span(U) of {result['hybrid']} (rank {result['rank']}, "
                          f"d = {result['d_model']}); clean CE {format_number(result['ce_clean'])}")
    q = result["score_quantiles"]
    geo = Table(["rule", "threshold", "random expectation r/d", "aligned", "dense baseline latents (>10%)",
                 "dense and aligned", "mean score dense", "mean score others", "median score", "90th pct", "99th pct",
                 "max score"],
                [[result["rule"], result["threshold"], result["random_expectation"], result["n_aligned"],
                  result["dense_latents"], result["dense_aligned"], result["mean_score_dense"],
                  result["mean_score_other"], q["q50"], q["q90"], q["q99"], q["max"]]],
                caption="How much of each baseline decoder direction lies in the scaffold's span")
    top = Table(["feature", "score"], [[i, sc] for i, sc in zip(result["top_features"], result["top_scores"])],
                caption="The most aligned baseline features (at most 50)")
    text = ("Does the plain SAE encode the scaffold redundantly, spread over many features? (Paper: ablating the 787 "
            "most aligned features raises CE only 2.9x, against 7.5x for removing the scaffold.) Features are ranked "
            "by the share of their decoder direction inside span(U); the rule that picks them is in the table. "
            "Ablation zeroes their codes and keeps the SAE's error term, so only their contribution leaves the "
            "residual stream.")
    return Section("Scaffold redundancy in the baseline SAE", text, tables=[geo, table, top])


# ----------------------------------------------------------------------------------------------------------
# 6. Rank selection
# ----------------------------------------------------------------------------------------------------------


@dataclass
class RankSelection:
    """Evidence for choosing the scaffold rank r from data."""

    eigenvalues: list[float]
    """Top eigenvalues of the held-out covariance (at most 64)."""
    participation_ratio: float
    rank_var_50: int
    rank_var_80: int
    rank_var_90: int
    spectrum_knee: int
    """Knee of the log-eigenvalue curve (see spectrum_knee)."""
    sweep_ranks: list[int]
    sweep_dense: list[int]
    """Latents firing on > 10% of the analysis tokens, per rank (matched L0)."""
    sweep_knee: int | None
    recommended: int
    rule: str


def select_rank(eigenvalues: torch.Tensor, sweep: Mapping[int, int] | None = None,
                max_rank: int = 64) -> RankSelection:
    """Rank-selection evidence: spectrum rules (participation ratio, variance shares, log-spectrum knee) and, when a
    sweep of dense counts by rank is given, its knee. Recommended: the sweep knee if there is one, else the
    spectrum knee."""
    sweep = dict(sorted((sweep or {}).items()))
    knee_sweep = sweep_knee(list(sweep), list(sweep.values())) if sweep else None
    knee_spec = spectrum_knee(eigenvalues, max_rank)
    recommended = knee_sweep if knee_sweep is not None else knee_spec
    rule = ("sweep knee: the smallest swept rank reaching 90% of the sweep's largest reduction in dense (>10%) "
            "latents" if knee_sweep is not None else
            f"spectrum knee: the number of PCs before the log-eigenvalue spectrum flattens (first {max_rank})")
    return RankSelection(
        eigenvalues=[float(v) for v in eigenvalues[:max_rank]], participation_ratio=participation_ratio(eigenvalues),
        rank_var_50=rank_for_share(eigenvalues, 0.5), rank_var_80=rank_for_share(eigenvalues, 0.8),
        rank_var_90=rank_for_share(eigenvalues, 0.9), spectrum_knee=knee_spec,
        sweep_ranks=[int(r) for r in sweep], sweep_dense=[int(v) for v in sweep.values()], sweep_knee=knee_sweep,
        recommended=int(recommended), rule=rule)


def rank_section(result: dict) -> Section:
    table = Table(["participation ratio", "r for 50% var", "r for 80% var", "r for 90% var", "log-spectrum knee",
                   "dense-count knee", "recommended r", "rule"],
                  [[result["participation_ratio"], result["rank_var_50"], result["rank_var_80"],
                    result["rank_var_90"], result["spectrum_knee"], result["sweep_knee"], result["recommended"],
                    result["rule"]]], caption="Data-driven choices of the scaffold rank")
    ev = result["eigenvalues"]
    figures = [Figure("Eigenvalue spectrum of held-out activations",
                      [Series("eigenvalue", list(range(1, len(ev) + 1)), ev)], xlabel="component", ylabel="variance",
                      logy=True, vlines=[float(result["spectrum_knee"])],
                      caption="Vertical line: the log-spectrum knee")]
    if result["sweep_ranks"]:
        figures.append(Figure("Dense latents (>10%) vs scaffold rank",
                              [Series("dense >10%", result["sweep_ranks"], result["sweep_dense"])],
                              xlabel="rank r", ylabel="latents",
                              vlines=[float(result["sweep_knee"])] if result["sweep_knee"] is not None else []))
    text = ("How large should r be? The spectrum rules say how many directions carry the dense, high-variance part "
            "of the activations (massive dimensions make the top few PCs hold most of the variance); the sweep rule "
            "says at which rank the dense latents stop disappearing.")
    return Section("Choosing the rank", text, tables=[table], figures=figures)


# ----------------------------------------------------------------------------------------------------------
# 5. Across models
# ----------------------------------------------------------------------------------------------------------


def compare_studies(studies: Mapping[str, dict]) -> Section:
    """One side-by-side section from several studies' results (each a results.json dict with 'analyses')."""
    rows = []
    for label, study in studies.items():
        a = study.get("analyses") or {}
        cfg = study.get("config", {})
        s = (a.get("structure") or [{}])[-1]
        c = a.get("causality") or {}
        ratios = {o["condition"]: o["ratio"] for o in c.get("outcomes", [])}
        saes = study.get("saes", {})
        dense = {v.get("rank"): v.get("dense_10") for v in saes.values()}
        red = a.get("redundancy") or {}
        rows.append([label, cfg.get("model"), cfg.get("layer"), s.get("rank"), dense.get(0), dense.get(s.get("rank")),
                     s.get("mean_cos2"), s.get("variance_share_scaffold"),
                     ",".join(map(str, s.get("outlier_dims", []))),
                     s.get("outlier_energy_scaffold_uncentred"), ratios.get("scaffold:remove"),
                     ratios.get("scaffold:mean"), ratios.get("pca:mean"), ratios.get("random:mean"),
                     red.get("ratio_aligned_ablated")])
    table = Table(["study", "model", "layer", "rank", "dense>10% r=0", "dense>10% hybrid", "mean cos^2 vs PCA",
                   "variance in span(U)", "outlier dims", "outlier energy in span(U)", "CE x scaffold removed",
                   "CE x scaffold mean-abl.", "CE x PCA mean-abl.", "CE x random mean-abl.",
                   "CE x aligned features abl."], rows, caption="The scaffold across models")
    return Section("Across models", "Is the scaffold found in each model, how large is it, how causal, and which "
                   "outlier dimensions does it hold?", tables=[table])


# ----------------------------------------------------------------------------------------------------------
# Everything, inside the study
# ----------------------------------------------------------------------------------------------------------


def analysis_settings(cfg) -> dict:
    """The StudyConfig fields the analyses depend on (the cache key of analyses.json)."""
    names = ("analysis_tokens", "analysis_ce_tokens", "analysis_rank", "random_seeds", "outlier_factor",
             "redundancy_factor", "probe_docs", "probe_tokens", "probe_datasets", "ctx_len", "sink_factor", "seed")
    return {n: getattr(cfg, n, None) for n in names}


def primary_hybrid(saes: Mapping[str, object], rank: int | None) -> str:
    """The hybrid the costly analyses use: rank `rank` if given, else the largest rank."""
    hybrids = {name: int(s.cfg.rank) for name, s in saes.items() if int(s.cfg.rank) > 0}
    if not hybrids:
        raise AnalysisError("no hybrid SAE (rank > 0) to analyse: include a rank above 0 in --ranks")
    if rank is None:
        return max(hybrids, key=hybrids.get)
    match = [n for n, r in hybrids.items() if r == rank]
    if not match:
        raise AnalysisError(f"analysis_rank={rank} is not among the hybrids' ranks {sorted(hybrids.values())}: "
                            f"pick one of them or leave it unset")
    return match[0]


def sae_fingerprint(sae) -> str:
    """A short hash of an SAE's decoder, bias and scaffold (so retrained SAEs invalidate cached analyses)."""
    import hashlib

    digest = hashlib.sha256()
    for tensor in (sae.W_dec, sae.b_dec, sae.U):
        flat = tensor.detach().reshape(-1).float().cpu()
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(flat[:4096].numpy().tobytes())
        digest.update(flat[-4096:].numpy().tobytes())
    return digest.hexdigest()[:16]


def sections_from_results(results: dict) -> list[Section]:
    """Every analysis section, rebuilt from the analyses dict (what analyses.json and the study JSON hold)."""
    from scaffold_sae import probing

    sections = []
    if results.get("structure"):
        sections.append(structure_section(results["structure"]))
    if results.get("causality"):
        sections.append(causality_section(results["causality"]))
    if results.get("redundancy"):
        sections.append(redundancy_section(results["redundancy"]))
    if results.get("probing"):
        sections.extend(probing.probing_sections(results["probing"]))
    if results.get("rank_selection"):
        sections.append(rank_section(results["rank_selection"]))
    if results.get("settings") or results.get("timings"):
        rows = [[k, v] for k, v in (results.get("settings") or {}).items()]
        rows += [[k, v] for k, v in (results.get("timings") or {}).items()]
        sections.append(Section("Analysis settings and cost", "The settings behind the analyses above and the "
                                "seconds each part took (held-out tokens only; nothing here used training tokens).",
                                tables=[Table(["setting", "value"], rows)]))
    return sections


def run_analyses(lm, layer: int, saes: dict, baseline_name: str, cache, contexts: torch.Tensor, cfg,
                 out: str | Path | None = None, progress: bool = True) -> tuple[dict, list[Section]]:
    """Structure (every hybrid), causality and redundancy (the primary hybrid), probing (every SAE) and rank
    selection, on held-out `contexts`. With `out`, results are cached in out/analyses.json and reused when the SAEs
    and analysis settings match. `cache` (the training ActivationCache) is not used for statistics: every number
    comes from held-out tokens. Returns (JSON-safe results dict, report sections)."""
    from scaffold_sae import probing

    key = {"saes": {name: sae_fingerprint(sae) for name, sae in sorted(saes.items())}, "baseline": baseline_name,
           "layer": int(layer), "model": str(lm.spec),
           "contexts": list(contexts.shape), "settings": analysis_settings(cfg)}
    path = Path(out) / "analyses.json" if out is not None else None
    if path is not None and path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored["results"], sections_from_results(stored["results"])
    if baseline_name not in saes:
        raise AnalysisError(f"baseline {baseline_name!r} is not among the SAEs {sorted(saes)}")
    clock = time.perf_counter()
    sink = getattr(cfg, "sink_factor", evals.DEFAULT_SINK_FACTOR)
    batch = max(1, min(4, getattr(cfg, "harvest_batch_size", 4)))
    x = heldout_activations(lm, layer, contexts, cfg.analysis_tokens, getattr(cfg, "harvest_batch_size", 8), sink,
                            progress)
    pca_result = pca(x)
    mu, values, vectors = pca_result
    results: dict = {"n_tokens": int(x.shape[0])}
    timings: dict[str, float] = {"activations_s": time.perf_counter() - clock}

    hybrids = sorted((n for n, s in saes.items() if s.cfg.rank > 0), key=lambda n: saes[n].cfg.rank)
    results["structure"] = [asdict(structure(saes[n], x, n, cfg.outlier_factor, pca_result)) for n in hybrids]

    sweep = {}
    for name, sae in saes.items():
        mode = archs.get(sae.cfg.arch).primary_inference
        sweep[int(sae.cfg.rank)] = int((firing_density(sae, x, mode) > 0.1).sum())
    results["rank_selection"] = asdict(select_rank(values, sweep))
    timings["structure_s"] = time.perf_counter() - clock - timings["activations_s"]

    clock = time.perf_counter()
    if hybrids:
        primary = primary_hybrid(saes, getattr(cfg, "analysis_rank", None))
        hybrid = saes[primary]
        n_ce = max(1, min(cfg.analysis_ce_tokens, cfg.ce_tokens) // contexts.shape[1])
        base = saes[baseline_name]
        mode = archs.get(base.cfg.arch).primary_inference
        redundancy, idx = redundancy_scores(base, hybrid, x, baseline_name, primary, cfg.redundancy_factor, mode)
        others = torch.tensor([i for i in range(base.cfg.width) if i not in set(idx.tolist())], dtype=torch.long)
        chosen = others[torch.randperm(others.numel(), generator=torch.Generator().manual_seed(cfg.seed))[:idx.numel()]]
        extra = {"features:aligned": feature_ablation_edit(base, idx, mode),
                 "features:random": feature_ablation_edit(base, chosen, mode)} if idx.numel() else {}
        caus, extra_ce = causality(lm, layer, hybrid, contexts[:n_ce], mu.float(), vectors, primary,
                                   cfg.random_seeds, batch, sink, progress, extra)
        results["causality"] = asdict(caus)
        redundancy.ce_clean = caus.ce_clean
        redundancy.ratio_scaffold_removed = caus.ratio("scaffold:remove")
        if extra_ce:
            redundancy.ce_aligned_ablated = extra_ce["features:aligned"]
            redundancy.ratio_aligned_ablated = extra_ce["features:aligned"] / caus.ce_clean
            redundancy.ce_random_ablated = extra_ce["features:random"]
            redundancy.ratio_random_ablated = extra_ce["features:random"] / caus.ce_clean
        else:
            redundancy.ratio_aligned_ablated = redundancy.ratio_random_ablated = 1.0
        results["redundancy"] = asdict(redundancy)
    timings["causality_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    datasets = [d.strip() for d in str(getattr(cfg, "probe_datasets", "") or "").split(",") if d.strip()]
    if datasets and cfg.probe_docs > 0:
        probe_cfg = probing.ProbeConfig(datasets=datasets, n_docs=cfg.probe_docs, max_tokens=cfg.probe_tokens,
                                        seed=cfg.seed, sink_factor=sink,
                                        batch_size=getattr(cfg, "harvest_batch_size", 8))
        results["probing"] = asdict(probing.run_probing(lm, layer, saes, baseline_name, probe_cfg,
                                                        pca_basis=vectors, progress=progress))

    timings["probing_s"] = time.perf_counter() - clock
    results["timings"] = timings
    results["settings"] = analysis_settings(cfg)
    results = jsonable(results)
    if path is not None:
        from scaffold_sae.fetch import atomic_write_text

        atomic_write_text(path, json.dumps({"key": key, "results": results}, allow_nan=False) + "\n")
    return results, sections_from_results(results)


# ----------------------------------------------------------------------------------------------------------
# CLI: scaffold-sae compare
# ----------------------------------------------------------------------------------------------------------


def register_compare(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="side-by-side report of several studies (e.g. two models)",
        description="One report comparing the scaffold across studies: dense latents, structure, causality and "
                    "redundancy, read from each study's results.json.")
    parser.add_argument("--results", nargs="+", required=True, metavar="LABEL=PATH",
                        help="results.json of each study, optionally labelled (gemma=runs/demo/report/results.json)")
    parser.add_argument("--out", required=True, help="output directory for the comparison report")
    parser.set_defaults(func=_compare_command)


def _compare_command(args) -> int:
    from scaffold_sae.report import load_results, write_report

    studies = {}
    for item in args.results:
        label, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        study = load_results(path)
        if not study.get("analyses"):
            raise AnalysisError(f"{path} has no analyses: rerun its study with --analyses true")
        studies[label or f"{study.get('config', {}).get('model')}-L{study.get('config', {}).get('layer')}"] = study
    paths = write_report({"title": "scaffold-sae: the scaffold across studies", "config": {
        label: {"model": s.get("config", {}).get("model"), "layer": s.get("config", {}).get("layer")}
        for label, s in studies.items()}, "saes": {}}, args.out, sections=[compare_studies(studies)])
    print(f"wrote {paths.html}\n      {paths.markdown}\n      {paths.json}")
    return 0
