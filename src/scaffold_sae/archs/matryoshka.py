"""Matryoshka: BatchTopK whose loss averages the reconstruction MSE of nested latent prefixes."""

from __future__ import annotations

import torch

from .. import kernels
from .base import SparseStep, active_values
from .batchtopk import BatchTopK


class Matryoshka(BatchTopK):
    name = "matryoshka"

    def check(self, cfg):
        widths = cfg.prefix_widths()
        if list(widths) != sorted(set(widths)) or widths[-1] != cfg.width or widths[0] < 1:
            return (f"matryoshka_widths={list(widths)} is invalid: strictly increasing "
                    f"positive widths ending at width ({cfg.width})")
        return None

    def sparse_step(self, sae, x, x_in, scaf, fast):
        """Each latent group [w_{i-1}, w_i) is decoded once (the whole active set with the other groups' pairs
        made inactive: fixed shapes); prefix reconstructions are running sums."""
        pre, active, thr, vals = active_values(sae, x_in, fast)
        n, d = x.shape
        resid = sae.b_dec + scaf - x
        sparse_out = torch.zeros_like(x)
        losses = []
        lo = 0
        for hi in sae.cfg.prefix_widths():
            keep = (active.col >= lo) & (active.col < hi)
            group = active.restrict(keep)
            out = kernels.sparse_decode(group.masked(vals), sae.W_dec, group, fast)
            resid = resid + out
            sparse_out = sparse_out + out
            flat = resid.flatten()
            losses.append(torch.dot(flat, flat) / (n * d))
            lo = hi
        return SparseStep(pre, active, thr, sparse_out, mse=torch.stack(losses).mean())
