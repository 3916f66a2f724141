"""Fine-tune a loaded SAE briefly, as it is or with a rank-r scaffold added (`diagnose`'s fit = finetune).

- The start (`trainable_copy`): a new HybridSAE holding the loaded SAE's encoder, biases, decoder and thresholds,
  of a trainable arch with a k: the SAE's own arch and k when it is a trainable k-sparse arch, otherwise batchtopk
  with a k the caller chooses (`diagnose` uses its measured L0). Decoder rows are brought to unit norm with each
  row's norm moved into its encoder row, encoder bias and threshold, so the reconstruction is unchanged (and the
  codes too, for unit-norm rows); training keeps the rows at unit norm, as the trainer does. A batchtopk copy of a
  JumpReLU or ReLU SAE starts with the SAE's per-latent thresholds (zeros for ReLU), so its codes at the start
  are the loaded SAE's.
- With `rank` > 0 the copy gets a scaffold: U = V = the top-r principal directions of a training sample around
  b_dec (`sae.pca_basis`, as the trainer initialises its hybrids), and `encoder_input` (residual: the encoder sees
  x minus the scaffold's output).
- `finetune` trains such SAEs in lockstep on the same batches with the trainer's step (Adam with warm-up and decay,
  AuxK, gradient clipping, unit-norm decoder rows) in the trainer's scaled input space (mean norm sqrt(d), folded
  back afterwards), then sets each batchtopk / matryoshka threshold to the value giving L0 = k on a sample.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scaffold_sae.comm import LocalComm
from scaffold_sae.sae import HybridSAE, SAEConfig, pca_basis
from scaffold_sae.trainer import (TensorSource, TrainConfig, dead_tokens_of, estimate_threshold, input_scale,
                                  new_state, schedule, train_step, warmup_steps)


@torch.no_grad()
def trainable_copy(sae, arch: str, k: int, rank: int = 0, encoder_input: str = "residual") -> HybridSAE:
    """A trainable HybridSAE of `arch` and `k` starting from `sae`'s weights (see the module docstring); with
    rank > 0 its scaffold is still a random basis until `finetune` sets it from data."""
    old = getattr(sae, "cfg", None)
    m, d = (int(n) for n in sae.W_dec.shape)
    same = getattr(old, "arch", None) == arch
    cfg = SAEConfig(arch=arch, d_in=d, width=m, k=k, rank=rank, encoder_input=encoder_input,
                    matryoshka_widths=old.matryoshka_widths if same else None,
                    l1_coeff=old.l1_coeff if same else SAEConfig.l1_coeff)
    copy = HybridSAE(cfg.validate())
    norms = sae.W_dec.detach().float().cpu().norm(dim=1).clamp_min(1e-12)
    copy.encoder_weight.copy_(sae.encoder_weight.detach().float().cpu() * norms[:, None])
    copy.b_enc.copy_(sae.b_enc.detach().float().cpu() * norms)
    copy.W_dec.copy_(sae.W_dec.detach().float().cpu() / norms[:, None])
    copy.b_dec.copy_(sae.b_dec.detach().float().cpu())
    copy.threshold.copy_(sae.threshold.detach().float().cpu() * norms)
    return copy


def finetune(saes: list[HybridSAE], data: Tensor, train: TrainConfig) -> list[HybridSAE]:
    """Train `saes` (raw-activation HybridSAEs, e.g. from `trainable_copy`) in lockstep on rows of `data` [n, d] for
    train.tokens tokens (warm-up, decay, lr and AuxK as `train` says); PCA scaffolds are set from a sample of `data`
    first. Returns new SAEs on the CPU, in eval mode, working on raw activations; the inputs are left unchanged."""
    train.validate()
    comm = LocalComm(torch.device(train.device))
    source = TensorSource(data)
    sample = source.sample(train.init_sample_tokens, seed=train.seed)
    scale = input_scale(sample) if train.scale_inputs else 1.0
    total_steps = max(1, train.tokens // train.batch_size)
    warmup = warmup_steps(train, total_steps)
    dead_tokens = dead_tokens_of(train)
    states = []
    for i, start in enumerate(saes):
        sae = start.folded(1.0 / scale)  # a copy working on inputs x * scale
        sae.requires_grad_(True)
        if sae.rank > 0 and sae.cfg.scaffold_init == "pca":
            sae.set_scaffold(pca_basis(sample * scale, sae.b_dec.detach(), sae.rank))
        state = new_state(f"sae{i}", sae.to(comm.device).train(), train, comm.device)
        state.reset_window()
        states.append(state)
    batches = source.batches(train.batch_size, seed=train.seed)
    bar = None
    if train.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total_steps * train.batch_size, unit="tok", unit_scale=True, desc="fine-tune",
                   dynamic_ncols=True)
    try:
        for step in range(total_steps):
            x = next(batches).to(comm.device) * scale
            factor = schedule(step, total_steps, warmup, train.lr_decay_frac)
            for state in states:
                train_step(state, x, factor, dead_tokens, train, comm)
            if bar is not None:
                bar.update(train.batch_size)
    finally:
        if bar is not None:
            bar.close()
    calibration = source.sample(train.threshold_sample_tokens, seed=train.seed + 1).to(comm.device) * scale
    out = []
    for state in states:
        sae = state.sae.eval()
        sae.requires_grad_(False)
        if sae.architecture.calibrates_threshold:
            sae.threshold.fill_(estimate_threshold(sae, calibration, sae.cfg.k))
        out.append(sae.folded(scale).cpu())
    return out
