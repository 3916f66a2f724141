"""Linear algebra of subspaces, pure functions of tensors (tested against slow references).

Definitions (one place):
- PCA: the eigenvectors of the covariance of rows x around a centre (default their mean), by decreasing
  eigenvalue. The scaffold's initialisation (sae.pca_basis) and the analyses use this one routine.
- Outlier (massive-activation) dimensions: dims j with mean_n |x_nj| > factor x the median over dims of
  mean_n |x_nj|. Their energy share in a subspace with orthonormal basis Q is sum_n ||Q^T o_n||^2 / sum_n ||o_n||^2
  where o_n is x_n with every other coordinate zeroed; per dim it is ||Q^T e_j||^2 (1 when e_j lies in the subspace).
- Alignment score of a decoder row w_i with a subspace: ||Q^T w_i||^2 / ||w_i||^2 (r/d for a random direction).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor


class PCA(NamedTuple):
    """Principal components of rows x [n, d] (float64)."""

    mean: Tensor
    """The centre [d] (the mean of x unless another centre was given)."""
    eigenvalues: Tensor
    """Covariance eigenvalues [d], descending, clamped at 0."""
    vectors: Tensor
    """Eigenvectors [d, d] as columns, in the order of the eigenvalues."""


def orthonormalise(a: Tensor) -> Tensor:
    """Q of a QR decomposition with signs fixed so that diag(R) > 0 (continuous in a)."""
    q, r = torch.linalg.qr(a)
    signs = torch.sign(torch.diagonal(r))
    return q * torch.where(signs == 0, 1.0, signs)  # not signs[signs == 0] = 1: a mask index waits for the GPU


def pca(x: Tensor, center: Tensor | None = None) -> PCA:
    """PCA of rows x [n, d] around `center` (default: the mean of x), on x's device. With a centre, x - center is
    formed in x's dtype before going to float64 (the scaffold's initialisation relies on these exact numbers)."""
    x = x.detach()
    if center is None:
        x = x.double()
        center = x.mean(0)
    xc = (x - center).double()
    cov = xc.t() @ xc / max(1, xc.shape[0] - 1)
    values, vectors = torch.linalg.eigh(cov)
    order = torch.argsort(values, descending=True)
    return PCA(center.detach().double(), values[order].clamp_min(0.0), vectors[:, order])


def span_basis(u: Tensor) -> Tensor:
    """Orthonormal basis [d, r] of span(u) (u [d, r] of full column rank), float64 on the CPU."""
    return orthonormalise(u.detach().double().cpu())


def span_with(basis: Tensor, vector: Tensor, tol: float = 1e-6) -> Tensor:
    """Orthonormal basis [d, r + 1] of span[basis, vector] (basis orthonormal [d, r]): basis's columns, then the unit
    part of `vector` orthogonal to them; just `basis` (float64) when that part is below tol x |vector|."""
    q = basis.detach().double().cpu()
    v = vector.detach().double().cpu().reshape(-1)
    rest = v - q @ (q.t() @ v)
    rest = rest - q @ (q.t() @ rest)  # a second pass keeps it orthogonal to float64 precision
    norm = float(rest.norm())
    if norm <= tol * float(v.norm()) or norm == 0.0:
        return q
    return torch.cat([q, (rest / norm)[:, None]], 1)


def principal_angles(a: Tensor, b: Tensor) -> Tensor:
    """Principal angles in degrees, ascending, between span(a) and span(b) (a [d, p], b [d, q])."""
    qa, qb = span_basis(a), span_basis(b)
    cosines = torch.linalg.svdvals(qa.t() @ qb).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cosines)).sort().values


def outlier_dims(x: Tensor, factor: float = 10.0) -> tuple[list[int], Tensor, float]:
    """Dims whose mean |x| exceeds factor x the median dim's mean |x|, sorted by mean |x| (largest first);
    also returns every dim's mean |x| and the median."""
    mean_abs = x.detach().double().abs().mean(0).cpu()
    median = float(mean_abs.median())
    dims = torch.nonzero(mean_abs > factor * median).flatten()
    dims = dims[torch.argsort(mean_abs[dims], descending=True)]
    return [int(j) for j in dims], mean_abs, median


def energy_share(x: Tensor, basis: Tensor, dims: list[int]) -> float:
    """sum_n ||Q^T o_n||^2 / sum_n ||o_n||^2 with o_n = x_n restricted to `dims` (other coordinates zero) and
    Q the orthonormal `basis` [d, r]. NaN when there are no dims."""
    if not dims:
        return float("nan")
    idx = torch.tensor(dims)
    xo = x.detach().double().cpu()[:, idx]
    qo = basis.detach().double().cpu()[idx]
    return float((xo @ qo).pow(2).sum() / xo.pow(2).sum().clamp_min(1e-300))


def variance_share(x: Tensor, basis: Tensor) -> float:
    """Share of the total (centred) variance of x [n, d] lying in span(basis) (orthonormal [d, r])."""
    xc = x.detach().double().cpu()
    xc = xc - xc.mean(0)
    return float((xc @ basis.double()).pow(2).sum() / xc.pow(2).sum().clamp_min(1e-300))


def alignment_scores(w_dec: Tensor, basis: Tensor) -> Tensor:
    """||Q^T w_i||^2 / ||w_i||^2 for every decoder row w_i of w_dec [m, d], Q orthonormal [d, r]."""
    w = w_dec.detach().double().cpu()
    inside = (w @ basis.double()).pow(2).sum(1)
    return inside / w.pow(2).sum(1).clamp_min(1e-300)


def participation_ratio(eigenvalues: Tensor) -> float:
    """(sum lambda)^2 / sum lambda^2: the effective number of dimensions of a spectrum."""
    ev = eigenvalues.double().clamp_min(0.0)
    return float(ev.sum() ** 2 / ev.pow(2).sum().clamp_min(1e-300))


def rank_for_share(eigenvalues: Tensor, share: float) -> int:
    """Smallest r whose top-r eigenvalues hold at least `share` of the total."""
    ev = eigenvalues.double().clamp_min(0.0)
    cumulative = ev.cumsum(0) / ev.sum().clamp_min(1e-300)
    return int(torch.searchsorted(cumulative, torch.tensor(share - 1e-12, dtype=torch.float64)).item()) + 1


def spectrum_knee(eigenvalues: Tensor, max_rank: int = 64) -> int:
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


def subspace_edit(left: Tensor, right: Tensor, center: Tensor | None) -> Callable[[Tensor], Tensor]:
    """The edit of activation rows x -> x - L R^T (x - center) (center None: x - L R^T x), for a rank-r linear
    component A = L R^T (scaffold: L = U, R = V; a subspace with orthonormal basis Q: L = R = Q)."""
    left, right = left.detach().float(), right.detach().float()
    c = None if center is None else center.detach().float()

    def edit(x: Tensor) -> Tensor:
        xc = x if c is None else x - c.to(x.device)
        return x - (xc @ right.to(x.device)) @ left.to(x.device).t()

    return edit
