"""ReLU + L1: dense ReLU codes, sparsity from an L1 penalty on f_i * ||W_dec,i||."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import kernels
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
            row, col = (codes > 0).nonzero(as_tuple=True)
            active = kernels.active_from_coo(row, col, n, sae.cfg.width)
        l1 = sae.cfg.l1_coeff * (codes * sae.W_dec.norm(dim=1)).sum() / n
        return SparseStep(pre, active, 0.0, sparse_out, l1=l1)
