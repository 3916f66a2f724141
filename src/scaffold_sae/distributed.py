"""Process groups for data-parallel training and sliced harvesting over torch.distributed (gloo on CPU, NCCL on GPUs).

Training (``train_saes(..., comm=Comm)``): every rank builds the same SAEs (same seed, same init
sample; parameters are then broadcast from rank 0 so heterogeneous nodes agree bit for bit), reads
its own disjoint batches of the cache (global batch g goes to rank g % world_size), and after
backward the gradients are averaged over ranks before clipping and the Adam step, so every rank
holds identical weights.  Everything else computed from data is made global: fire counts (dead
latents, dense counts), window statistics, and the BatchTopK selection itself (the top B*k
pre-activations of the *global* batch, found exactly from each rank's local threshold and the few
values between the smallest and largest local thresholds).  Rank 0 alone writes checkpoints and the
saved SAEs; every other rank waits for rank 0's success flag, so a failed write fails every rank.

Harvesting (``scaffold_sae.cache.harvest_slices(..., comm=Comm)``): rank r of W harvests its slice of the
contexts and rank 0 merges the slices (see that function).

Launching: ``torchrun --nproc_per_node N -m scaffold_sae train ...`` (or ``--nproc N``, which runs
``torch.distributed.run --standalone`` for you).  Known limits: AuxK normalises by the per-rank
residual variance (not the global one, so runs with dead latents are equal in expectation, not bit
for bit, to one process); latents are not sharded across ranks (each rank holds the whole SAE).
"""

from __future__ import annotations

import datetime
import gc
import os
import subprocess
import sys
from typing import Callable, NoReturn, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from . import kernels
from .devices import resolve_device

DEFAULT_TIMEOUT_S = 600.0
"""Default timeout of every collective (seconds); a rank that never answers fails the others."""
TIMEOUT_ENV = "SCAFFOLD_SAE_DIST_TIMEOUT"


class DistributedError(RuntimeError):
    """A distributed run that cannot start or that failed on some rank."""


# ------------------------------------------------------------------------------------ environment


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun / torch.distributed.run with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def _timeout() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        raise DistributedError(f"{TIMEOUT_ENV}={os.environ[TIMEOUT_ENV]!r} is invalid: seconds as a number") from None


