"""The training checkpoint file: models, optimisers, counters, RNG and the step (= data position), behind a
sha256 header, written atomically and verified on resume.

    CHECKPOINT_MAGIC  sha256-hex-of-payload  newline  torch.save payload

A checkpoint resumes only the configuration that wrote it (its ``config_key``); one that fails its checksum gets a
one-line CheckpointError that says what to do.
"""

from __future__ import annotations

import hashlib
import io
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from . import faults
from .config import ConfigError
from .fetch import atomic_write_bytes
from .saving import state_bytes

if TYPE_CHECKING:
    from .step import SAEState

CHECKPOINT = "checkpoint.pt"
"""The checkpoint's file name in a run's output directory."""
CHECKPOINT_MAGIC = b"scaffold-sae checkpoint sha256:"
"""A checkpoint file is this, the sha256 hex digest of the payload, a newline, then the torch.save payload."""


@contextmanager
def explain_full_disk(path: Path, need: int) -> Iterator[None]:
    try:
        yield
    except OSError as error:
        if not faults.is_disk_full(error):
            raise
        raise faults.disk_full_error(path, need) from None


def save_checkpoint(path: Path, key: str, step: int, scale: float, states: list["SAEState"], need: int) -> None:
    payload = {
        "config_key": key, "step": step, "scale": scale, "torch_rng": torch.get_rng_state(),
        "saes": [{"name": st.name, "model": st.sae.state_dict(), "optim": st.optim.state_dict(),
                  "since_fired": st.since_fired.clone(), "ema_threshold": float(st.ema_threshold),
                  "heldout": list(st.heldout)}
                 for st in states],
    }
    with explain_full_disk(path, need):
        atomic_write_bytes(path, seal_checkpoint(state_bytes(payload)))


class CheckpointError(RuntimeError):
    """A checkpoint whose bytes fail their checksum."""


def seal_checkpoint(payload: bytes) -> bytes:
    """The checkpoint file: CHECKPOINT_MAGIC, the payload's sha256 hex digest, a newline, the payload."""
    return CHECKPOINT_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def open_checkpoint(path: Path) -> bytes:
    """The payload of a checkpoint file, after checking its sha256; one-line CheckpointError otherwise."""
    raw = Path(path).read_bytes()
    fix = ("delete it to restart training from scratch, or restore it from a backup (this directory keeps only "
           "this one checkpoint)")
    start = len(CHECKPOINT_MAGIC) + 65
    if not raw.startswith(CHECKPOINT_MAGIC) or raw[start - 1:start] != b"\n":
        raise CheckpointError(f"checkpoint {path} is corrupted (no valid scaffold-sae checksum header; or it was "
                              f"written by an older scaffold-sae): {fix}")
    payload = raw[start:]
    if hashlib.sha256(payload).hexdigest().encode() != raw[len(CHECKPOINT_MAGIC):start - 1]:
        raise CheckpointError(f"checkpoint {path} is corrupted (sha256 mismatch): {fix}")
    return payload


def load_checkpoint(path: Path, key: str, states: list["SAEState"]) -> tuple[int, float]:
    payload = open_checkpoint(path)
    try:
        payload = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same advice
        raise RuntimeError(f"cannot read checkpoint {path}: {error}; delete it to start over") from error
    if payload.get("config_key") != key:
        raise ConfigError(f"checkpoint {path} was written by a different configuration: use another "
                          "output directory, or delete the checkpoint to start over")
    for st, saved in zip(states, payload["saes"]):
        st.sae.load_state_dict(saved["model"])
        st.optim.load_state_dict(saved["optim"])
        st.since_fired = saved["since_fired"].to(st.since_fired.device)
        st.ema_threshold = torch.tensor(float(saved["ema_threshold"]), dtype=torch.float64,
                                        device=st.since_fired.device)
        st.heldout = [(int(step), float(fvu)) for step, fvu in saved.get("heldout", [])]
    torch.set_rng_state(payload["torch_rng"])
    return int(payload["step"]), float(payload["scale"])


__all__ = ["CHECKPOINT", "CHECKPOINT_MAGIC", "CheckpointError", "explain_full_disk", "load_checkpoint",
           "open_checkpoint", "save_checkpoint", "seal_checkpoint"]
