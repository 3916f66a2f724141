"""Lockstep trainer: several hybrid SAEs learn from the same batches in one pass over a cache.

The run: set-up (or resume), the loop (the step itself is :func:`scaffold_sae.step.train_step`: loss ->
backward -> project decoder grads -> all-reduce (data-parallel training only) -> clip -> Adam -> unit-norm
decoder / orthonormal scaffold), then threshold calibration and saving.  Inputs are scaled to mean norm sqrt(d)
(estimated on a sample) and the scale is folded into the saved weights.  Checkpoints (scaffold_sae.checkpoint)
are written atomically behind a sha256 header, verified on resume; rerunning the same call resumes and ends with
the same weights.  The held-out convergence rule is in scaffold_sae.convergence, the log in
scaffold_sae.train_log.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch
from torch import Tensor

from . import distributed, faults
from .cache import ActivationCache
from .comm import Communicator, LocalComm
from .config import build
from .faults import OutputLock, check_space
from .devices import resolve_device
from .saving import save_sae
from .sae import ConfigError, HybridSAE, SAEConfig, _choice, geometric_median, pca_basis
from .checkpoint import CHECKPOINT, CheckpointError, explain_full_disk, load_checkpoint, save_checkpoint
from .convergence import converged_since, heldout_fvu, rule_holds
from .step import SAEState, new_state, refresh_dead_pool, train_step, window_record
from .syncs import SyncRecorder
from .train_log import LOG, Loggers, read_log

_Loggers = Loggers  # the name tests and older callers use


B_DEC_INITS = ("geometric_median", "mean", "zeros")
THRESHOLD_METHODS = ("sample", "ema")


class ActivationSource(Protocol):
    """What the trainer needs from an activation cache."""

    d_model: int

    def batches(self, batch_size: int, seed: int = 0, skip: int = 0, rank: int = 0,
                world_size: int = 1) -> Iterator[Tensor]: ...

    def sample(self, n: int, seed: int = 0) -> Tensor: ...

    def hold_out(self, n: int) -> tuple["ActivationSource", Tensor]:
        """(the source without its last n rows, those rows): held-out rows training never reads."""
        ...


class TensorSource:
    """An in-memory activation source with the ActivationCache interface (tests, small runs)."""

    def __init__(self, data: Tensor, manifest: dict | None = None):
        self.data = data.float().contiguous()
        self.d_model = int(data.shape[1])
        self.n_rows = int(data.shape[0])
        self.manifest = manifest or {}

    def batches(self, batch_size: int, seed: int = 0, skip: int = 0, rank: int = 0,
                world_size: int = 1) -> Iterator[Tensor]:
        per_epoch = self.n_rows // (batch_size * world_size)
        if per_epoch < 1:
            raise ValueError(f"batch_size {batch_size} x world_size {world_size} exceeds the "
                             f"{self.n_rows} rows of the source: lower batch_size")
        index = skip
        while True:
            epoch, pos = divmod(index, per_epoch)
            order = torch.randperm(self.n_rows, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
            start = (pos * world_size + rank) * batch_size
            yield self.data[order[start:start + batch_size]]
            index += 1

    def sample(self, n: int, seed: int = 0) -> Tensor:
        n = min(n, self.n_rows)
        order = torch.randperm(self.n_rows, generator=torch.Generator().manual_seed(seed + 7))
        return self.data[order[:n]]

    def hold_out(self, n: int) -> tuple["TensorSource", Tensor]:
        if not 0 < n < self.n_rows:
            raise ConfigError(f"cannot hold out {n} of the source's {self.n_rows} rows: lower heldout_tokens")
        return TensorSource(self.data[:-n], self.manifest), self.data[-n:]


@dataclass
class TrainConfig:
    """One lockstep training run (shared by every SAE in it)."""

    tokens: int = 10_000_000
    """Training tokens (all ranks together); steps = tokens // (batch_size * world_size). With until_converged, the
    most a run may use."""
    until_converged: bool = False
    """Stop before `tokens` runs out once every SAE's held-out FVU has converged (see converge_tol and converge_frac);
    all SAEs stop together, at the first held-out measurement where the rule holds for all of them. Needs
    heldout_every > 0. The lr schedule is still laid out over `tokens`."""
    converge_tol: float = 0.02
    """Converged: held-out FVU improved by less than this fraction (relative) over the last converge_frac of the
    steps, i.e. since the last measurement at or before step (1 - converge_frac) x the current step (only after the
    lr warm-up)."""
    converge_frac: float = 0.2
    """The look-back window of the convergence rule, as a fraction of the steps run so far."""
    heldout_every: int = 0
    """Steps between held-out FVU measurements of every SAE (and at the last step), logged to train_log.jsonl as
    heldout_fvu records; 0 = none. When > 0, the last heldout_tokens rows of the cache are held out: never trained
    on, nor in the init or threshold samples."""
    heldout_tokens: int = 8192
    """Rows held out for the held-out FVU: the last rows of the cache's last shard (its last contexts: rows of the
    training split that training never reads, not held-out documents)."""
    batch_size: int = 4096
    """Tokens per step per rank."""
    lr: float | None = None
    """Adam learning rate; None = 2e-4 / sqrt(width / 2^14) per SAE."""
    lr_warmup_steps: int | None = None
    """Linear warm-up steps; None = min(1000, 5% of the steps)."""
    lr_decay_frac: float = 0.2
    """Fraction of the steps at the end over which the lr decays linearly to 0."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.999
    """Adam beta2."""
    grad_clip: float = 1.0
    """Max gradient norm per SAE (0 disables)."""
    seed: int = 0
    """Seed for data order and init (every SAE whose own seed is None gets this init stream)."""
    scale_inputs: bool = True
    """Scale inputs to mean norm sqrt(d) during training (folded into the saved weights)."""
    b_dec_init: str = "geometric_median"
    """Initial b_dec from the init sample: geometric_median | mean | zeros."""
    init_sample_tokens: int = 16384
    """Tokens sampled for the input scale, b_dec and PCA scaffold init."""
    dead_tokens: int | None = None
    """A latent is dead after this many tokens without firing (AuxK); None = min(10M, tokens / 10)."""
    threshold_method: str = "sample"
    """BatchTopK inference threshold: sample (the value giving mean L0 = k on a sample after
    training) or ema (EMA of the per-batch threshold)."""
    threshold_sample_tokens: int = 32768
    """Tokens for the sample threshold estimate (and for the reported inference L0)."""
    threshold_ema_decay: float = 0.99
    """EMA decay of the per-batch threshold (tracked and saved in either method)."""
    dense_fraction: float = 0.1
    """A latent is dense when it fires on more than this fraction of a log window's tokens."""
    fast: bool = True
    """Sparse-aware kernels (False: the plain dense implementation, same maths)."""
    compile: bool = False
    """torch.compile each SAE's training loss (its dense maths, one graph with no graph break; the first steps
    pay the compilation). Off by default: on the 2-core CPU it does not beat the sparse kernels (docs/gpu.md)."""
    log_every: int = 50
    """Steps between JSONL log records (and progress-bar updates of the metrics)."""
    checkpoint_every: int = 500
    """Steps between atomic checkpoints (0 disables)."""
    resume: bool = True
    """Resume from out_dir/checkpoint.pt when it exists and matches this run."""
    keep_checkpoint: bool = False
    """Keep the checkpoint after the final save."""
    snapshot_every: int = 0
    """Steps between snapshots: every SAE as it stands, saved like the final SAE (folded, its inference threshold
    calibrated) to <out>/snapshots/<name>/step_<N>/, for training curves (scaffold_sae.curves); 0 = none."""
    progress: bool = True
    """Show a tqdm progress bar."""
    wandb_project: str | None = None
    """Also log to this Weights & Biases project (needs the wandb extra)."""
    tensorboard_dir: str | None = None
    """Also log to TensorBoard in this directory (needs the tensorboard extra)."""
    device: str = "cpu"
    """Where the SAEs train: cpu | cuda | cuda:N | auto (a GPU when there is one); fp32 weights."""

    def validate(self) -> "TrainConfig":
        _choice("b_dec_init", self.b_dec_init, B_DEC_INITS)
        _choice("threshold_method", self.threshold_method, THRESHOLD_METHODS)
        for name in ("tokens", "batch_size", "init_sample_tokens", "threshold_sample_tokens", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} is invalid: must be a positive integer")
        if self.tokens < self.batch_size:
            raise ConfigError(f"tokens={self.tokens} is invalid: must be >= batch_size ({self.batch_size})")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr={self.lr} is invalid: must be > 0")
        if not 0 <= self.lr_decay_frac <= 1:
            raise ConfigError(f"lr_decay_frac={self.lr_decay_frac} is invalid: must be in [0, 1]")
        if self.checkpoint_every < 0:
            raise ConfigError("checkpoint_every must be >= 0 (0 disables checkpoints)")
        if self.snapshot_every < 0:
            raise ConfigError(f"snapshot_every={self.snapshot_every} is invalid: must be >= 0 (0: no snapshots)")
        if self.heldout_every < 0:
            raise ConfigError(f"heldout_every={self.heldout_every} is invalid: must be >= 0 (0: no held-out FVU)")
        if self.heldout_every and self.heldout_tokens < 1:
            raise ConfigError(f"heldout_tokens={self.heldout_tokens} is invalid: must be a positive integer")
        if self.until_converged and not self.heldout_every:
            raise ConfigError("until_converged needs held-out FVU measurements: set heldout_every > 0 "
                              "(e.g. --heldout-every 50)")
        if not 0 < self.converge_frac < 1:
            raise ConfigError(f"converge_frac={self.converge_frac} is invalid: must be in (0, 1), e.g. 0.2")
        if self.converge_tol < 0:
            raise ConfigError(f"converge_tol={self.converge_tol} is invalid: must be >= 0, e.g. 0.02")
        return self


