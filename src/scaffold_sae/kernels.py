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

On a GPU every shape here is fixed by the batch's shape, never by its values: nothing waits for the GPU (no
``nonzero``, boolean-mask index, ``bincount`` or host read).  A selection stores B*k pairs and marks the
ones that are not active (non-positive pre-activations) in :attr:`ActiveSet.mask`.  On the CPU, where a host
read costs nothing, batch top-k reads a bound back and gathers only the pairs above it (:func:`host_reads`;
1.2x the training step on 2 cores, docs/gpu.md); inside :class:`device_path` (which ``scaffold_sae.syncs.SyncRecorder`` enters) the CPU
runs the GPU's path, so what the sync tests check is what a GPU runs.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


GROUP = 8
"""Batch top-k's candidates are whole groups of GROUP adjacent latents of a token (see :func:`candidates`)."""


@dataclass
class ActiveSet:
    """The selected (token, latent) pairs of one batch, in CSR order (by token, then latent).

    The number of pairs is fixed by the shapes (B*k for the k-sparse rules), never by the data, so nothing
    here waits for the GPU: a pair whose pre-activation is not positive stays in the set with ``mask`` False
    and contributes exactly zero (its value is replaced by 0, so it has no gradient either)."""

    row: Tensor
    """Token index of each pair, LongTensor[nnz]."""
    col: Tensor
    """Latent index of each pair, LongTensor[nnz]."""
    crow: Tensor
    """CSR row pointer, LongTensor[B + 1]."""
    n_rows: int
    """Number of tokens B."""
    n_cols: int
    """Number of latents m."""
    pre_values: Tensor | None = None
    """The pre-activations at the pairs, when the selection already gathered them."""
    mask: Tensor | None = None
    """BoolTensor[nnz]: the pair is active (its pre-activation is kept); None = every pair."""

    @property
    def nnz(self) -> int:
        """Number of stored pairs (a shape, not a count of active ones: see :meth:`count`)."""
        return int(self.col.numel())

    def count(self) -> Tensor:
        """Number of active pairs, a 0-dim device tensor (read it only when logging)."""
        if self.mask is None:
            return torch.tensor(self.nnz, device=self.col.device)
        return self.mask.sum()

    def fires(self) -> Tensor:
        """Active pairs per latent, LongTensor[m] on the device (index_add: bincount would wait for the GPU)."""
        ones = (torch.ones_like(self.col) if self.mask is None else self.mask.long())
        return torch.zeros(self.n_cols, dtype=torch.long, device=self.col.device).index_add_(0, self.col, ones)

    def masked(self, values: Tensor) -> Tensor:
        """``values`` [nnz] with inactive pairs set to 0 (no gradient flows to them)."""
        return values if self.mask is None else torch.where(self.mask, values, values.new_zeros(()))

    def restrict(self, keep: Tensor) -> "ActiveSet":
        """The same pairs with only those where ``keep`` [nnz] holds active (shapes unchanged)."""
        mask = keep if self.mask is None else self.mask & keep
        out = ActiveSet(self.row, self.col, self.crow, self.n_rows, self.n_cols, self.pre_values, mask)
        out._t_cache = getattr(self, "_t_cache", None)
        return out

    def dense(self, pre: Tensor) -> Tensor:
        """Dense codes [B, m]: ``pre`` at the active pairs, zero elsewhere."""
        codes = torch.zeros_like(pre)
        return codes.index_put((self.row, self.col), self.masked(pre[self.row, self.col]))

    def csr(self, values: Tensor) -> Tensor:
        """The [B, m] CSR matrix holding ``values`` at the pairs."""
        return _csr(self.crow, self.col, values, (self.n_rows, self.n_cols))

    def csr_t(self, values: Tensor) -> Tensor:
        """The transposed [m, B] CSR matrix holding ``values`` at the pairs."""
        perm, crow_t, col_t = self._transpose()
        return _csr(crow_t, col_t, values[perm], (self.n_cols, self.n_rows))

    def bag_sum(self, values: Tensor, table: Tensor) -> Tensor:
        """``csr(values) @ table`` ([B, d]) via embedding_bag, which beats the CSR product here."""
        return F.embedding_bag(self.col, table, self.crow[:-1], mode="sum", per_sample_weights=values)

    def _transpose(self) -> tuple[Tensor, Tensor, Tensor]:
        cached = getattr(self, "_t_cache", None)
        if cached is None:
            # the keys col * B + row are distinct, so an unstable sort orders by latent then token (torch's stable
            # sort is ~500x slower on the CPU); the row pointer comes from a search, not a bincount (a sync on CUDA)
            perm = sort_indices(self.col * self.n_rows + self.row)
            sorted_col = self.col[perm]
            crow_t = torch.searchsorted(sorted_col, torch.arange(self.n_cols + 1, device=self.col.device))
            cached = (perm, crow_t, self.row[perm])
            self._t_cache = cached
        return cached


