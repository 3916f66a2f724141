"""Rank selection: evidence for choosing the scaffold rank r from data -- spectrum rules on held-out activations
and the knee of the dense-latent count over the study's rank sweep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from scaffold_sae import probing
from scaffold_sae.analyses.base import AnalysisContext, register
from scaffold_sae.analyses.codes import firing_density
from scaffold_sae.evals import DENSE
from scaffold_sae.report import Figure, Section, Series, Table
from scaffold_sae.subspace import participation_ratio, rank_for_share, spectrum_knee, sweep_knee


@dataclass
class RankSelectionConfig:
    """Settings of the rank selection."""

    max_rank: int = 64
    """Eigenvalues shown and searched for the spectrum knee."""


@dataclass
class RankSelection:
    """Evidence for choosing the scaffold rank r from data."""

    eigenvalues: list[float]
    """Top eigenvalues of the held-out covariance (at most max_rank)."""
    participation_ratio: float
    rank_var_50: int
    rank_var_80: int
    rank_var_90: int
    spectrum_knee: int
    """Knee of the log-eigenvalue curve (see subspace.spectrum_knee)."""
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


def run(context: AnalysisContext, config: RankSelectionConfig) -> RankSelection:
    """Spectrum of the held-out activations and dense (>10%) latents of every SAE on them, by rank."""
    sweep = {int(sae.cfg.rank): int((firing_density(sae, context.activations, probing.inference_mode(sae)) > DENSE).sum())
             for sae in context.saes.values()}
    return select_rank(context.pca.eigenvalues, sweep, config.max_rank)


def sections(result: RankSelection) -> list[Section]:
    table = Table(["participation ratio", "r for 50% var", "r for 80% var", "r for 90% var", "log-spectrum knee",
                   "dense-count knee", "recommended r", "rule"],
                  [[result.participation_ratio, result.rank_var_50, result.rank_var_80, result.rank_var_90,
                    result.spectrum_knee, result.sweep_knee, result.recommended, result.rule]],
                  caption="Data-driven choices of the scaffold rank")
    ev = result.eigenvalues
    figures = [Figure("Eigenvalue spectrum of held-out activations",
                      [Series("eigenvalue", list(range(1, len(ev) + 1)), ev)], xlabel="component", ylabel="variance",
                      logy=True, vlines=[float(result.spectrum_knee)], caption="Vertical line: the log-spectrum knee")]
    if result.sweep_ranks:
        figures.append(Figure("Dense latents (>10%) vs scaffold rank",
                              [Series("dense >10%", result.sweep_ranks, result.sweep_dense)],
                              xlabel="rank r", ylabel="latents",
                              vlines=[float(result.sweep_knee)] if result.sweep_knee is not None else []))
    text = ("How large should r be? The spectrum rules say how many directions carry the dense, high-variance part "
            "of the activations (massive dimensions make the top few PCs hold most of the variance); the sweep rule "
            "says at which rank the dense latents stop disappearing.")
    return [Section("Choosing the rank", text, tables=[table], figures=figures)]


register("rank_selection", RankSelectionConfig, RankSelection, run, sections)