# fields that do not change the trained weights (a checkpoint stays valid when they change)
_NON_RESULT_FIELDS = {"log_every", "checkpoint_every", "snapshot_every", "resume", "keep_checkpoint", "progress",
                      "wandb_project", "tensorboard_dir", "fast", "threshold_sample_tokens", "device", "compile"}
# fields left out of the checkpoint key at their defaults, so checkpoints written before they existed still resume
_KEYED_WHEN_SET = ("until_converged", "converge_tol", "converge_frac", "heldout_every", "heldout_tokens")


def resolve_configs(cfgs: list[SAEConfig], d_model: int) -> list[SAEConfig]:
    out = []
    for cfg in cfgs:
        cfg = SAEConfig(**asdict(cfg))
        if cfg.d_in == 0:
            cfg.d_in = d_model
        if cfg.d_in != d_model:
            raise ConfigError(f"d_in={cfg.d_in} does not match the cache's d_model={d_model}")
        out.append(cfg.validate())
    return out


def sae_names(cfgs: list[SAEConfig]) -> list[str]:
    names: list[str] = []
    for cfg in cfgs:
        base = cfg.default_name()
        if cfg.scaffold_tied:
            base += "_tied"
        if cfg.encoder_input == "residual":
            base += "_resin"
        if not cfg.scaffold_centred and cfg.rank:
            base += "_uncentred"
        if cfg.rank > 0 and cfg.scaffold_init != "pca":
            base += f"_{cfg.scaffold_init}"
        if cfg.rank > 0 and cfg.scaffold_lr_mult != 1.0:
            base += f"_slr{cfg.scaffold_lr_mult:g}"
        if cfg.seed is not None:
            base += f"_s{cfg.seed}"
        name, i = base, 1
        while name in names:
            i += 1
            name = f"{base}_{i}"
        names.append(name)
    return names