def sort_indices(keys: Tensor) -> Tensor:
    """The permutation that sorts ``keys``.  On the CPU in one thread: torch's two-thread sort of ~10^5 keys
    stalls for 20-600 ms on an oversubscribed CPU, against ~2 ms in one thread."""
    if keys.device.type != "cpu" or torch.compiler.is_compiling():
        return torch.sort(keys).indices
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.sort(keys).indices
    finally:
        torch.set_num_threads(threads)


def _csr_order(row: Tensor, col: Tensor, n_rows: int, n_cols: int) -> Tensor:
    """The permutation that sorts pairs by (row, col)."""
    return sort_indices(row * n_cols + col)


def active_from_pairs(row: Tensor, col: Tensor, vals: Tensor, n_rows: int, n_cols: int, keep: Tensor) -> ActiveSet:
    order = _csr_order(row, col, n_rows, n_cols)
    row, col, vals, keep = row[order], col[order], vals[order], keep[order]
    crow = torch.searchsorted(row, torch.arange(n_rows + 1, device=row.device))
    return ActiveSet(row=row, col=col, crow=crow, n_rows=n_rows, n_cols=n_cols, pre_values=vals, mask=keep)


def active_from_coo(row: Tensor, col: Tensor, n_rows: int, n_cols: int) -> ActiveSet:
    """An active set of the given pairs, all active (row-sorted input).  Its size follows the data, so building
    it from a mask waits for the GPU: the built-in rules use fixed shapes instead."""
    crow = torch.searchsorted(row, torch.arange(n_rows + 1, device=row.device))
    return ActiveSet(row=row, col=col, crow=crow, n_rows=n_rows, n_cols=n_cols)


def row_topk(pre: Tensor, k: int) -> ActiveSet:
    """Per-token top-k of relu(pre): the k largest positive pre-activations of each row (B*k stored pairs; a
    pair whose value is not positive is inactive)."""
    n_rows, n_cols = pre.shape
    k = min(k, n_cols)
    vals, col = pre.topk(k, dim=1, sorted=False)
    col, order = col.sort(dim=1)
    vals = vals.gather(1, order)
    row = torch.arange(n_rows, device=pre.device)[:, None].expand(n_rows, k).reshape(-1)
    crow = torch.arange(n_rows + 1, device=pre.device) * k
    vals = vals.reshape(-1)
    return ActiveSet(row=row, col=col.reshape(-1), crow=crow, n_rows=n_rows, n_cols=n_cols, pre_values=vals,
                     mask=vals > 0)


_DEVICE_PATH = [0]


class device_path:
    """Within it the selections take the GPU's fixed-shape path on every device (nesting allowed)."""

    def __enter__(self) -> "device_path":
        _DEVICE_PATH[0] += 1
        return self

    def __exit__(self, *exc) -> None:
        _DEVICE_PATH[0] -= 1


def host_reads(t: Tensor) -> bool:
    """Whether a selection on ``t`` may read values back to the host: on the CPU, outside :class:`device_path`
    and outside torch.compile."""
    return t.device.type == "cpu" and not _DEVICE_PATH[0] and not torch.compiler.is_compiling()


def batch_topk(pre: Tensor, k: int) -> tuple[ActiveSet, Tensor]:
    """Batch top-k: the B*k largest positive pre-activations of the whole batch.

    Where :func:`host_reads` allows it (the CPU, outside :class:`device_path`) this is :func:`batch_topk_host`,
    which stores only the active pairs.  Otherwise, with fixed shapes, it returns the active set (B*k stored pairs
    in CSR order; fewer are active when fewer than B*k values are positive) and the threshold, a 0-dim device
    tensor (the smallest kept value; 0 when fewer than B*k values are positive).  Exact (equals a top-k over the
    flattened batch, ties aside) without sorting the batch or reading anything back to the host:
    :func:`candidates` holds every value of the batch's top B*k, and one top-k over the candidates makes the cut.
    """
    if host_reads(pre):
        return batch_topk_host(pre, k)
    n_rows, n_cols = pre.shape
    total = min(n_rows * k, pre.numel())
    vals, row, col = candidates(pre, total)
    top, at = vals.topk(total, sorted=False)
    keep = top > 0
    thr = torch.where(keep.all(), top.min(), top.new_zeros(())).clamp_min(0)
    return active_from_pairs(row[at], col[at], top, n_rows, n_cols, keep), thr


