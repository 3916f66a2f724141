"""ReLU + L1: dense ReLU codes, sparsity from an L1 penalty on f_i * ||W_dec,i||."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Architecture, SparseStep


class ReLU(Architecture):
    name = "relu"
    saelens_name = "standard"
    saelens_imports = ("standard",)

    def codes(self, sae, pre: Tensor, batch_topk: bool) -> Tensor:
        return pre.relu()

    def sparse_step(self, sae, x, x_in, scaf, fast):
        n = x_in.shape[0]
        pre = torch.addmm(sae.b_enc, x_in, sae.encoder_weight.t())
        codes = pre.relu()
        sparse_out = codes @ sae.W_dec
        with torch.no_grad():
            fires = (codes > 0).sum(0)
        l1 = sae.cfg.l1_coeff * (codes * sae.W_dec.norm(dim=1)).sum() / n
        return SparseStep(pre, None, pre.new_zeros(()), sparse_out, l1=l1, fires=fires)
