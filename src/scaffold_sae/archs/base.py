"""What an SAE architecture declares: its sparsity rule, inference modes, losses and SAELens name.

An architecture is a stateless object; the parameters (encoder, decoder, threshold, scaffold) live
on :class:`scaffold_sae.sae.HybridSAE`, which asks its architecture for the arch-specific steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .. import kernels
from ..kernels import ActiveSet

if TYPE_CHECKING:
    from ..sae import HybridSAE, SAEConfig


@dataclass
class SparseStep:
    """The sparse path of one training forward (in the trainer's scaled input space)."""

    pre: Tensor
    """Encoder pre-activations [B, m] (AuxK picks dead latents from them)."""
    active: ActiveSet | None
    """The selected (token, latent) pairs: L0, firing counts (None for a dense rule, which sets ``fires``)."""
    batch_threshold: Tensor
    """The batch's selection threshold, a 0-dim device tensor (its EMA can become the inference threshold; 0 if
    none)."""
    sparse_out: Tensor
    """W_dec^T f [B, d]."""
    mse: Tensor | None = None
    """The architecture's own reconstruction loss; None = per-element MSE of the full x_hat."""
    l1: Tensor | None = None
    """A sparsity penalty added to the loss; None = none."""
    fires: Tensor | None = None
    """Active tokens per latent [m] (long), when there is no active set; None = from ``active``."""

    def fire_counts(self) -> Tensor:
        return self.active.fires() if self.fires is None else self.fires


class Architecture:
    """One sparse-dictionary rule.  Subclass it, set the class attributes, override ``codes`` (and
    ``select`` or ``sparse_step``), then ``scaffold_sae.archs.register(MyArch())``."""

    name: str = ""
    """The value of SAEConfig.arch."""
    trainable: bool = True
    """False: load-only (read from other libraries' files, never trained here)."""
    inference_modes: tuple[str, ...] = ("threshold",)
    """Inference modes of scaffold_sae.evals it supports, primary first.  'threshold' is the SAE's
    own encoder (``sae(x)``); 'batchtopk' a top-k over the evaluation batch with the SAE's k."""
    uses_k: bool = False
    """SAEConfig.k is its sparsity target (validated to lie in 1..width)."""
    uses_aux_k: bool = False
    """Training adds the AuxK loss on dead latents."""
    calibrates_threshold: bool = False
    """After training, the trainer fits sae.threshold (the JumpReLU threshold giving L0 = k)."""
    uses_global_batch_selection: bool = False
    """Data-parallel training replaces ``select`` by a selection over the union of all ranks' batches."""
    saelens_name: str = "standard"
    """The 'architecture' written into SAELens's cfg.json (jumprelu | topk | standard)."""
    saelens_imports: tuple[str, ...] = ()
    """SAELens cfg.json architectures that load as this one."""

    @property
    def primary_inference(self) -> str:
        """The mode matched-L0 comparisons use (study tables, probes, analyses)."""
        return self.inference_modes[0]

    def check(self, cfg: "SAEConfig") -> str | None:
        """A one-line problem with arch-specific fields of ``cfg``, or None."""
        return None

    def codes(self, sae: "HybridSAE", pre: Tensor, batch_topk: bool) -> Tensor:
        """Inference codes f [B, m] from pre-activations; ``batch_topk`` asks for the batchtopk mode."""
        raise NotImplementedError(f"architecture {self.name!r} defines no inference codes")

    def select(self, pre: Tensor, cfg: "SAEConfig") -> tuple[ActiveSet, Tensor]:
        """Training-time active set of a batch of pre-activations and the batch threshold (a 0-dim tensor);
        fixed shapes, nothing read back to the host (the step must not wait for the GPU)."""
        raise NotImplementedError(f"architecture {self.name!r} defines no training selection")

    def sparse_step(self, sae: "HybridSAE", x: Tensor, x_in: Tensor, scaf: Tensor, fast: bool) -> SparseStep:
        """Default: select without gradients, then gather and decode only the active pairs."""
        pre, active, thr, vals = active_values(sae, x_in, fast)
        return SparseStep(pre, active, thr, kernels.sparse_decode(vals, sae.W_dec, active, fast))


def active_values(sae: "HybridSAE", x_in: Tensor, fast: bool) -> tuple[Tensor, ActiveSet, Tensor, Tensor]:
    """Pre-activations, ``sae.select``'s active set and threshold, and the active pre-activations
    (differentiable).  Goes through ``sae.select`` so that data-parallel training can replace it."""
    with torch.no_grad():
        pre = torch.addmm(sae.b_enc, x_in, sae.encoder_weight.t())
        active, thr = sae.select(pre)
        if not isinstance(thr, Tensor):  # a rule written before thresholds stayed on the device
            thr = pre.new_tensor(float(thr))
    vals = kernels.gather_active(x_in, sae.encoder_weight, sae.b_enc, pre, active, fast)
    return pre, active, thr, vals


def codes_at(pre: Tensor, active: ActiveSet) -> Tensor:
    """Dense codes [B, m]: ``pre`` at the active pairs, zero elsewhere."""
    return active.dense(pre)


def threshold_codes(pre: Tensor, threshold: Tensor) -> Tensor:
    """JumpReLU: ``pre`` where it exceeds both the per-latent threshold and 0."""
    keep = (pre > threshold) & (pre > 0)
    return pre * keep
