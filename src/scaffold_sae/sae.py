"""Hybrid sparse autoencoders: a sparse dictionary plus a rank-r linear scaffold in parallel.

    x_hat = b_dec + U V^T (x - b_dec) + W_dec^T f(W_enc^T (x_in - b_dec) + b_enc)

with x_in = x (``encoder_input="x"``) or x - U V^T (x - b_dec) (``encoder_input="residual"``).  With
``scaffold_centred=False`` the scaffold term is U V^T x (it also carries its share of the activation mean).
``rank=0`` is the plain SAE through the same code path.  The r scaffold coordinates are never
latents: codes, L0, dead and dense statistics only ever concern f.

Parameters are stored as ``encoder_weight`` [m, d] (rows = latents, the layout the sparse
kernels want; ``W_enc`` [d, m] is the SAELens view), ``b_enc`` [m], ``W_dec`` [m, d] (unit-norm
rows), ``b_dec`` [d], ``U`` [d, r] and ``V`` [d, r] (``V`` is ``U`` when tied).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn

from . import archs, kernels
from .config import ConfigError
from .kernels import ActiveSet
from .subspace import orthonormalise, pca

SCAFFOLD_INITS = ("pca", "random")
ENCODER_INPUTS = ("x", "residual")


@dataclass
class SAEConfig:
    """One hybrid SAE: the sparse dictionary, its sparsity rule and the scaffold."""

    arch: str = "batchtopk"
    """Sparse dictionary, a name in the scaffold_sae.archs registry: batchtopk | matryoshka (BatchTopK
    with nested prefix losses) | topk | relu (ReLU + L1).  ``jumprelu`` is load-only (SAEs read from
    SAELens files)."""
    d_in: int = 0
    """Input width d (0 = take it from the activation cache)."""
    width: int = 4608
    """Number of sparse latents m."""
    k: int = 32
    """Target active latents per token (batchtopk / matryoshka / topk)."""
    rank: int = 0
    """Scaffold rank r; 0 is the plain SAE."""
    scaffold_init: str = "pca"
    """pca: U = V = top-r principal directions of a data sample; random: a random orthonormal basis."""
    scaffold_tied: bool = False
    """True: U = V with orthonormal columns (re-orthonormalised by QR after every step);
    False: free factors U, V (both initialised to the same basis)."""
    encoder_input: str = "residual"
    """What the sparse encoder sees: x, or residual = x minus the scaffold's output."""
    scaffold_centred: bool = True
    """True: the scaffold acts on x - b_dec (term U V^T (x - b_dec)); False: on the uncentred x (term U V^T x),
    so removing the scaffold also removes its share of the activation mean, e.g. the mean of the massive
    dimensions (its PCA initialisation is then the top-r directions of the uncentred second moment)."""
    scaffold_lr_mult: float = 1.0
    """Learning-rate multiplier for U, V relative to the dictionary."""
    matryoshka_widths: tuple[int, ...] | None = None
    """Nested prefix widths for matryoshka, increasing, last = width (default m/16, m/8, m/4, m/2, m)."""
    l1_coeff: float = 0.01
    """relu only: L1 coefficient on f_i * ||W_dec,i|| (loss is the per-element MSE of scaled inputs)."""
    aux_k: int | None = None
    """AuxK (k-sparse archs): dead latents used per token to model the residual (default d_in // 2;
    0 disables)."""
    aux_coeff: float = 1.0 / 32.0
    """AuxK loss coefficient."""
    seed: int | None = None
    """Seed of this SAE's initialisation (None: the TrainConfig seed). The data order stays the run's, so SAEs
    that differ only in this seed train in lockstep on the same batches."""

    def __post_init__(self) -> None:
        if self.matryoshka_widths is not None:
            self.matryoshka_widths = tuple(int(w) for w in self.matryoshka_widths)

    def validate(self, trainable: bool = True) -> "SAEConfig":
        _choice("arch", self.arch, tuple(archs.names(load_only=not trainable)))
        arch = archs.get(self.arch)
        _choice("scaffold_init", self.scaffold_init, SCAFFOLD_INITS)
        _choice("encoder_input", self.encoder_input, ENCODER_INPUTS)
        if self.d_in < 1:
            raise ConfigError(f"d_in={self.d_in} is invalid: d_in must be a positive integer")
        if self.width < 1:
            raise ConfigError(f"width={self.width} is invalid: width must be a positive integer")
        if arch.uses_k and not 1 <= self.k <= self.width:
            raise ConfigError(f"k={self.k} is invalid: k must be in 1..width ({self.width}) for arch "
                              f"{self.arch}")
        if not 0 <= self.rank < self.d_in:
            raise ConfigError(f"rank={self.rank} is invalid: rank must be in 0..{self.d_in - 1}")
        if self.aux_k is not None and self.aux_k < 0:
            raise ConfigError(f"aux_k={self.aux_k} is invalid: aux_k must be >= 0 (0 disables AuxK)")
        if self.l1_coeff < 0 or self.aux_coeff < 0 or self.scaffold_lr_mult < 0:
            raise ConfigError("l1_coeff, aux_coeff and scaffold_lr_mult must be >= 0")
        problem = arch.check(self)
        if problem:
            raise ConfigError(problem)
        return self

    def prefix_widths(self) -> tuple[int, ...]:
        if self.matryoshka_widths:
            return tuple(self.matryoshka_widths)
        return tuple(sorted({max(1, self.width // 16), max(1, self.width // 8), max(1, self.width // 4),
                             max(1, self.width // 2), self.width}))

    @property
    def effective_aux_k(self) -> int:
        return self.d_in // 2 if self.aux_k is None else self.aux_k

    def default_name(self) -> str:
        return f"{self.arch}_m{self.width}_k{self.k}_r{self.rank}"


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is invalid: allowed values are {', '.join(allowed)}")


class SAEOutput(NamedTuple):
    x_hat: Tensor
    """Reconstruction [B, d]."""
    codes: Tensor
    """Sparse codes f [B, m] (zeros where inactive)."""
    scaffold_out: Tensor
    """The scaffold term U V^T (x - b_dec) [B, d]."""
    sparse_out: Tensor
    """The sparse term W_dec^T f [B, d]."""


@dataclass
class StepLoss:
    """What one training forward returns (all in the trainer's scaled input space).  Every field is a device
    tensor: nothing is read back to the host, so a training step never waits for the GPU."""

    loss: Tensor
    mse: Tensor
    aux: Tensor
    l1: Tensor
    fvu: Tensor
    """Fraction of variance unexplained on this batch (0-dim)."""
    l0: Tensor
    """Mean active latents per token (0-dim)."""
    fires: Tensor
    """Active tokens per latent [m] (long)."""
    active: ActiveSet | None
    batch_threshold: Tensor
    """The batch's selection threshold (0-dim; 0 when the rule has none)."""
    x_hat: Tensor = field(repr=False)


@dataclass
class DeadLatents:
    """The latents AuxK may use this step: ``index`` [p] (increasing) holds every dead latent and maybe others,
    ``mask`` [p] says which of them are dead now.  A fixed superset keeps the AuxK shapes fixed between the
    trainer's log steps (see scaffold_sae.step); a plain dead mask [m] is the superset of all latents."""

    index: Tensor
    mask: Tensor

    @classmethod
    def from_mask(cls, dead: Tensor) -> "DeadLatents":
        return cls(torch.arange(dead.numel(), device=dead.device), dead)


class HybridSAE(nn.Module):
    """Sparse dictionary (a registered architecture, see scaffold_sae.archs) plus a rank-r scaffold."""

    def __init__(self, cfg: SAEConfig, generator: torch.Generator | None = None):
        super().__init__()
        cfg.validate(trainable=False)
        self.cfg = cfg
        d, m, r = cfg.d_in, cfg.width, cfg.rank
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        w_dec = torch.randn(m, d, generator=g)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.encoder_weight = nn.Parameter(w_dec.clone())
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.b_dec = nn.Parameter(torch.zeros(d))
        basis = random_orthonormal(d, r, g)
        self.U = nn.Parameter(basis.clone())
        self.V_free = None if cfg.scaffold_tied else nn.Parameter(basis.clone())
        self.register_buffer("threshold", torch.zeros(m))

    # ---------------------------------------------------------------- parameters and views
    @property
    def V(self) -> Tensor:
        return self.U if self.V_free is None else self.V_free

    @property
    def W_enc(self) -> Tensor:
        """Encoder in SAELens layout [d, m] (a view)."""
        return self.encoder_weight.t()

    @property
    def rank(self) -> int:
        return self.cfg.rank

    @property
    def architecture(self) -> archs.Architecture:
        return archs.get(self.cfg.arch)

    def scaffold_parameters(self) -> list[nn.Parameter]:
        return [self.U] + ([] if self.V_free is None else [self.V_free])

    def dictionary_parameters(self) -> list[nn.Parameter]:
        return [self.encoder_weight, self.b_enc, self.W_dec, self.b_dec]

    def set_scaffold(self, basis: Tensor) -> None:
        with torch.no_grad():
            self.U.copy_(basis)
            if self.V_free is not None:
                self.V_free.copy_(basis)

    @torch.no_grad()
    def start_uncentred_at_centre(self) -> None:
        """For an uncentred scaffold, b_dec <- b_dec - U V^T b_dec: the scaffold already carries its share of the
        centre, so the reconstruction starts where the centred model's would (no mean counted twice)."""
        if not self.cfg.scaffold_centred and self.rank > 0:
            self.b_dec -= (self.b_dec @ self.V) @ self.U.t()

    # ---------------------------------------------------------------- inference interface
    def scaffold_codes(self, x: Tensor) -> Tensor:
        """The r dense scaffold coordinates V^T (x - b_dec) [B, r] (V^T x when the scaffold is uncentred)."""
        return (x - self.b_dec if self.cfg.scaffold_centred else x) @ self.V

    def scaffold(self, x: Tensor) -> Tensor:
        """The scaffold term U V^T (x - b_dec) [B, d] (U V^T x when the scaffold is uncentred)."""
        return self.scaffold_codes(x) @ self.U.t()

    def pre_activations(self, x: Tensor) -> Tensor:
        return torch.addmm(self.b_enc, self._encoder_input(x - self.b_dec), self.encoder_weight.t())

    def encode(self, x: Tensor, batch_topk: bool = False) -> Tensor:
        """Sparse codes f [B, m] by the architecture's inference rule (BatchTopK / Matryoshka: the
        JumpReLU threshold, unless ``batch_topk`` asks for a top-k over this batch)."""
        return self.architecture.codes(self, self.pre_activations(x), batch_topk)

    def decode(self, codes: Tensor, x: Tensor | None = None) -> Tensor:
        """b_dec + W_dec^T f, plus the scaffold term when the input ``x`` is given."""
        out = codes @ self.W_dec + self.b_dec
        if x is not None and self.rank > 0:
            out = out + self.scaffold(x)
        return out

    def forward(self, x: Tensor, batch_topk: bool = False) -> SAEOutput:
        x_cent = x - self.b_dec
        scaf = self._scaffold_term(x_cent)
        x_in = x_cent - scaf if self.cfg.encoder_input == "residual" else x_cent
        pre = torch.addmm(self.b_enc, x_in, self.encoder_weight.t())
        codes = self.architecture.codes(self, pre, batch_topk)
        sparse_out = codes @ self.W_dec
        return SAEOutput(self.b_dec + scaf + sparse_out, codes, scaf, sparse_out)

    def _scaffold_term(self, x_cent: Tensor) -> Tensor:
        if self.rank == 0:
            return torch.zeros_like(x_cent)
        source = x_cent if self.cfg.scaffold_centred else x_cent + self.b_dec
        return (source @ self.V) @ self.U.t()

    def _encoder_input(self, x_cent: Tensor) -> Tensor:
        if self.cfg.encoder_input == "residual" and self.rank > 0:
            return x_cent - self._scaffold_term(x_cent)
        return x_cent

    # ---------------------------------------------------------------- training forward
    def select(self, pre: Tensor) -> tuple[ActiveSet, Tensor]:
        """Training-time active set and batch threshold for a batch of pre-activations (k-sparse
        archs); data-parallel training replaces it on the instance by a global selection."""
        return self.architecture.select(pre, self.cfg)

    def loss(self, x: Tensor, dead: "Tensor | DeadLatents | None" = None, fast: bool = True) -> StepLoss:
        """Training loss on a (scaled) batch.  ``dead`` ([m] bool, or :class:`DeadLatents`) marks latents for AuxK.

        ``fast`` uses the sparse kernels; ``fast=False`` the plain dense maths (same result).
        """
        cfg = self.cfg
        n, d = x.shape
        x_cent = x - self.b_dec
        scaf = self._scaffold_term(x_cent)
        x_in = x_cent - scaf if cfg.encoder_input == "residual" and self.rank > 0 else x_cent
        zero = x.new_zeros(())
        arch = self.architecture
        step = arch.sparse_step(self, x, x_in, scaf, fast)
        sparse_out, pre, active = step.sparse_out, step.pre, step.active
        x_hat = sparse_out + scaf + self.b_dec if self.rank else sparse_out + self.b_dec
        err = x_hat - x
        mse = step.mse if step.mse is not None else torch.dot(err.flatten(), err.flatten()) / (n * d)
        l1 = step.l1 if step.l1 is not None else zero
        aux = zero
        pool = DeadLatents.from_mask(dead) if isinstance(dead, Tensor) else dead
        if pool is not None and arch.uses_aux_k and cfg.effective_aux_k > 0 and pool.index.numel():
            aux = cfg.aux_coeff * self._aux_loss(x, x_hat, x_in, pre, pool, fast)
        with torch.no_grad():
            flat, xc = err.detach().flatten(), x_cent.detach()
            mean = xc.mean(0)  # total variance from x - b_dec: one pass, little cancellation
            total_var = torch.dot(xc.flatten(), xc.flatten()) - n * torch.dot(mean, mean)
            fvu = torch.dot(flat, flat) / total_var.clamp_min(1e-12)
            fires = step.fire_counts()
            l0 = fires.sum() / n
        return StepLoss(loss=mse + aux + l1, mse=mse, aux=aux, l1=l1, fvu=fvu, l0=l0, fires=fires,
                        active=active, batch_threshold=step.batch_threshold, x_hat=x_hat)

    def _aux_loss(self, x: Tensor, x_hat: Tensor, x_in: Tensor, pre: Tensor, pool: DeadLatents,
                  fast: bool) -> Tensor:
        """AuxK: the top aux_k dead latents model the residual x - x_hat (decoded without b_dec),
        normalised by the residual's variance; exactly 0 when no latent of the pool is dead (fixed shapes: the
        pool's latents that are not dead are read at -inf and stay inactive)."""
        k_aux = min(self.cfg.effective_aux_k, pool.index.numel())
        with torch.no_grad():
            masked = torch.where(pool.mask, pre.index_select(1, pool.index), float("-inf"))
            sub = kernels.row_topk(masked, k_aux)
            sub.col = pool.index[sub.col]  # pool.index is increasing: columns stay sorted per row
            sub.n_cols = self.cfg.width
        vals = kernels.gather_active(x_in, self.encoder_weight, self.b_enc, pre, sub, fast)
        e_hat = kernels.sparse_decode(vals, self.W_dec, sub, fast)
        e = (x - x_hat).detach()
        var = (e - e.mean(0)).pow(2).sum().clamp_min(1e-12)
        aux = (e_hat - e).pow(2).sum() / var
        return torch.where(pool.mask.any(), aux, aux.new_zeros(()))

    # ---------------------------------------------------------------- constraints and folding
    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove the gradient component parallel to each (unit-norm) decoder row."""
        g = self.W_dec.grad
        if g is not None:
            g -= (g * self.W_dec).sum(1, keepdim=True) * self.W_dec

    @torch.no_grad()
    def apply_constraints(self) -> None:
        """Unit-norm decoder rows; orthonormal U when tied (a frozen U, requires_grad False, is left untouched)."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if self.V_free is None and self.rank > 0 and self.U.requires_grad:
            self.U.copy_(orthonormalise(self.U))

    @torch.no_grad()
    def folded(self, scale: float) -> "HybridSAE":
        """A copy working on raw activations, for a model trained on inputs x * scale."""
        out = copy.deepcopy(self)
        out.b_enc /= scale
        out.b_dec /= scale
        out.threshold /= scale
        return out


def random_orthonormal(d: int, r: int, generator: torch.Generator) -> Tensor:
    if r == 0:
        return torch.zeros(d, 0)
    return orthonormalise(torch.randn(d, r, generator=generator))


def pca_basis(sample: Tensor, center: Tensor, r: int) -> Tensor:
    """Top-r principal directions [d, r] of ``sample`` around ``center``."""
    if r == 0:
        return torch.zeros(sample.shape[1], 0)
    basis = pca(sample, center).vectors[:, :r]
    signs = torch.sign(basis.sum(0))
    signs[signs == 0] = 1.0
    return (basis * signs).float().contiguous()


def geometric_median(points: Tensor, iters: int = 100, tol: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm."""
    y = points.mean(0)
    for _ in range(iters):
        dist = (points - y).norm(dim=1).clamp_min(1e-8)
        w = 1.0 / dist
        y_new = (points * w[:, None]).sum(0) / w.sum()
        if float((y_new - y).norm()) <= tol * max(1.0, float(y.norm())):
            return y_new
        y = y_new
    return y


def lr_for_width(width: int) -> float:
    """Default Adam learning rate 2e-4 / sqrt(m / 2^14)."""
    return 2e-4 / math.sqrt(width / 2**14)
