"""Causality: next-token CE with the scaffold, the top-r PCs or r random directions ablated.

Ablations of a rank-r linear component A = L R^T (scaffold: L = U, R = V; PCA / random: L = R = an orthonormal
basis Q), applied to a token x at the eval_mask positions:
    zero:   x - A x                       the component set to zero (the literal "projected out");
    remove: x - A (x - b_dec)              the scaffold only: its own output term U V^T (x - b_dec) removed;
    mean:   x - A (x - mu)                 the component replaced by its mean over held-out tokens.
"mean" keeps the average and destroys the per-token information; "zero" also moves the activation off its
distribution. A large CE rise under "mean" says the per-token content is needed; a rise under "zero" alone says
the model needs the offset, i.e. the edit is off-distribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np
import torch

from scaffold_sae.analyses.base import AnalysisContext, AnalysisError, register
from scaffold_sae.lm_passes import DEFAULT_SINK_FACTOR, Rows, ablation_ce
from scaffold_sae.report import Section, Table
from scaffold_sae import stats
from scaffold_sae.sae import random_orthonormal
from scaffold_sae.subspace import subspace_edit


@dataclass
class CausalityConfig:
    """Settings of the causality analysis (it uses the primary hybrid and the CE prefix of the contexts)."""

    random_seeds: int = 2
    """Random-direction bases (one orthonormal basis per seed)."""


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
              name: str = "sae", seeds: int = 3, batch_size: int = 4, sink_factor: float = DEFAULT_SINK_FACTOR,
              progress: bool = False) -> CausalityResult:
    """CE ratios for the scaffold (zero / remove / mean), the top-r PCs (zero / mean) and r random orthonormal
    directions (zero / mean, `seeds` bases). `pca_basis` [d, >= r] holds the PCs."""
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
    ce, count = ablation_ce(lm, layer, contexts, edits, batch_size, sink_factor, progress)
    clean = ce["clean"]
    outcomes = [CEOutcome(c, ce[c], ce[c] / clean) for c in
                ("scaffold:zero", "scaffold:remove", "scaffold:mean", "pca:zero", "pca:mean")]
    for variant in ("zero", "mean"):
        values = np.array([ce[f"random{s}:{variant}"] for s in range(seeds)])
        if seeds:
            outcomes.append(CEOutcome(f"random:{variant}", float(values.mean()), float(values.mean() / clean),
                                      stats.sd(values / clean) or 0.0))
    return CausalityResult(sae=name, rank=r, n_predictions=count, ce_clean=clean, outcomes=outcomes, seeds=seeds)


def run(context: AnalysisContext, config: CausalityConfig) -> CausalityResult | None:
    """Causality of the primary hybrid's scaffold on the CE prefix of the held-out contexts (None without hybrids)."""
    if not context.hybrids():
        return None
    name = context.primary_hybrid()
    return causality(context.lm, context.layer, context.saes[name], context.ce_contexts, context.pca.mean.float(),
                     context.pca.vectors, name, config.random_seeds, context.ce_batch_size,
                     context.shared.sink_factor, context.progress)


def sections(result: CausalityResult) -> list[Section]:
    rows = [[o.condition, o.ce, o.ratio, o.sd] for o in result.outcomes]
    table = Table(["condition", "CE (nats)", "CE / clean", "sd of ratio over seeds"],
                  [["clean", result.ce_clean, 1.0, None], *rows],
                  caption=f"{result.sae} (rank {result.rank}), {result.n_predictions} held-out predictions; "
                          f"random: {result.seeds} seeds")
    defs = "; ".join(f"{k}: {v}" for k, v in result.definitions.items())
    text = ("Is the scaffold needed by the model? Each r-dimensional component is ablated from the residual stream "
            "at every evaluated position (BOS and sinks keep their values) and the next-token CE is compared with "
            "the clean CE (paper, Gemma-2-2B r=24: scaffold 7.5x, top-24 PCA directions 2.8x). " + defs + ". mu is "
            "the held-out mean. A rise under 'mean' means the per-token content of the component is needed; a "
            "rise under 'zero' only means removing the component's offset takes the model off-distribution.")
    return [Section("Scaffold causality", text, tables=[table])]


register("causality", CausalityConfig, CausalityResult, run, sections)

