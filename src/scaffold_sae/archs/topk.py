"""TopK: the k largest pre-activations of each token, in training and at inference."""

from __future__ import annotations

from torch import Tensor

from .. import kernels
from .base import Architecture, codes_at


class TopK(Architecture):
    name = "topk"
    uses_k = True
    uses_aux_k = True
    saelens_name = "topk"
    saelens_imports = ("topk",)

    def select(self, pre, cfg):
        return kernels.row_topk(pre, cfg.k), pre.new_zeros(())

    def codes(self, sae, pre: Tensor, batch_topk: bool) -> Tensor:
        return codes_at(pre, kernels.row_topk(pre, sae.cfg.k))
