"""Batched lockstep: n SAEs of one shape trained as one stacked computation instead of n steps.

A rank sweep trains SAEs that differ only in their scaffold (rank, seed).  Stacked, their weights are
[n, m, d] tensors and each layer is one batched product for all of them:

    x_cent = x - b_dec                                   [n, B, d]
    scaf   = (x_cent V) U^T                              two bmm (U, V zero-padded to the largest rank)
    pre    = baddbmm(b_enc, x_in, W_enc^T)               one bmm for the n encoders
    f      = batch top-k of each SAE's pre               kernels.batch_topk, n selections
    x_hat  = embedding_bag over the stacked decoder      one bag-sum for the n decoders
             + scaf + b_dec

followed by one Adam step over the stacked parameters.  The n SAEs' active sets form one block-diagonal set
over n*B tokens and n*m latents, so the one-SAE sparse kernels (the gathered encoder backward, the embedding_bag
decode) serve all n at once.  Every SAE's loss, gradient clip, decoder-gradient
projection, Adam update and unit-norm constraint only ever mixes numbers of that SAE, and the zero padding of a
smaller scaffold gets zero gradients and zero Adam updates, so the stacked run gives the weights of n separate
runs (tests/test_batched.py: to 1e-5 in fp32).

Supported: batchtopk and topk SAEs with the same d, m, k, encoder_input, scaffold_centred and scaffold_lr_mult,
untied scaffolds (a tied scaffold's QR is per SAE).  AuxK runs per SAE on slices of the stacked weights (dead
latents are rare; their shapes differ per SAE).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import kernels
from .sae import DeadLatents, HybridSAE

STACKABLE = ("batchtopk", "topk")


class StackError(ValueError):
    """SAEs that cannot be stacked into one batched computation."""


def stack_key(sae: HybridSAE) -> tuple:
    """SAEs with equal keys can be stacked."""
    c = sae.cfg
    return (c.arch, c.d_in, c.width, c.k, c.encoder_input, c.scaffold_centred, c.scaffold_lr_mult, c.scaffold_tied,
            c.aux_k, c.aux_coeff)


class StackedSAEs(nn.Module):
    """The weights of n same-shape SAEs stacked along a first dimension (copies; :meth:`unstack` writes back)."""

    def __init__(self, saes: list[HybridSAE]):
        super().__init__()
        if not saes:
            raise StackError("no SAEs to stack")
        keys = {stack_key(s) for s in saes}
        cfg = saes[0].cfg
        if len(keys) > 1:
            raise StackError("SAEs differ in more than rank and seed: stack only SAEs of one arch, d, m, k, "
                             "encoder_input, scaffold_centred and scaffold_lr_mult")
        if cfg.arch not in STACKABLE or cfg.scaffold_tied:
            raise StackError(f"arch {cfg.arch} (tied={cfg.scaffold_tied}) cannot be stacked: batched lockstep supports "
                             f"untied {', '.join(STACKABLE)} SAEs")
        self.cfg = cfg
        self.n = len(saes)
        self.ranks = [s.rank for s in saes]
        width = max(self.ranks)
        d = cfg.d_in

        def padded(t: Tensor) -> Tensor:
            return torch.cat([t.detach(), t.new_zeros(d, width - t.shape[1])], 1)

        self.encoder_weight = nn.Parameter(torch.stack([s.encoder_weight.detach() for s in saes]).clone())
        self.b_enc = nn.Parameter(torch.stack([s.b_enc.detach() for s in saes]).clone())
        self.W_dec = nn.Parameter(torch.stack([s.W_dec.detach() for s in saes]).clone())
        self.b_dec = nn.Parameter(torch.stack([s.b_dec.detach() for s in saes]).clone())
        self.U = nn.Parameter(torch.stack([padded(s.U) for s in saes]))
        self.V = nn.Parameter(torch.stack([padded(s.V) for s in saes]))

    def dictionary_parameters(self) -> list[nn.Parameter]:
        return [self.encoder_weight, self.b_enc, self.W_dec, self.b_dec]

    def scaffold_parameters(self) -> list[nn.Parameter]:
        return [self.U, self.V] if max(self.ranks) else []

    @torch.no_grad()
    def unstack(self, saes: list[HybridSAE]) -> None:
        """Copy the stacked weights back into ``saes`` (the list it was built from)."""
        for i, sae in enumerate(saes):
            sae.encoder_weight.copy_(self.encoder_weight[i])
            sae.b_enc.copy_(self.b_enc[i])
            sae.W_dec.copy_(self.W_dec[i])
            sae.b_dec.copy_(self.b_dec[i])
            sae.U.copy_(self.U[i, :, :sae.rank])
            if sae.V_free is not None:
                sae.V_free.copy_(self.V[i, :, :sae.rank])

    def losses(self, x: Tensor, dead: list[DeadLatents] | None = None) -> dict[str, Tensor]:
        """Per-SAE training losses [n] on one shared batch ``x`` [B, d] (plus fvu, l0 [n] and fires [n, m])."""
        cfg, n = self.cfg, self.n
        b, d = x.shape
        m = cfg.width
        x_cent = x[None] - self.b_dec[:, None]
        source = x_cent if cfg.scaffold_centred else x[None].expand(n, b, d)
        scaf = torch.bmm(torch.bmm(source, self.V), self.U.transpose(1, 2))
        x_in = x_cent - scaf if cfg.encoder_input == "residual" else x_cent
        with torch.no_grad():
            pre = torch.baddbmm(self.b_enc[:, None], x_in, self.encoder_weight.transpose(1, 2))
            sets = [_select(cfg, pre[i]) for i in range(n)]
            joint = _block_diagonal([a for a, _ in sets], b, m)
        # the n SAEs as one of n*m latents over n*B rows, block-diagonal: the one-SAE sparse kernels (gathered
        # encoder backward, embedding_bag decode) serve all n without mixing them
        vals = kernels.gather_active(x_in.reshape(n * b, d), self.encoder_weight.reshape(n * m, d),
                                     self.b_enc.reshape(n * m), pre.reshape(n * b, m), joint)
        sparse_out = kernels.sparse_decode(vals, self.W_dec.reshape(n * m, d), joint).view(n, b, d)
        x_hat = sparse_out + scaf + self.b_dec[:, None]
        err = x_hat - x[None]
        mse = err.pow(2).sum((1, 2)) / (b * d)
        aux = torch.zeros(n, dtype=x.dtype, device=x.device)
        if dead is not None and cfg.effective_aux_k > 0:
            aux = torch.stack([self._aux(i, x, x_hat[i], x_in[i], pre[i], dead[i]) for i in range(n)])
        with torch.no_grad():
            xc = x_cent.detach()
            mean = xc.mean(1)
            total_var = xc.pow(2).sum((1, 2)) - b * mean.pow(2).sum(1)
            fvu = err.detach().pow(2).sum((1, 2)) / total_var.clamp_min(1e-12)
            fires = torch.stack([a.fires() for a, _ in sets])
            thresholds = torch.stack([thr for _, thr in sets])
        return {"loss": mse + aux, "mse": mse, "aux": aux, "fvu": fvu, "l0": fires.sum(1) / b, "fires": fires,
                "batch_threshold": thresholds}

    def _aux(self, i: int, x: Tensor, x_hat: Tensor, x_in: Tensor, pre: Tensor, pool: DeadLatents) -> Tensor:
        if not pool.index.numel():
            return x.new_zeros(())
        k_aux = min(self.cfg.effective_aux_k, pool.index.numel())
        with torch.no_grad():
            masked = torch.where(pool.mask, pre.index_select(1, pool.index), float("-inf"))
            sub = kernels.row_topk(masked, k_aux)
            sub.col = pool.index[sub.col]
            sub.n_cols = self.cfg.width
        vals = kernels.gather_active(x_in, self.encoder_weight[i], self.b_enc[i], pre, sub)
        e_hat = kernels.sparse_decode(vals, self.W_dec[i], sub)
        e = (x - x_hat).detach()
        var = (e - e.mean(0)).pow(2).sum().clamp_min(1e-12)
        aux = (e_hat - e).pow(2).sum() / var
        return self.cfg.aux_coeff * torch.where(pool.mask.any(), aux, aux.new_zeros(()))

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        g = self.W_dec.grad
        if g is not None:
            g -= (g * self.W_dec).sum(-1, keepdim=True) * self.W_dec

    @torch.no_grad()
    def clip_grads(self, max_norm: float) -> None:
        """Each SAE's gradient scaled to norm <= max_norm, as torch.nn.utils.clip_grad_norm_ does for one SAE."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        sq = torch.stack([g.reshape(self.n, -1).pow(2).sum(1) for g in grads]).sum(0)
        coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))

    @torch.no_grad()
    def apply_constraints(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _block_diagonal(sets: list[kernels.ActiveSet], rows: int, cols: int) -> kernels.ActiveSet:
    """The active sets of n SAEs as one set over n*rows tokens and n*cols latents (SAE i's pairs shifted by
    (i*rows, i*cols)); each set's CSR pointer is shifted by the pairs of the sets before it (B*k each on the
    fixed-shape path; the CPU's host-read path stores only the active pairs, so the counts differ)."""
    starts = [0]
    for a in sets[:-1]:
        starts.append(starts[-1] + a.nnz)
    crow = torch.cat([a.crow[:-1] + s for a, s in zip(sets, starts)] + [sets[-1].crow[-1:] + starts[-1]])
    mask = None
    if any(a.mask is not None for a in sets):
        mask = torch.cat([a.mask if a.mask is not None else torch.ones_like(a.col, dtype=torch.bool) for a in sets])
    return kernels.ActiveSet(row=torch.cat([a.row + i * rows for i, a in enumerate(sets)]),
                             col=torch.cat([a.col + i * cols for i, a in enumerate(sets)]), crow=crow,
                             n_rows=len(sets) * rows, n_cols=len(sets) * cols,
                             pre_values=torch.cat([a.pre_values for a in sets]), mask=mask)


def _select(cfg, pre: Tensor) -> tuple[kernels.ActiveSet, Tensor]:
    if cfg.arch == "topk":
        return kernels.row_topk(pre, cfg.k), pre.new_zeros(())
    return kernels.batch_topk(pre, cfg.k)


class StackedTrainer:
    """Adam over a :class:`StackedSAEs` with the one-SAE step's rules (lr schedule factor, decoder-gradient
    projection, per-SAE clipping, unit-norm decoder rows); the state the trainer's SAEState keeps per SAE is
    kept here with a leading SAE dimension."""

    def __init__(self, stack: StackedSAEs, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 grad_clip: float = 1.0):
        self.stack, self.lr, self.grad_clip = stack, lr, grad_clip
        groups = [{"params": stack.dictionary_parameters(), "lr": lr, "lr_mult": 1.0}]
        if stack.scaffold_parameters():
            mult = stack.cfg.scaffold_lr_mult
            groups.append({"params": stack.scaffold_parameters(), "lr": lr * mult, "lr_mult": mult})
        self.optim = torch.optim.Adam(groups, betas=betas, fused=True)
        m = stack.cfg.width
        self.since_fired = torch.zeros(stack.n, m, dtype=torch.long, device=stack.W_dec.device)

    def step(self, x: Tensor, factor: float = 1.0, dead_tokens: int | None = None) -> dict[str, Tensor]:
        """One step of every stacked SAE on ``x`` (no host read); returns the per-SAE metrics as tensors [n]."""
        stack = self.stack
        for group in self.optim.param_groups:
            group["lr"] = self.lr * group["lr_mult"] * factor
        self.optim.zero_grad(set_to_none=True)
        dead = None
        if dead_tokens is not None:
            every = torch.arange(stack.cfg.width, device=x.device)
            dead = [DeadLatents(every, self.since_fired[i] >= dead_tokens) for i in range(stack.n)]
        out = stack.losses(x, dead)
        out["loss"].sum().backward()
        stack.project_decoder_grad()
        if self.grad_clip > 0:
            stack.clip_grads(self.grad_clip)
        self.optim.step()
        stack.apply_constraints()
        with torch.no_grad():
            self.since_fired = torch.where(out["fires"] > 0, 0, self.since_fired + x.shape[0])
        return out


__all__ = ["STACKABLE", "StackError", "StackedSAEs", "StackedTrainer", "stack_key"]