def short_labels(names: list[str]) -> list[str]:
    """Names without their common prefix (cut at an underscore), for the progress bar."""
    if len(names) < 2:
        return names
    prefix = os.path.commonprefix(names)
    prefix = prefix[:prefix.rfind("_") + 1]
    return [name[len(prefix):] or name for name in names]


def schedule(step: int, total: int, warmup: int, decay_frac: float) -> float:
    """lr multiplier: linear warm-up over ``warmup`` steps, linear decay to 0 over the last
    ``decay_frac`` of the steps."""
    factor = 1.0
    if warmup > 0 and step < warmup:
        factor = (step + 1) / warmup
    decay_steps = int(total * decay_frac)
    if decay_steps > 0 and step >= total - decay_steps:
        factor = min(factor, (total - step) / decay_steps)
    return factor


def input_scale(sample: Tensor) -> float:
    """Factor that brings the mean norm of ``sample`` to sqrt(d)."""
    return math.sqrt(sample.shape[1]) / float(sample.norm(dim=1).mean().clamp_min(1e-12))


def init_b_dec(sample: Tensor, method: str) -> Tensor:
    if method == "zeros":
        return torch.zeros(sample.shape[1])
    if method == "mean":
        return sample.mean(0)
    return geometric_median(sample)


@torch.no_grad()
def estimate_threshold(sae: HybridSAE, sample: Tensor, k: int, chunk: int = 4096) -> float:
    """JumpReLU threshold giving mean L0 = k on ``sample``: the (n*k)-th largest positive
    pre-activation over the whole sample (a batch top-k over the sample), computed exactly from
    per-token candidates."""
    n = sample.shape[0]
    total = n * k
    c = min(sae.cfg.width, 4 * k)
    while True:
        cands = [sae.pre_activations(sample[i:i + chunk]).topk(c, dim=1, sorted=False).values
                 for i in range(0, n, chunk)]
        cand = torch.cat(cands)
        thr = float(cand.flatten().kthvalue(cand.numel() - total + 1).values)
        if c == sae.cfg.width or bool((cand.min(1).values < thr).all()):
            return max(thr, 0.0)
        c = min(sae.cfg.width, 4 * c)


@torch.no_grad()
def inference_l0(sae: HybridSAE, sample: Tensor, chunk: int = 4096) -> float:
    active = sum(int((sae.encode(sample[i:i + chunk]) > 0).sum()) for i in range(0, sample.shape[0], chunk))
    return active / sample.shape[0]


def _config_key(cfgs: list[SAEConfig], train_cfg: TrainConfig, world_size: int) -> str:
    defaults = asdict(TrainConfig())
    train = {k: v for k, v in asdict(train_cfg).items() if k not in _NON_RESULT_FIELDS
             and not (k in _KEYED_WHEN_SET and v == defaults[k])}
    return json.dumps({"saes": [asdict(c) for c in cfgs], "train": train, "world_size": world_size},
                      sort_keys=True)


