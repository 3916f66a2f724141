"""Structure: how each hybrid's scaffold span relates to the top principal components and the outlier
(massive-activation) dimensions of held-out activations (definitions in scaffold_sae.subspace)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from scaffold_sae import evals
from scaffold_sae.analyses.base import AnalysisContext, AnalysisError, register
from scaffold_sae.report import Figure, Section, Series, Table, format_number
from scaffold_sae.subspace import PCA, energy_share, outlier_dims, pca, principal_angles, span_basis, variance_share


@dataclass
class StructureConfig:
    """Settings of the structure analysis."""

    outlier_factor: float = 10.0
    """Outlier (massive-activation) dims: mean |x| above this multiple of the median dim's mean |x|."""


@dataclass
class ScaffoldStructure:
    """How one hybrid's scaffold span relates to the top principal components and the outlier dimensions."""

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
    outlier_energy_scaffold_centred: float | None
    """Energy share of the outlier dims (centred) in span(U); None (NaN) without outlier dims."""
    outlier_energy_scaffold_uncentred: float | None
    outlier_energy_pca_centred: float | None
    outlier_energy_pca_uncentred: float | None


@dataclass
class StructureResult:
    """The structure of every hybrid's scaffold, by increasing rank."""

    saes: list[ScaffoldStructure] = field(default_factory=list)


def structure(sae, x: torch.Tensor, name: str = "sae", outlier_factor: float = 10.0,
              pca_result: PCA | None = None) -> ScaffoldStructure:
    """Structure of a hybrid's scaffold on held-out activations x [n, d]."""
    r = int(sae.cfg.rank)
    if r < 1:
        raise AnalysisError(f"SAE {name!r} has no scaffold (rank 0): structure needs a hybrid")
    mu, values, vectors = pca_result if pca_result is not None else pca(x.cpu())
    q = span_basis(sae.U)
    u, v, b = (t.detach().double().cpu() for t in (sae.U, sae.V, sae.b_dec))
    p = vectors[:, :r]
    angles = principal_angles(q, p)
    dims, mean_abs, median = outlier_dims(x, outlier_factor)
    x64 = x.double()
    with torch.no_grad():
        scaffold_pred = b + (x64 - b) @ v @ u.t()
    return ScaffoldStructure(
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


def run(context: AnalysisContext, config: StructureConfig) -> StructureResult:
    """Structure of every hybrid on the context's held-out activations."""
    return StructureResult([structure(context.saes[n], context.activations, n, config.outlier_factor, context.pca)
                            for n in context.hybrids()])


def sections(result: StructureResult) -> list[Section]:
    results = result.saes
    if not results:
        return []
    rows = [[s.sae, s.rank, s.n_tokens, min(s.principal_angles_deg), _median(s.principal_angles_deg),
             max(s.principal_angles_deg), s.mean_cos2, s.variance_share_scaffold, s.variance_share_pca,
             s.scaffold_explained_variance, s.outlier_energy_scaffold_centred, s.outlier_energy_scaffold_uncentred,
             s.outlier_energy_pca_centred, s.outlier_energy_pca_uncentred] for s in results]
    table = Table(["SAE", "rank", "tokens", "first angle (deg)", "median angle", "last angle", "mean cos^2 (angles)", "variance in span(U)", "variance in top-r PCs",
                   "scaffold alone: expl. var.", "outlier energy in span(U), centred",
                   "outlier energy in span(U), uncentred", "outlier energy in top-r PCs, centred",
                   "outlier energy in top-r PCs, uncentred"], rows,
                  caption="Scaffold subspace vs the top-r principal components of held-out activations; all r "
                          "principal angles are in the figure below and its data table")
    first = results[0]
    median = first.median_mean_abs
    dims = Table(["dim", "mean |x|", "x median dim", *[f"share of axis in span(U), r={s.rank}" for s in results]],
                 [[j, a, a / median if median else None, *[s.outlier_dim_in_scaffold[i] for s in results]]
                  for i, (j, a) in enumerate(zip(first.outlier_dims, first.outlier_mean_abs))],
                 caption=f"Outlier dimensions ({first.outlier_rule}; median dim's mean |x| = "
                         f"{format_number(median)})")
    figure = Figure(title="Principal angles between span(U) and the top-r PCA subspace",
                    series=[Series(f"r={s.rank}", list(range(1, len(s.principal_angles_deg) + 1)),
                                   s.principal_angles_deg) for s in results],
                    xlabel="angle index", ylabel="degrees")
    text = ("Is the scaffold the top principal subspace and the massive-activation dimensions? All r principal "
            "angles near 0 and a mean cos^2 near 1 mean span(U) coincides with the top-r PCs (r/d by chance); the "
            "first angle alone only says that one direction is shared. The variance of x in span(U) is compared with "
            "the most any r-dim subspace holds (the top-r PCs). Energy shares near 1 mean the outlier dimensions live "
            "inside span(U). A scaffold initialised from the PCs (scaffold_init: pca) starts at angle 0 by "
            "construction; only a randomly initialised one (scaffold_init: random) shows whether training finds "
            "the PCs on its own.")
    return [Section("Scaffold structure", text, tables=[table, dims], figures=[figure])]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


register("structure", StructureConfig, StructureResult, run, sections)