def init_from_env(device: str = "auto", timeout_s: float | None = None) -> "Comm":
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT); NCCL when this rank runs on a GPU, gloo otherwise."""
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise DistributedError(f"{key} is not set: start distributed runs with torchrun "
                                   "(or scaffold-sae ... --nproc N)")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    return init(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), "env://", dev, timeout_s)


def init(rank: int, world_size: int, init_method: str, device: torch.device | str = "cpu",
         timeout_s: float | None = None) -> "Comm":
    """Join (or create) the default process group and return a :class:`Comm` over it."""
    device = torch.device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s if timeout_s is not None else _timeout())
    if not dist.is_initialized():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        try:
            dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                                    timeout=timeout, **kwargs)
        except Exception as error:  # noqa: BLE001 - rendezvous errors come in many types
            raise DistributedError(f"rank {rank} could not join the {world_size}-process group via "
                                   f"{init_method} ({error}); check the rendezvous flags / that every rank "
                                   "started") from None
    return Comm(rank, world_size, device)


def shutdown(sync: bool = True) -> None:
    """Leave the process group; ``sync`` first waits for every rank (tearing gloo down while a peer
    still talks to it can abort the process), skipped after an error, when a peer may be gone."""
    if not dist.is_initialized():
        return
    if sync and dist.get_world_size() > 1:
        try:
            dist.barrier()
        except RuntimeError:
            pass
    dist.destroy_process_group()
    gc.collect()  # process-group objects caught in reference cycles are freed now, not at interpreter exit


def end_rank_process(code: int) -> NoReturn:
    """End a torchrun rank's process after :func:`shutdown`, skipping C++ static destruction.

    A rank that ends through normal interpreter finalisation can abort with SIGABRT ("terminate called
    without an active exception") after its work is done: a gloo transport or store thread that is still
    joinable when the C++ runtime destroys static objects calls std::terminate.  Running the atexit
    handlers and flushing, then ``os._exit``, ends the process with its real exit code instead."""
    import atexit
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


# ---------------------------------------------------------------------------------------- Comm


class Comm:
    """One rank of a torch.distributed process group (a scaffold_sae.comm.Communicator): the collectives
    the trainer and the harvester need (all ranks call each one in the same order)."""

    def __init__(self, rank: int, world_size: int, device: torch.device | str = "cpu"):
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    # ------------------------------------------------------------------ basic collectives
    def all_reduce(self, tensor: Tensor, op=dist.ReduceOp.SUM) -> Tensor:
        if self.active:
            dist.all_reduce(tensor, op=op)
        return tensor

    def barrier(self) -> None:
        if self.active:
            flag = torch.zeros(1, device=self.device)
            dist.all_reduce(flag)

    def broadcast_float(self, value: float) -> float:
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(t, 0)
        return float(t.item())

    def agree(self, value: int, what: str) -> int:
        """Check that every rank holds the same integer ``value``."""
        if not self.active:
            return value
        t = torch.tensor([value, -value], dtype=torch.long, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if int(t[0]) != -int(t[1]):
            raise DistributedError(f"ranks disagree on {what} ({-int(t[1])}..{int(t[0])}): {_agree_fix(what)}")
        return value

    def min_int(self, value: int) -> int:
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.long, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    def on_rank0(self, fn: Callable[[], object], what: str) -> None:
        """Run ``fn`` on rank 0 only; every rank then learns whether it succeeded (no rank hangs,
        every rank raises when rank 0 failed)."""
        error: BaseException | None = None
        if self.rank == 0:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised below after telling the others
                error = exc
        if self.active:
            flag = torch.tensor([0.0 if error is None else 1.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            failed = bool(flag.item())
        else:
            failed = error is not None
        if error is not None:
            raise error
        if failed:
            raise DistributedError(f"rank 0 failed while {what} (its error is in its log); rerun the same "
                                   "command to resume")

    # ------------------------------------------------------------------ training hooks
    def all_reduce_grads(self, module: torch.nn.Module) -> None:
        """Average the gradients of ``module`` over ranks in one flat bucket (before clipping)."""
        if not self.active:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None and p.grad.numel()]
        if not grads:
            return
        if any(g.is_sparse for g in grads):
            raise DistributedError("sparse gradients are not supported by the data-parallel trainer")
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

    def sum_counts(self, counts: Tensor) -> Tensor:
        """Sum per-latent fire counts over ranks."""
        return self.all_reduce(counts)

    def reduce_window(self, window: dict) -> None:
        """Average the scalar window statistics over ranks (fires and tokens are already global)."""
        if not self.active:
            return
        keys = ("loss", "mse", "aux", "fvu", "l0")
        t = torch.stack([torch.as_tensor(window[k], dtype=torch.float64, device=self.device) for k in keys])
        dist.all_reduce(t)
        for key, value in zip(keys, t / self.world_size):
            window[key] = value

    def setup(self, states: Sequence, start: int, scale: float) -> float:
        """After init or resume: check every rank resumes from the same step, broadcast rank 0's
        parameters, counters and input scale, and install the global BatchTopK selection."""
        if not self.active:
            return scale
        self.agree(start, "the resume step")
        scale = self.broadcast_float(scale)
        for st in states:
            for tensor in st.sae.state_dict().values():
                dist.broadcast(tensor, 0)
            dist.broadcast(st.since_fired, 0)
            dist.broadcast(st.ema_threshold, 0)
            if st.sae.architecture.uses_global_batch_selection:
                st.sae.select = _GlobalSelect(self, st.sae.cfg.k)
        return scale

    def teardown(self, states: Sequence) -> None:
        """Remove the global selection (the SAEs then select per batch again)."""
        for st in states:
            st.sae.__dict__.pop("select", None)


def _agree_fix(what: str) -> str:
    if what == "the resume step":
        return "every rank must see the same checkpoint: put --out on a filesystem shared by all nodes"
    return "start every rank with the same command and inputs"


class _GlobalSelect:
    """Instance-level replacement of HybridSAE.select: batch top-k over the global batch."""

    def __init__(self, comm: Comm, k: int):
        self.comm, self.k = comm, k

    def __call__(self, pre: Tensor) -> tuple[kernels.ActiveSet, Tensor]:
        return distributed_batch_topk(pre, self.k, self.comm)

    def __deepcopy__(self, memo):  # SAE copies (folding at save) share it; it holds no tensors
        return self


@torch.no_grad()
def distributed_batch_topk(pre: Tensor, k: int, comm: Comm) -> tuple[kernels.ActiveSet, Tensor]:
    """Batch top-k over the union of every rank's batch: the N*k largest positive pre-activations, N the global
    token count (every rank holds the same number of tokens).  Exact (ties aside) with fixed shapes, nothing read
    back to the host: each rank's share of the global top N*k lies in its own top N*k, which
    :func:`scaffold_sae.kernels.candidates` holds; the ranks exchange those values (one all_gather), and each
    keeps its pairs at or above the global cut.  Returns this rank's active set (N*k stored pairs, the ones below
    the cut inactive) and the global threshold (the smallest kept value; 0 when fewer than N*k are positive)."""
    if not comm.active:
        return kernels.batch_topk(pre, k)
    n_rows, n_cols = pre.shape
    total = n_rows * comm.world_size * k
    mine = min(total, pre.numel())
    vals, row, col = kernels.candidates(pre, mine)
    top, at = vals.topk(mine, sorted=False)
    gathered = [torch.empty_like(top) for _ in range(comm.world_size)]
    dist.all_gather(gathered, top)
    union = torch.cat(gathered)
    cut = union.topk(min(total, union.numel()), sorted=False).values.min()
    enough = (union > 0).sum() >= total
    thr = torch.where(enough, cut, cut.new_zeros(())).clamp_min(0)
    keep = (top >= thr) & (top > 0)
    return kernels.active_from_pairs(row[at], col[at], top, n_rows, n_cols, keep), thr


# ------------------------------------------------------------------------------------ training


def is_peer_failure(error: BaseException) -> bool:
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error)
    return any(word in text for word in ("Connection closed", "Connection reset", "gloo", "NCCL", "imed out"))


def cli_argv(args, skip: Sequence[str] = ("func", "command", "nproc"),
             negations: dict[str, str] | None = None) -> list[str]:
    """Rebuild a subcommand's argv from its parsed namespace (flags are ``--dest-with-dashes``).

    ``negations`` maps a dest whose flag stores False (e.g. progress -> --no-progress)."""
    negations = negations or {}
    argv: list[str] = []
    for key, value in vars(args).items():
        if key in skip or value is None:
            continue
        if key in negations:
            if value is False:
                argv.append(negations[key])
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False:
            argv += [flag, str(value)]
    return argv


def launch(command: str, argv: list[str], nproc: int) -> None:
    """Run ``scaffold-sae COMMAND ARGV`` as ``nproc`` local ranks through torch.distributed.run."""
    if nproc < 1:
        raise DistributedError(f"--nproc {nproc} is invalid: give a positive number of processes")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "scaffold_sae", command, *argv]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    result = subprocess.run(cmd, env=env)
    if result.returncode != 0:
        raise DistributedError(f"{command} with {nproc} processes failed (exit code {result.returncode}; the "
                               "failing rank's error is above); rerun the same command to resume")


__all__ = ["Comm", "DistributedError", "init", "init_from_env", "shutdown", "launched_by_torchrun",
           "end_rank_process", "distributed_batch_topk", "launch", "cli_argv",
           "is_peer_failure"]