def _metadata(source: object) -> dict:
    manifest = dict(getattr(source, "manifest", {}) or {})
    model = manifest.get("model_name") or manifest.get("model") or manifest.get("model_spec") or ""
    layer = manifest.get("layer", manifest.get("hook_layer"))
    return {
        "model_name": model,
        "hook_layer": layer,
        "hook_name": manifest.get("hook_name") or (f"blocks.{layer}.hook_resid_post" if layer is not None else ""),
        "context_size": manifest.get("ctx_len", manifest.get("context_size")),
        "prepend_bos": manifest.get("prepend_bos", True),
        "dataset_path": manifest.get("corpus") or manifest.get("corpus_spec") or manifest.get("dataset_path", ""),
        "model_fingerprint": manifest.get("fingerprint") or manifest.get("model_fingerprint"),
    }


def train_saes(cache: ActivationSource, cfgs: list[SAEConfig], train_cfg: TrainConfig,
               out_dir: str | Path, *, on_step: Callable[[int, list[SAEState]], None] | None = None,
               comm: Communicator | None = None, sync_recorder: SyncRecorder | None = None) -> list[Path]:
    """Train ``cfgs`` in lockstep on ``cache``; returns one saved SAE directory per config.

    ``on_step(step, states)`` runs after every completed step (tests use it to interrupt).
    ``sync_recorder`` records the host-device synchronisations of the steps' training work (there should be none).
    ``comm`` (scaffold_sae.distributed.Comm) makes this one rank of a data-parallel run; None trains
    in this one process on ``train_cfg.device``.
    """
    train_cfg.validate()
    if comm is None:
        comm = LocalComm(resolve_device(train_cfg.device))
    lock = OutputLock(out_dir, "train")
    comm.on_rank0(lock.__enter__, f"locking {out_dir}")  # every rank fails when rank 0 cannot lock
    failure: tuple = (None, None, None)
    try:
        return _train_saes(cache, cfgs, train_cfg, Path(out_dir), on_step, comm, sync_recorder)
    except BaseException as error:
        failure = (type(error), error, error.__traceback__)  # a refused run leaves no lock-only folder
        raise
    finally:
        if comm.rank == 0:
            lock.__exit__(*failure)


def _train_saes(cache, cfgs, train_cfg, out_dir, on_step, comm: Communicator,
                sync_recorder: SyncRecorder | None = None) -> list[Path]:
    run = _setup(cache, cfgs, train_cfg, out_dir, comm)
    run.sync_recorder = sync_recorder
    _loop(run, on_step)
    return _finalise(run)


@dataclass
class _Run:
    """A run after set-up or resume: what the training loop and the final save share."""

    cache: ActivationSource
    train_cfg: TrainConfig
    comm: Communicator
    out_dir: Path
    names: list[str]
    states: list[SAEState]
    start: int
    """First step to run (0, or the checkpoint's step on resume)."""
    total_steps: int
    warmup: int
    dead_tokens: int
    key: str
    """The configuration key a checkpoint must match."""
    scale: float
    """Input scale (folded into the saved weights)."""
    need: int
    """Bytes a checkpoint and the saved SAEs need on disk."""
    heldout: Tensor | None = None
    """Held-out rows (unscaled, on the training device), when heldout_every > 0."""
    steps_run: int = 0
    """Steps done when the loop ended: total_steps, or fewer when every SAE converged first."""
    converged: bool = False
    """The run stopped because every SAE converged (until_converged)."""
    sync_recorder: SyncRecorder | None = None
    """Records the synchronising ops of every step's training work (tests, bench/train.py)."""
    threshold_sample: Tensor | None = None
    """Scaled rows the inference thresholds are calibrated on (drawn at the first snapshot or the final save)."""

    @property
    def ckpt_path(self) -> Path:
        return self.out_dir / CHECKPOINT


