"""BatchTopK: the B*k largest pre-activations of the batch; a JumpReLU threshold at inference."""

from __future__ import annotations

from torch import Tensor

from .. import kernels
from .base import Architecture, codes_at, threshold_codes


class BatchTopK(Architecture):
    name = "batchtopk"
    inference_modes = ("batchtopk", "threshold")
    uses_k = True
    uses_aux_k = True
    calibrates_threshold = True
    uses_global_batch_selection = True
    saelens_name = "jumprelu"

    def select(self, pre, cfg):
        return kernels.batch_topk(pre, cfg.k)

    def codes(self, sae, pre: Tensor, batch_topk: bool) -> Tensor:
        if batch_topk:
            active, _ = kernels.batch_topk(pre, sae.cfg.k)
            return codes_at(pre, active)
        return threshold_codes(pre, sae.threshold)