def batch_topk_host(pre: Tensor, k: int, sample_rows: int = 256) -> tuple[ActiveSet, Tensor]:
    """:func:`batch_topk`'s set and threshold by reading back to the host (for the CPU): a lower bound on the cut
    is read off a few evenly spaced rows, every value at or above it is gathered in one pass (``nonzero``, which
    leaves the pairs in CSR order), and a k-th value over those makes the exact cut; a bound that proves too high
    is lowered and the pass repeated.  Stores only the active pairs (no mask)."""
    n_rows, n_cols = pre.shape
    total = min(n_rows * k, pre.numel())
    sub = pre[torch.linspace(0, n_rows - 1, min(n_rows, sample_rows)).long()].flatten()
    margin = 1.3
    while True:
        q = math.ceil(margin * total * sub.numel() / pre.numel())
        low = float(sub.topk(q, sorted=False).values.min()) if q < sub.numel() else 0.0
        if low <= 0.0:
            row, col = (pre > 0).nonzero(as_tuple=True)
            break
        row, col = (pre >= low).nonzero(as_tuple=True)
        if row.numel() >= total:
            break
        margin *= 2.0
    vals = pre[row, col]
    if vals.numel() > total:
        keep = vals >= vals.kthvalue(vals.numel() - total + 1).values
        row, col, vals = row[keep], col[keep], vals[keep]
    thr = vals.min() if vals.numel() >= total else pre.new_zeros(())
    active = active_from_coo(row, col, n_rows, n_cols)
    active.pre_values = vals
    return active, thr.clamp_min(0)


def candidates(pre: Tensor, total: int, group: int = GROUP) -> tuple[Tensor, Tensor, Tensor]:
    """Values, rows and columns of a candidate set that holds every one of the ``total`` largest values of
    ``pre`` [B, m] (ties aside), with shapes fixed by (B, m, total, group).

    Each row is cut into groups of ``group`` adjacent columns.  A value among the top ``total`` lies in a group
    whose maximum is at least that value, and at most ``total`` groups can have a maximum that high: so the
    ``total`` groups with the largest maxima hold them all.  The candidates are those groups' values (total * group
    of them): one pass for the maxima and two top-k calls, whatever the rows look like.
    """
    n_rows, n_cols = pre.shape
    pad = -n_cols % group
    if pad:
        pre = F.pad(pre, (0, pad), value=float("-inf"))
    per_row = pre.shape[1] // group
    blocks = pre.reshape(n_rows * per_row, group)
    picked = blocks.amax(1).topk(min(total, blocks.shape[0]), sorted=False).indices
    vals = blocks.index_select(0, picked)
    row = (picked // per_row)[:, None].expand(-1, group)
    col = (picked % per_row * group)[:, None] + torch.arange(group, device=pre.device)
    return vals.reshape(-1), row.reshape(-1), col.clamp_max(n_cols - 1).reshape(-1)


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
    """Pre-activations at the pairs (0 at inactive ones), differentiable w.r.t. x_in, w_enc [m, d], b_enc.

    ``pre`` must equal ``x_in @ w_enc.T + b_enc`` (computed without grad).  With ``fast=False``
    the pre-activations are recomputed densely with autograd (reference path).
    """
    if fast:
        active._transpose()  # built here, not in backward: a traced backward must not mutate the set (dynamo)
        return active.masked(_GatherActive.apply(x_in, w_enc, b_enc, pre.detach(), active))
    dense = torch.addmm(b_enc, x_in, w_enc.t())
    return active.masked(dense[active.row, active.col])


def sparse_decode(vals: Tensor, w_dec: Tensor, active: ActiveSet, fast: bool = True) -> Tensor:
    """``sum_j vals_j * w_dec[col_j]`` per token ([B, d]); ``fast=False`` uses dense codes."""
    if fast:
        active._transpose()
        return _SparseDecode.apply(vals, w_dec, active)
    codes = torch.zeros(active.n_rows, active.n_cols, dtype=vals.dtype, device=vals.device)
    codes = codes.index_put((active.row, active.col), vals)
    return codes @ w_dec