def _setup(cache, cfgs, train_cfg: TrainConfig, out_dir, comm: Communicator) -> _Run:
    """Build the SAEs and optimisers, then resume from the checkpoint or initialise from a sample."""
    device, world_size = comm.device, comm.world_size
    if not cfgs:
        raise ConfigError("no SAE configs given: pass at least one (e.g. --ranks 0)")
    cfgs = resolve_configs(cfgs, int(cache.d_model))
    names = sae_names(cfgs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    total_steps = train_cfg.tokens // (train_cfg.batch_size * world_size)
    warmup = warmup_steps(train_cfg, total_steps)
    dead_tokens = dead_tokens_of(train_cfg)
    key = _config_key(cfgs, train_cfg, world_size)
    ckpt_path = out_dir / CHECKPOINT

    heldout = None
    if train_cfg.heldout_every:
        if not hasattr(cache, "hold_out"):
            raise ConfigError(f"the activation source {type(cache).__name__} cannot hold rows out (no hold_out "
                              "method): use an ActivationCache or TensorSource, or set heldout_every 0")
        cache, heldout = cache.hold_out(train_cfg.heldout_tokens)
        heldout = heldout.to(device, torch.float32)
    sample = _sample(cache, train_cfg.init_sample_tokens, train_cfg.seed)
    scale = input_scale(sample) if train_cfg.scale_inputs else 1.0
    states = []
    for cfg, name in zip(cfgs, names):
        init_seed = train_cfg.seed if cfg.seed is None else cfg.seed
        sae = HybridSAE(cfg, torch.Generator().manual_seed(init_seed)).to(device)
        states.append(new_state(name, sae, train_cfg, device))
    # a checkpoint holds weights and two Adam moments; saving adds the SAEs and a temp copy of one file
    need = sum(p.numel() for st in states for p in st.sae.parameters()) * 4 * 5
    if comm.rank == 0:
        check_space(out_dir, need)

    start = 0
    if train_cfg.resume and ckpt_path.exists():
        start, scale = load_checkpoint(ckpt_path, key, states)
    else:
        scaled = sample * scale
        b_dec = init_b_dec(scaled, train_cfg.b_dec_init)
        for st in states:
            with torch.no_grad():
                st.sae.b_dec.copy_(b_dec)
            if st.sae.cfg.rank > 0 and st.sae.cfg.scaffold_init == "pca":
                centre = b_dec if st.sae.cfg.scaffold_centred else torch.zeros_like(b_dec)
                st.sae.set_scaffold(pca_basis(scaled, centre, st.sae.cfg.rank))
                st.sae.start_uncentred_at_centre()
    del sample
    scale = comm.setup(states, start, scale)
    return _Run(cache, train_cfg, comm, out_dir, names, states, start, total_steps, warmup, dead_tokens, key,
                scale, need, heldout)


def warmup_steps(train_cfg: TrainConfig, total_steps: int) -> int:
    """lr warm-up steps: train_cfg.lr_warmup_steps, else 5% of the run (at least 1, at most 1000)."""
    if train_cfg.lr_warmup_steps is not None:
        return train_cfg.lr_warmup_steps
    return min(1000, max(1, total_steps // 20))


def _loop(run: _Run, on_step) -> None:
    """The training steps from ``run.start``, with logging, progress and periodic checkpoints."""
    train_cfg, comm, states, total_steps = run.train_cfg, run.comm, run.states, run.total_steps
    device, process_rank, world_size, scale = comm.device, comm.rank, comm.world_size, run.scale
    start = run.start
    loggers = Loggers(run.out_dir, train_cfg, start, process_rank, run.names)
    bar = None
    if train_cfg.progress and process_rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=total_steps * train_cfg.batch_size * world_size,
                   initial=start * train_cfg.batch_size * world_size,
                   unit="tok", unit_scale=True, desc="train", dynamic_ncols=True)
    labels = short_labels(run.names)
    batches = run.cache.batches(train_cfg.batch_size, seed=train_cfg.seed, skip=start, rank=process_rank,
                            world_size=world_size)
    tokens_per_step = train_cfg.batch_size * world_size
    peek_every = bar_refresh_steps(train_cfg, total_steps)
    # on a CPU a host read costs nothing: AuxK over the latents dead now, not over the fixed superset that spares a
    # GPU the read (the same AuxK loss; with a long log interval the superset is every latent: twice the CPU step)
    exact_dead = torch.device(device).type == "cpu"
    for st in states:
        st.reset_window()
        refresh_dead_pool(st, run.dead_tokens, tokens_per_step, next_log_step(start, train_cfg, total_steps) - start)
    recorder = run.sync_recorder if run.sync_recorder is not None else contextlib.nullcontext()
    interrupt = StepBoundarySignals(active=world_size == 1)
    try:
        interrupt.__enter__()
        for step in range(start, total_steps):
            batch = next(batches)
            factor = schedule(step, total_steps, run.warmup, train_cfg.lr_decay_frac)
            if exact_dead:
                for st in states:
                    refresh_dead_pool(st, run.dead_tokens, tokens_per_step, 1)
            with recorder:  # the steady state: nothing in here may wait for the device
                x = batch.to(device, torch.float32, non_blocking=True)
                if scale != 1.0:
                    x = x * scale
                for st in states:
                    train_step(st, x, factor, run.dead_tokens, train_cfg, comm)
            done = step + 1
            stop = False
            if run.heldout is not None and (done % train_cfg.heldout_every == 0 or done == total_steps):
                loggers.write(_measure_heldout(run, done))
                stop = train_cfg.until_converged and done < total_steps and _all_converged(run)
            if done % train_cfg.log_every == 0 or done == total_steps or stop:
                for st in states:
                    comm.reduce_window(st.window)
                records = [window_record(st, done, train_cfg, world_size, factor, run.dead_tokens) for st in states]
                loggers.write(records)
                horizon = next_log_step(done, train_cfg, total_steps) - done
                for st in states:
                    refresh_dead_pool(st, run.dead_tokens, tokens_per_step, horizon)
                if bar is not None:
                    bar.set_postfix_str(_bar_text(labels, records))
            elif bar is not None and done % peek_every == 0:  # a short run's bar shows fresh metrics too
                bar.set_postfix_str(_bar_text(labels, [window_means(st, run.dead_tokens) for st in states]))
            if bar is not None:
                bar.update(train_cfg.batch_size * world_size)
            if (train_cfg.checkpoint_every and done % train_cfg.checkpoint_every == 0
                    and done < total_steps and not stop):
                # rank 0 writes; the others wait for its success flag
                comm.on_rank0(lambda: save_checkpoint(run.ckpt_path, run.key, done, scale, states, run.need),
                              "writing the checkpoint")
            if train_cfg.snapshot_every and done % train_cfg.snapshot_every == 0 and done < total_steps and not stop:
                comm.on_rank0(lambda: _snapshot(run, done), "writing the snapshots")
            faults.progress("step", done)
            if on_step is not None:
                on_step(done, states)
            run.steps_run = done
            if interrupt.signum is not None:  # Ctrl-C / SIGTERM during this step: save it, then stop
                if train_cfg.checkpoint_every:
                    save_checkpoint(run.ckpt_path, run.key, done, scale, states, run.need)
                raise faults.Interrupted(interrupt.signum)
            if stop:
                run.converged = True
                if bar is not None:
                    bar.set_description(f"train: converged at step {done}")
                break
    finally:
        interrupt.__exit__()
        if bar is not None:
            bar.close()
        loggers.close()
        comm.teardown(states)


class StepBoundarySignals:
    """While active, SIGINT (Ctrl-C) and SIGTERM only set ``signum``: the loop finishes its step, writes a
    checkpoint there and raises faults.Interrupted, so "rerun the same command to resume" holds even before the
    first checkpoint interval.  A second signal interrupts at once.  Active only in the main thread of a
    one-process run: the ranks of a data-parallel run could stop at different steps, so they keep the immediate
    interrupt (and resume from the last periodic checkpoint)."""

    def __init__(self, active: bool = True):
        self.active = active and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise faults.Interrupted(signum)
        self.signum = signum

    def __enter__(self) -> "StepBoundarySignals":
        if self.active:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            if handler is not None:  # None: a handler not installed from Python, which cannot be restored
                signal.signal(sig, handler)
        self._previous = {}


def next_log_step(done: int, train_cfg: TrainConfig, total_steps: int) -> int:
    """The step after which the next log record is written (a multiple of log_every, or the last step)."""
    return min(total_steps, (done // train_cfg.log_every + 1) * train_cfg.log_every)


def bar_refresh_steps(train_cfg: TrainConfig, total_steps: int) -> int:
    """Steps between progress-bar refreshes of the live metrics: log_every, or about a twentieth of a shorter
    run, so a short run's bar never shows the first window's FVU until the end.  Each refresh reads the device
    once (no per-step reads: at most ~20 per run beyond the log steps)."""
    return max(1, min(train_cfg.log_every, -(-total_steps // 20)))


def window_means(st: SAEState, dead_tokens: int) -> dict:
    """The running means of ``st``'s current window for the progress bar (reads the device, keeps the window)."""
    w = st.window
    n = max(1, w["steps"])
    l0, fvu, dead = torch.stack([w["l0"] / n, w["fvu"] / n, (st.since_fired >= dead_tokens).sum().double()]).tolist()
    return {"l0": l0, "fvu": fvu, "dead": int(dead), "dense": "-"}


def _bar_text(labels: list[str], records: list[dict]) -> str:
    return " | ".join(f"{label}: L0 {r['l0']:.1f} FVU {r['fvu']:.3f} dead {r['dead']} dense {r['dense']}"
                      for label, r in zip(labels, records))


def _finalise(run: _Run) -> list[Path]:
    """Calibrate thresholds, save every SAE (rank 0) and drop the checkpoint; returns the SAE directories."""
    cache, train_cfg, comm, scale, need = run.cache, run.train_cfg, run.comm, run.scale, run.need
    total_steps = run.total_steps
    paths = []
    thr_sample = _threshold_sample(run)
    meta = _metadata(cache)
    steps = run.steps_run or total_steps
    for st in run.states:
        sae = st.sae
        summary = {**_saved_summary(run, steps), "stop_reason": "converged" if run.converged else "budget",
                   "ema_threshold": float(st.ema_threshold)}
        if st.heldout:
            summary["heldout_fvu"] = st.heldout[-1][1]
            summary["converged_step"] = converged_since(st.heldout, train_cfg.converge_tol, train_cfg.converge_frac,
                                                        run.warmup)
        if sae.architecture.calibrates_threshold:
            summary["threshold_scaled"] = _calibrate(sae, st.ema_threshold, thr_sample, train_cfg)
        summary["inference_l0_sample"] = inference_l0(sae, thr_sample)
        path = run.out_dir / st.name

        def save(sae=sae, path=path, summary=summary) -> None:
            with explain_full_disk(path, need):
                save_sae(sae.folded(scale).cpu(), path, metadata=meta, summary=summary)
        comm.on_rank0(save, f"saving {st.name}")
        paths.append(path)
    comm.on_rank0(lambda: _drop_checkpoint(run.ckpt_path, train_cfg), "removing the checkpoint")
    return paths


def _saved_summary(run: _Run, steps: int) -> dict:
    """What a saved SAE's summary records of the run after ``steps`` steps (final save and snapshots alike)."""
    return {"steps": steps, "tokens": steps * run.train_cfg.batch_size * run.comm.world_size,
            "max_steps": run.total_steps, "input_scale": run.scale, "train_config": asdict(run.train_cfg)}


def _threshold_sample(run: _Run) -> Tensor:
    if run.threshold_sample is None:
        rows = _sample(run.cache, run.train_cfg.threshold_sample_tokens, run.train_cfg.seed + 1)
        run.threshold_sample = (rows * run.scale).to(run.comm.device)
    return run.threshold_sample


def _calibrate(sae: HybridSAE, ema: Tensor, sample: Tensor, train_cfg: TrainConfig) -> float:
    """Set ``sae``'s inference threshold (the EMA ``ema``, or the value giving mean L0 = k on ``sample``)."""
    if train_cfg.threshold_method == "ema" and float(ema) > 0:
        thr = float(ema)
    else:
        thr = estimate_threshold(sae, sample, sae.cfg.k)
    with torch.no_grad():
        sae.threshold.fill_(thr)
    return thr


SNAPSHOTS = "snapshots"


def snapshot_path(out_dir: str | Path, name: str, step: int) -> Path:
    """Where the snapshot of SAE ``name`` after ``step`` steps goes."""
    return Path(out_dir) / SNAPSHOTS / name / f"step_{step:07d}"


def _snapshot(run: _Run, step: int) -> None:
    """Every SAE after ``step`` steps, saved as the final save would save it (folded, threshold calibrated on the
    same sample), without touching the SAE being trained."""
    import copy

    sample, meta = _threshold_sample(run), _metadata(run.cache)
    for st in run.states:
        sae = copy.deepcopy(st.sae)
        summary = {**_saved_summary(run, step), "snapshot": True}
        if sae.architecture.calibrates_threshold:
            summary["threshold_scaled"] = _calibrate(sae, st.ema_threshold, sample, run.train_cfg)
        path = snapshot_path(run.out_dir, st.name, step)
        with explain_full_disk(path, run.need):
            save_sae(sae.folded(run.scale).cpu(), path, metadata=meta, summary=summary)


def train_distributed(cache, cfgs, train_cfg, out_dir, comm: distributed.Comm,
                      on_step: Callable | None = None, sync_recorder: SyncRecorder | None = None) -> list[Path]:
    """``train_saes`` as one rank of a data-parallel run (every rank calls it with the same arguments)."""
    try:
        return train_saes(cache, cfgs, train_cfg, out_dir, on_step=on_step, comm=comm, sync_recorder=sync_recorder)
    except RuntimeError as error:
        if isinstance(error, distributed.DistributedError) or not distributed.is_peer_failure(error):
            raise
        raise distributed.DistributedError(f"rank {comm.rank}: another rank stopped or timed out "
                               f"({str(error).splitlines()[0][:200]}); rerun the same command to resume from "
                               "the last checkpoint") from error


def _train_ranked(values: dict, cfgs, train_cfg) -> list[Path]:
    """The body of ``scaffold-sae train`` on one torchrun rank."""
    comm = distributed.init_from_env(values.get("device") or "auto")
    try:
        if values.get("threads"):
            torch.set_num_threads(int(values["threads"]))
        cache = ActivationCache.open(values["cache"], verify="full" if comm.rank == 0 else "fast")
        train_cfg.device = str(comm.device)
        paths = train_distributed(cache, cfgs, train_cfg, values["out"], comm)
    except BaseException:
        distributed.shutdown(sync=False)
        raise
    distributed.shutdown()
    return paths if comm.rank == 0 else []


def _drop_checkpoint(ckpt_path: Path, train_cfg: TrainConfig) -> None:
    if not train_cfg.keep_checkpoint and ckpt_path.exists():
        ckpt_path.unlink()


def _sample(cache: ActivationSource, n: int, seed: int) -> Tensor:
    n = min(n, int(getattr(cache, "n_rows", n)))
    return cache.sample(n, seed=seed).float()


def dead_tokens_of(train_cfg: TrainConfig) -> int:
    return train_cfg.dead_tokens or min(10_000_000, max(train_cfg.batch_size, train_cfg.tokens // 10))


# ------------------------------------------------------------------------------- held-out FVU and convergence


def _measure_heldout(run: _Run, step: int) -> list[dict]:
    """Held-out FVU of every SAE at ``step``, appended to its curve; the log records."""
    cfg, comm = run.train_cfg, run.comm
    rows = run.heldout * run.scale if run.scale != 1.0 else run.heldout
    records = []
    for st in run.states:
        fvu = heldout_fvu(st.sae, rows, cfg.batch_size * comm.world_size)
        st.heldout.append((step, fvu))
        records.append({"sae": st.name, "step": step, "tokens": step * cfg.batch_size * comm.world_size,
                        "heldout_fvu": fvu})
    return records


def _all_converged(run: _Run) -> bool:
    """Every SAE's rule holds at its latest measurement, on every rank (the ranks agree through a minimum)."""
    cfg = run.train_cfg
    mine = all(rule_holds(st.heldout, len(st.heldout) - 1, cfg.converge_tol, cfg.converge_frac, run.warmup)
               for st in run.states)
    return run.comm.min_int(int(mine)) == 1


# ------------------------------------------------------------------------------- configs from values


@dataclass
class TrainRun:
    """What a `scaffold-sae train` run reads and writes, beside its SAEConfig and TrainConfig fields."""

    cache: str | None = None
    """Activation cache directory."""
    out: str | None = None
    """Output directory (one sub-directory per SAE)."""
    ranks: list[int] | None = None
    """Comma-separated scaffold ranks, one SAE each (e.g. 0,8,24); default: one SAE of rank `rank`."""
    saes: list[dict] | None = None
    """A list of per-SAE SAEConfig overrides, one SAE each (instead of ranks); config files only."""
    threads: int | None = None
    """torch CPU threads (default: torch's own choice)."""


RUN_KEYS = tuple(f.name for f in fields(TrainRun))


def configs_from_dict(values: dict) -> tuple[list[SAEConfig], TrainConfig]:
    """SAE configs and TrainConfig from a flat dict (config file merged with flags).

    Keys: any SAEConfig or TrainConfig field, ``ranks`` (list or "0,8,24": one SAE per rank) and
    ``saes`` (a list of per-SAE overrides, crossed with nothing: each entry is one SAE).
    """
    sae_fields = {f.name for f in fields(SAEConfig)}
    train_fields = {f.name for f in fields(TrainConfig)}
    allowed = sae_fields | train_fields | set(RUN_KEYS)
    for key in values:
        if key not in allowed:
            raise ConfigError(f"unknown config field {key!r}: allowed fields are {', '.join(sorted(allowed))}")
    # `seed` at the top level is the run's (TrainConfig) seed; per-SAE seeds go in `saes` entries
    base = {k: v for k, v in values.items() if k in sae_fields and k not in train_fields and v is not None}
    train = build(TrainConfig, {k: v for k, v in values.items() if k in train_fields})
    entries: list[dict] = []
    if values.get("saes"):
        for i, entry in enumerate(values["saes"]):
            if not isinstance(entry, dict):
                raise ConfigError(f"saes[{i}] is invalid: expected a mapping of SAEConfig fields")
            bad = set(entry) - sae_fields
            if bad:
                raise ConfigError(f"unknown field {sorted(bad)[0]!r} in saes[{i}]: allowed fields are "
                                  f"{', '.join(sorted(sae_fields))}")
            entries.append({**base, **entry})
    else:
        ranks = values.get("ranks")
        if ranks is None:
            ranks = [base.get("rank", 0)]
        if isinstance(ranks, str):
            try:
                ranks = [int(r) for r in ranks.split(",") if r.strip()]
            except ValueError:
                raise ConfigError(f"ranks={values['ranks']!r} is invalid: expected integers like 0,8,24") from None
        entries = [{**base, "rank": r} for r in ranks]
    cfgs = [build(SAEConfig, entry) for entry in entries]
    for cfg in cfgs:
        # structural checks that do not need d_in (filled from the cache later)
        SAEConfig(**{**asdict(cfg), "d_in": cfg.d_in or max(cfg.rank + 1, 1)}).validate()
    return cfgs, train.validate()


def train_from_config(values: dict) -> list[Path]:
    """`scaffold-sae train` as one call: ``values`` holds SAEConfig, TrainConfig and TrainRun fields (a config file
    merged with flags).  Under torchrun this process trains as one rank.  Returns the saved SAE directories (none
    on ranks other than 0)."""
    for key in ("cache", "out"):
        if not values.get(key):
            raise ConfigError(f"{key} is missing: pass --{key} DIR or set {key} in --config")
    cfgs, train_cfg = configs_from_dict(values)
    if distributed.launched_by_torchrun():  # one rank of torchrun --nproc_per_node N -m scaffold_sae train
        return _train_ranked(values, cfgs, train_cfg)
    if values.get("threads"):
        torch.set_num_threads(int(values["threads"]))
    cache = ActivationCache.open(values["cache"])
    return train_saes(cache, cfgs, train_cfg, values["out"])


__all__ = ["TrainConfig", "TensorSource", "train_saes", "train_from_config", "train_distributed", "TrainRun",
           "configs_from_dict", "estimate_threshold", "schedule", "input_scale",
           # defined in the modules split out of this one, importable from here as before
           "CHECKPOINT", "CheckpointError", "LOG", "read_log", "SAEState", "new_state", "train_step",
           "converged_since", "heldout_fvu", "rule_holds"]
