"""Sparse-aware building blocks for k-sparse SAEs, with a plain dense fallback.

A k-sparse SAE step has one unavoidable dense product, the encoder pre-activations
``pre = x_in @ W_enc^T + b_enc`` ([B, m]).  Everything after the selection touches only the
active (token, latent) pairs, about B*k of them.  This module represents that set as an
:class:`ActiveSet` (CSR layout, rows = tokens) and provides autograd functions whose backward
passes stay sparse:

* :func:`gather_active` — the selected pre-activations; backward gives grad W_enc only at the
  active latents (``G^T @ x_in``, a transposed-CSR product), grad x_in through those latents only
  (``G @ W_enc``, an embedding_bag) and grad b_enc by scatter-add;
* :func:`sparse_decode` — ``sum_j vals_j * W_dec[col_j]`` per token (embedding_bag); backward
  gives the sampled products ``g . W_dec[col]`` (sampled_addmm) and grad W_dec only at the
  active rows (transposed-CSR product).

Measured on the 2-core CPU: embedding_bag beats the CSR product for ``S @ W``; a CSR product
beats index_add / embedding_bag backward for ``S^T @ G``; gathering rows into [B, k, d] is far
slower than either.

``fast=False`` selects the obvious dense implementation of the same maths (dense masked codes and
full matrix products); tests compare the two.  The selection functions are exact: batch top-k
computes the same set as a top-k over the flattened batch (ties aside).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


@dataclass
class ActiveSet:
    """The active (token, latent) pairs of one batch, in CSR order (by token, then latent)."""

    row: Tensor
    """Token index of each active pair, LongTensor[nnz]."""
    col: Tensor
    """Latent index of each active pair, LongTensor[nnz]."""
    crow: Tensor
    """CSR row pointer, LongTensor[B + 1]."""
    n_rows: int
    """Number of tokens B."""
    n_cols: int
    """Number of latents m."""
    pre_values: Tensor | None = None
    """The pre-activations at the pairs, when the selection already gathered them."""

    @property
    def nnz(self) -> int:
        return int(self.col.numel())

    def csr(self, values: Tensor) -> Tensor:
        """The [B, m] CSR matrix holding ``values`` at the active pairs."""
        return _csr(self.crow, self.col, values, (self.n_rows, self.n_cols))

    def csr_t(self, values: Tensor) -> Tensor:
        """The transposed [m, B] CSR matrix holding ``values`` at the active pairs."""
        perm, crow_t, col_t = self._transpose()
        return _csr(crow_t, col_t, values[perm], (self.n_cols, self.n_rows))

    def subset(self, keep: Tensor) -> "ActiveSet":
        """The pairs selected by the bool mask ``keep`` [nnz] (CSR order is preserved)."""
        row = self.row[keep]
        sub = active_from_coo(row, self.col[keep], self.n_rows, self.n_cols)
        if self.pre_values is not None:
            sub.pre_values = self.pre_values[keep]
        return sub

    def bag_sum(self, values: Tensor, table: Tensor) -> Tensor:
        """``csr(values) @ table`` ([B, d]) via embedding_bag, which beats the CSR product here."""
        return F.embedding_bag(self.col, table, self.crow[:-1], mode="sum", per_sample_weights=values)

    def _transpose(self) -> tuple[Tensor, Tensor, Tensor]:
        cached = getattr(self, "_t_cache", None)
        if cached is None:
            # numpy's stable integer sort (radix for uint16) is far faster here than torch's
            # parallel sort, which stalls when the CPU is oversubscribed
            if self.col.is_cuda:  # GPU path: torch's stable sort (numpy needs host memory)
                perm = torch.sort(self.col, stable=True).indices
            else:
                keys = self.col.numpy().astype(np.uint16 if self.n_cols <= 65536 else np.int32)
                perm = torch.from_numpy(np.argsort(keys, kind="stable"))
            counts = torch.bincount(self.col, minlength=self.n_cols)
            crow_t = torch.zeros(self.n_cols + 1, dtype=torch.long, device=self.col.device)
            torch.cumsum(counts, 0, out=crow_t[1:])
            cached = (perm, crow_t, self.row[perm])
            self._t_cache = cached
        return cached


def row_topk(pre: Tensor, k: int) -> ActiveSet:
    """Per-token top-k of relu(pre): the k largest positive pre-activations of each row."""
    n_rows, n_cols = pre.shape
    vals, col = pre.topk(min(k, n_cols), dim=1, sorted=False)
    col, order = col.sort(dim=1)
    vals = vals.gather(1, order)
    keep = vals > 0
    counts = keep.sum(1)
    crow = torch.zeros(n_rows + 1, dtype=torch.long, device=pre.device)
    torch.cumsum(counts, 0, out=crow[1:])
    row = torch.repeat_interleave(torch.arange(n_rows, device=pre.device), counts)
    return ActiveSet(row=row, col=col[keep], crow=crow, n_rows=n_rows, n_cols=n_cols, pre_values=vals[keep])


def batch_topk(pre: Tensor, k: int, sample_rows: int = 256) -> tuple[ActiveSet, float]:
    """Batch top-k: the B*k largest positive pre-activations of the whole batch.

    Returns the active set (CSR order) and the threshold (smallest kept value; 0 when fewer than
    B*k values are positive).  Exact (equals a top-k over the flattened batch, ties aside) but
    avoids sorting the batch: a lower bound on the threshold is read off a few rows, every value
    above it is gathered in one pass, and the exact cut is a k-th value over those candidates.
    If the bound turns out too high (fewer than B*k candidates) it is lowered and retried.
    """
    n_rows, n_cols = pre.shape
    total = min(n_rows * k, pre.numel())
    rows = torch.linspace(0, n_rows - 1, min(n_rows, sample_rows), device=pre.device).long()
    sub = pre[rows].flatten()
    margin = 1.3
    while True:
        q = int(math.ceil(margin * k * rows.numel()))
        low = float(sub.topk(q, sorted=False).values.min()) if q < sub.numel() else 0.0
        if low <= 0.0:
            row, col = (pre > 0).nonzero(as_tuple=True)
            break
        row, col = (pre >= low).nonzero(as_tuple=True)
        if row.numel() >= total:
            break
        margin *= 2.0
    vals = pre[row, col]
    thr = 0.0
    if vals.numel() > total:
        thr = float(vals.kthvalue(vals.numel() - total + 1).values)
        keep = vals >= thr
        row, col, vals = row[keep], col[keep], vals[keep]
    elif vals.numel():
        thr = float(vals.min()) if low > 0 else 0.0
    active = active_from_coo(row, col, n_rows, n_cols)
    active.pre_values = vals
    return active, max(thr, 0.0)


def active_from_coo(row: Tensor, col: Tensor, n_rows: int, n_cols: int) -> ActiveSet:
    counts = torch.bincount(row, minlength=n_rows)
    crow = torch.zeros(n_rows + 1, dtype=torch.long, device=row.device)
    torch.cumsum(counts, 0, out=crow[1:])
    return ActiveSet(row=row, col=col, crow=crow, n_rows=n_rows, n_cols=n_cols)


# --------------------------------------------------------------------------------------------
# autograd functions


class _GatherActive(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_in, w_enc, b_enc, pre, active):  # type: ignore[override]
        ctx.active = active
        ctx.save_for_backward(x_in, w_enc)
        ctx.n_latents = w_enc.shape[0]
        if active.pre_values is not None:
            return active.pre_values.clone()
        return pre[active.row, active.col]

    @staticmethod
    def backward(ctx, grad_vals):  # type: ignore[override]
        x_in, w_enc = ctx.saved_tensors
        active: ActiveSet = ctx.active
        grad_vals = grad_vals.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = active.bag_sum(grad_vals, w_enc)
        if ctx.needs_input_grad[1]:
            gw = torch.sparse.mm(active.csr_t(grad_vals), x_in)
        if ctx.needs_input_grad[2]:
            gb = torch.zeros(ctx.n_latents, dtype=grad_vals.dtype,
                             device=grad_vals.device).index_add_(0, active.col, grad_vals)
        return gx, gw, gb, None, None


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vals, w_dec, active):  # type: ignore[override]
        ctx.active = active
        ctx.save_for_backward(vals, w_dec)
        return active.bag_sum(vals, w_dec)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        vals, w_dec = ctx.saved_tensors
        active: ActiveSet = ctx.active
        grad_out = grad_out.contiguous()
        gv = gw = None
        if ctx.needs_input_grad[0]:
            pattern = active.csr(torch.ones_like(vals))
            gv = torch.sparse.sampled_addmm(pattern, grad_out, w_dec.t(), beta=0.0).values()
        if ctx.needs_input_grad[1]:
            gw = torch.sparse.mm(active.csr_t(vals), grad_out)
        return gv, gw, None


def gather_active(x_in: Tensor, w_enc: Tensor, b_enc: Tensor, pre: Tensor, active: ActiveSet,
                  fast: bool = True) -> Tensor:
    """Pre-activations at the active pairs, differentiable w.r.t. x_in, w_enc [m, d], b_enc.

    ``pre`` must equal ``x_in @ w_enc.T + b_enc`` (computed without grad).  With ``fast=False``
    the pre-activations are recomputed densely with autograd (reference path).
    """
    if fast:
        return _GatherActive.apply(x_in, w_enc, b_enc, pre.detach(), active)
    dense = torch.addmm(b_enc, x_in, w_enc.t())
    return dense[active.row, active.col]


def sparse_decode(vals: Tensor, w_dec: Tensor, active: ActiveSet, fast: bool = True) -> Tensor:
    """``sum_j vals_j * w_dec[col_j]`` per token ([B, d]); ``fast=False`` uses dense codes."""
    if fast:
        return _SparseDecode.apply(vals, w_dec, active)
    codes = torch.zeros(active.n_rows, active.n_cols, dtype=vals.dtype, device=vals.device)
    codes = codes.index_put((active.row, active.col), vals)
    return codes @ w_dec
