"""The communicator the trainer and the sliced harvest talk to, and its one-process implementation.

Every run has a communicator: :class:`LocalComm` for one process (every collective is the identity,
rank 0 does all the writing), ``scaffold_sae.distributed.Comm`` for one rank of a torch.distributed
process group.  Code that trains or harvests calls the same collectives either way, so it has no
single-process branches.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor


class Communicator(Protocol):
    """The collectives the trainer and the harvester need (all ranks call each one in the same order)."""

    rank: int
    """This process's rank (0 .. world_size - 1); rank 0 writes checkpoints and saved SAEs."""
    world_size: int
    """Number of processes taking part."""
    device: torch.device
    """Where this process trains."""

    def barrier(self) -> None: ...

    def min_int(self, value: int) -> int: ...

    def on_rank0(self, fn: Callable[[], object], what: str) -> None: ...

    def all_reduce_grads(self, module: torch.nn.Module) -> None: ...

    def sum_counts(self, counts: Tensor) -> Tensor: ...

    def reduce_window(self, window: dict) -> None: ...

    def setup(self, states: Sequence, start: int, scale: float) -> float: ...

    def teardown(self, states: Sequence) -> None: ...


class LocalComm:
    """A single process: rank 0 of 1, every collective returns its input unchanged."""

    rank = 0
    world_size = 1

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)

    def barrier(self) -> None:
        pass

    def min_int(self, value: int) -> int:
        return value

    def on_rank0(self, fn: Callable[[], object], what: str) -> None:
        fn()

    def all_reduce_grads(self, module: torch.nn.Module) -> None:
        pass

    def sum_counts(self, counts: Tensor) -> Tensor:
        return counts

    def reduce_window(self, window: dict) -> None:
        pass

    def setup(self, states: Sequence, start: int, scale: float) -> float:
        return scale

    def teardown(self, states: Sequence) -> None:
        pass


__all__ = ["Communicator", "LocalComm"]
