"""One training step of one SAE, and the per-SAE state it updates: the only place the step is written.

    loss -> backward -> project decoder grads -> all-reduce (data-parallel) -> clip -> Adam -> constraints
         -> fire counts, dead counters, threshold EMA and the log window, all on the device

Nothing in a step reads a value back to the host, so on a GPU the host queues step after step without waiting
(`scaffold_sae.syncs.SyncRecorder` checks this on any device; tests/test_syncs.py asserts it).  The host reads
the device only at log steps (:func:`window_record`) and when it refreshes the AuxK pool
(:func:`refresh_dead_pool`): the latents that could be dead before the next refresh, a superset that keeps the
AuxK shapes fixed in between and the result exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .comm import Communicator
from .sae import DeadLatents, HybridSAE, lr_for_width

if TYPE_CHECKING:
    from .trainer import TrainConfig

SELF_REFRESH_STEPS = 50
"""How many steps the AuxK pool covers when the step has to refresh it itself (callers other than the trainer)."""
WINDOW_SUMS = ("loss", "mse", "aux", "fvu", "l0")
"""The per-step scalars a log window averages (accumulated on the device in float64)."""


@dataclass
class SAEState:
    """One SAE's training state besides its parameters (every tensor on the training device)."""

    name: str
    sae: HybridSAE
    optim: torch.optim.Adam
    base_lr: float
    since_fired: Tensor
    """Tokens since each latent last fired [m] (long)."""
    ema_threshold: Tensor = None  # type: ignore[assignment]
    """EMA of the batch threshold, 0-dim float64; -1 until the first positive batch threshold."""
    window: dict = field(default_factory=dict)
    heldout: list[tuple[int, float]] = field(default_factory=list)
    """The held-out FVU curve so far: (step, FVU) per measurement (checkpointed, so a resume decides alike)."""
    dead_pool: Tensor | None = None
    """Latents AuxK may use until the next refresh (increasing indices)."""
    pool_steps: int = 0
    """Steps the AuxK pool still covers; at 0 the step refreshes it itself (a sync, every SELF_REFRESH_STEPS
    steps: the trainer refreshes at its log steps instead, so its steps never do)."""
    compiled_loss: object = None
    """``torch.compile`` of the SAE's dense training loss, when TrainConfig.compile asks for it."""

    def __post_init__(self) -> None:
        if self.ema_threshold is None:
            self.ema_threshold = torch.tensor(-1.0, dtype=torch.float64, device=self.since_fired.device)
        elif not isinstance(self.ema_threshold, Tensor):
            self.ema_threshold = torch.tensor(float(self.ema_threshold), dtype=torch.float64,
                                              device=self.since_fired.device)
        if not self.window:
            self.reset_window()

    def reset_window(self) -> None:
        device = self.since_fired.device
        self.window = {"steps": 0, "tokens": 0,
                       **{key: torch.zeros((), dtype=torch.float64, device=device) for key in WINDOW_SUMS},
                       "fires": torch.zeros(self.sae.cfg.width, dtype=torch.long, device=device)}


def new_state(name: str, sae: HybridSAE, train_cfg: "TrainConfig", device) -> SAEState:
    """Training state of `sae` (already on `device`): Adam over the dictionary and, unless frozen by
    scaffold_lr_mult 0, the scaffold at its own lr multiple."""
    cfg = sae.cfg
    base_lr = train_cfg.lr or lr_for_width(cfg.width)
    groups = [{"params": sae.dictionary_parameters(), "lr": base_lr, "lr_mult": 1.0}]
    if cfg.rank > 0 and cfg.scaffold_lr_mult == 0:  # frozen: no gradient, no clipping share, no QR
        for p in sae.scaffold_parameters():
            p.requires_grad_(False)
    elif cfg.rank > 0:
        groups.append({"params": sae.scaffold_parameters(), "lr": base_lr * cfg.scaffold_lr_mult,
                       "lr_mult": cfg.scaffold_lr_mult})
    optim = torch.optim.Adam(groups, betas=(train_cfg.adam_beta1, train_cfg.adam_beta2), fused=True)
    return SAEState(name, sae, optim, base_lr, torch.zeros(cfg.width, dtype=torch.long, device=device))


def dead_latents(st: SAEState, dead_tokens: int) -> DeadLatents:
    """The AuxK pool and which of its latents are dead now (fixed shapes: no host read)."""
    return DeadLatents(st.dead_pool, st.since_fired.index_select(0, st.dead_pool) >= dead_tokens)


