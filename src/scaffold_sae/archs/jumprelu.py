"""JumpReLU (load-only): SAELens jumprelu / batchtopk SAEs, codes above a per-latent threshold."""

from __future__ import annotations

from torch import Tensor

from .base import Architecture, threshold_codes


class JumpReLU(Architecture):
    name = "jumprelu"
    trainable = False
    saelens_name = "jumprelu"
    saelens_imports = ("jumprelu", "batchtopk")

    def codes(self, sae, pre: Tensor, batch_topk: bool) -> Tensor:
        return threshold_codes(pre, sae.threshold)
