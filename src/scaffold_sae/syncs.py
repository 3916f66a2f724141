"""Find, on a CPU, every operation that would make the host wait for the GPU.

On CUDA a kernel launch returns at once; the host waits only when it needs a value back (``.item()``,
``float(t)``, ``if t:``), a shape that depends on the data (``nonzero``, boolean-mask indexing, ``unique``,
``masked_select``, ``repeat_interleave`` without ``output_size``, ``bincount``), or a copy to host memory
(``.cpu()``, ``.tolist()``, ``.numpy()``).  Every wait stalls the pipeline, so a training step should make none.

:class:`SyncRecorder` records those operations while it is active, on any device::

    with SyncRecorder() as syncs:
        train_step(...)
    assert not syncs.events, syncs.summary()

It is a ``TorchDispatchMode`` (it sees every aten op, so it also finds the syncs inside torch functions) plus a
``TorchFunctionMode`` for the Python-level copies to the host that never reach the dispatcher on a CPU tensor.
``.to(device)`` is not recorded: on a CPU run it cannot tell a copy to the host from one to the device.
"""

from __future__ import annotations

import traceback
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

ALWAYS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_dim",
          "unique_consecutive", "bincount", "equal", "is_nonzero", "_assert_async"}
"""aten ops that wait for the device whatever their arguments (``nonzero_static`` does not: its size is fixed)."""
BOOL_INDEXED = {"index", "index_put", "index_put_", "_index_put_impl_"}
"""aten ops that wait when an index is a boolean mask (it becomes a ``nonzero``)."""
HOST_METHODS = {"cpu", "tolist", "numpy"}
"""Tensor methods that copy to the host and never reach the dispatcher on a CPU tensor (``item``, ``float(t)``,
``bool(t)`` do: they are counted once, as ``aten._local_scalar_dense``)."""


@dataclass
class SyncEvent:
    op: str
    """The operation, e.g. ``aten.nonzero`` or ``Tensor.tolist``."""
    where: str
    """The innermost frame of this project that called it (``file:line function``)."""


@dataclass
class SyncRecorder:
    """Records the synchronising operations run while it is active (see the module docstring)."""

    events: list[SyncEvent] = field(default_factory=list)
    _modes: tuple = ()

    def __enter__(self) -> "SyncRecorder":
        from scaffold_sae.kernels import device_path  # the CPU runs the GPU's selections while recorded

        self._modes = (device_path(), _FunctionMode(self), _DispatchMode(self))
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    def record(self, op: str) -> None:
        self.events.append(SyncEvent(op, _caller()))

    def counts(self) -> Counter:
        """(op, where) -> how many times."""
        return Counter((e.op, e.where) for e in self.events)

    def summary(self) -> str:
        """One line per distinct (op, caller), most frequent first."""
        return "\n".join(f"{n:5d} x {op} at {where}" for (op, where), n in self.counts().most_common())


def _caller() -> str:
    for frame in reversed(traceback.extract_stack()[:-3]):
        if "scaffold_sae" in frame.filename and not frame.filename.endswith("syncs.py"):
            return f"{frame.filename.rsplit('scaffold_sae/', 1)[-1]}:{frame.lineno} {frame.name}"
    return "outside scaffold_sae"


def is_sync(name: str, args: tuple, kwargs: dict) -> bool:
    """Whether aten op ``name`` (overload packet name) with these arguments waits for a CUDA device."""
    if name in ALWAYS:
        return True
    if name in BOOL_INDEXED:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())
    if name == "repeat_interleave":
        return kwargs.get("output_size") is None and not (len(args) > 3 and args[3] is not None)
    return False


class _DispatchMode(TorchDispatchMode):
    def __init__(self, recorder: SyncRecorder):
        super().__init__()
        self.recorder = recorder

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if is_sync(name, args, kwargs):
            self.recorder.record(f"aten.{name}")
        return func(*args, **kwargs)


class _FunctionMode(TorchFunctionMode):
    def __init__(self, recorder: SyncRecorder):
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in HOST_METHODS and args and isinstance(args[0], torch.Tensor):
            self.recorder.record(f"Tensor.{name}")
        return func(*args, **kwargs)


__all__ = ["SyncEvent", "SyncRecorder", "is_sync"]