@torch.no_grad()
def refresh_dead_pool(st: SAEState, dead_tokens: int, tokens_per_step: int, steps: int) -> None:
    """Set the AuxK pool for the next ``steps`` steps: every latent that is dead now or could be before them
    (its counter only grows by ``tokens_per_step`` a step, or drops to 0).  Reads the device (a sync): call it at
    log steps only."""
    horizon = max(0, steps - 1) * tokens_per_step
    st.dead_pool = (st.since_fired + horizon >= dead_tokens).nonzero().squeeze(1)
    st.pool_steps = steps


def train_step(st: SAEState, x: Tensor, factor: float, dead_tokens: int, train_cfg: "TrainConfig",
               comm: Communicator) -> None:
    """One optimiser step of ``st`` on the (scaled) batch ``x`` at lr multiplier ``factor``."""
    sae = st.sae
    for group in st.optim.param_groups:
        group["lr"] = st.base_lr * group["lr_mult"] * factor
    st.optim.zero_grad(set_to_none=True)
    n_tokens = x.shape[0] * comm.world_size
    if st.pool_steps <= 0 or st.dead_pool is None:
        refresh_dead_pool(st, dead_tokens, n_tokens, SELF_REFRESH_STEPS)
    st.pool_steps -= 1
    out = training_loss(st, train_cfg)(x, dead=dead_latents(st, dead_tokens))
    out.loss.backward()
    sae.project_decoder_grad()
    comm.all_reduce_grads(sae)
    if train_cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(sae.parameters(), train_cfg.grad_clip, foreach=True)
    st.optim.step()
    sae.apply_constraints()
    with torch.no_grad():
        fires = comm.sum_counts(out.fires)  # dead / dense counts over the global batch
        st.since_fired = torch.where(fires > 0, 0, st.since_fired + n_tokens)
        thr = out.batch_threshold.double()
        d = train_cfg.threshold_ema_decay
        ema = torch.where(st.ema_threshold < 0, thr, d * st.ema_threshold + (1 - d) * thr)
        st.ema_threshold = torch.where(thr > 0, ema, st.ema_threshold)
        w = st.window
        w["steps"] += 1
        w["tokens"] += n_tokens
        for key in WINDOW_SUMS:
            w[key] += getattr(out, key).detach().double()
        w["fires"] += fires


def training_loss(st: SAEState, train_cfg: "TrainConfig"):
    """The SAE's loss function for this run: ``sae.loss`` with the run's kernels, or (TrainConfig.compile) a
    ``torch.compile`` of its dense maths, compiled once per SAE.  The fixed shapes make the whole loss one graph
    (tests/test_compile.py: no graph break for any architecture); the sparse kernels' autograd functions carry a
    Python active set that dynamo cannot trace yet, so the compiled loss uses the dense maths."""
    if not getattr(train_cfg, "compile", False):
        return lambda x, dead: st.sae.loss(x, dead=dead, fast=train_cfg.fast)
    if st.compiled_loss is None:
        sae = st.sae
        st.compiled_loss = torch.compile(lambda x, dead: sae.loss(x, dead=dead, fast=False), dynamic=False)
    return st.compiled_loss


def window_record(st: SAEState, step: int, train_cfg: "TrainConfig", world_size: int, factor: float,
                  dead_tokens: int) -> dict:
    """The log record of ``st``'s window (the window's means; reads the device), then a fresh window."""
    w = st.window
    n = max(1, w["steps"])
    sums = torch.stack([w[key] for key in WINDOW_SUMS]).tolist()
    freq = w["fires"].double() / max(1, w["tokens"])
    counts = torch.stack([(st.since_fired >= dead_tokens).sum(), (freq > train_cfg.dense_fraction).sum(),
                          (freq > 0.01).sum()]).tolist()
    rec = {"sae": st.name, "step": step, "tokens": step * train_cfg.batch_size * world_size,
           "lr": st.base_lr * factor, **{key: value / n for key, value in zip(WINDOW_SUMS, sums)},
           "dead": counts[0], "dense": counts[1], "dense_1pct": counts[2],
           "ema_threshold": float(st.ema_threshold)}
    st.reset_window()
    return rec


__all__ = ["SAEState", "SELF_REFRESH_STEPS", "WINDOW_SUMS", "dead_latents", "new_state", "refresh_dead_pool",
           "train_step", "training_loss", "window_record"]
