"""An SAE's sparse codes on activation rows: the codes, per-latent firing density, and latent ablation."""

from __future__ import annotations

import torch

from scaffold_sae import evals
from scaffold_sae.lm_passes import Rows


@torch.no_grad()
def codes_of(sae, x: torch.Tensor, inference: str) -> torch.Tensor:
    """Sparse codes of rows x (moved to the SAE's device and dtype)."""
    param = next(iter(sae.parameters()))
    return evals.reconstruct(sae, x.to(param.device, param.dtype), inference).codes


@torch.no_grad()
def firing_density(sae, x: torch.Tensor, inference: str, chunk: int = 4096) -> torch.Tensor:
    """Per-latent share of the rows of x [n, d] on which the latent fires (codes of chunks of `chunk` rows)."""
    fires = sum((codes_of(sae, part, inference) != 0).sum(0).cpu() for part in x.split(chunk))
    return fires.double() / x.shape[0]


def feature_ablation_edit(sae, features: torch.Tensor, inference: str) -> Rows:
    """Zero the given latents of `sae` keeping its error term: x -> x - sum_{i in S} f_i(x) W_dec[i]."""
    idx = features.long().to(sae.W_dec.device)
    w = sae.W_dec.detach()[idx]

    def edit(x: torch.Tensor) -> torch.Tensor:
        codes = codes_of(sae, x, inference)
        return x - (codes[:, idx] @ w).to(x.device, x.dtype)

    return edit
