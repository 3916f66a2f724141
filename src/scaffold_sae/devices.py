"""GPU helpers: model dtype per device, memory-aware LM batch size, fast fp32 matmuls.

Policy (fp32 master weights everywhere, so no GradScaler is ever needed):
  - the language model runs in bf16 on CUDA (``--lm-dtype auto``) and fp32 on the CPU; its
    residuals are cast to float32 before they are stored;
  - the SAEs train in fp32 on either device; on CUDA TF32 matmuls are enabled for the dense
    encoder product (the one dense step), which keeps fp32 storage and optimiser state.  bf16
    autocast of the SAE is not used: it changes which latents win the top-k selection.
"""

from __future__ import annotations

import torch

LM_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DeviceError(ValueError):
    """A device or dtype choice that cannot work here."""


def lm_dtype(name: str | None, device: torch.device | str) -> torch.dtype:
    """The LM's weight dtype: ``auto`` = bf16 on CUDA (when supported), fp32 on the CPU."""
    device = torch.device(device)
    name = name or "auto"
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in LM_DTYPES:
        raise DeviceError(f"lm dtype {name!r} is invalid: use auto, {', '.join(LM_DTYPES)}")
    if device.type == "cpu" and name != "float32":
        raise DeviceError(f"lm dtype {name} on the CPU is slow and inexact here: use --lm-dtype float32 (or auto)")
    return LM_DTYPES[name]


def enable_fast_fp32(device: torch.device | str) -> None:
    """TF32 tensor-core matmuls for fp32 tensors on CUDA (no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's GPU when CUDA is available, else the CPU; ``cuda`` -> cuda:local_rank."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise DeviceError(f"device={device!r} is invalid: use auto, cpu, cuda or cuda:N")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError("device cuda was asked for but torch sees no GPU: use --device cpu")
        if device == "cuda":
            device = f"cuda:{local_rank % torch.cuda.device_count()}"
        torch.cuda.set_device(torch.device(device))
        enable_fast_fp32(device)
    return torch.device(device)


def free_memory(device: torch.device | str) -> int:
    """Free bytes on a CUDA device (0 for the CPU: callers keep their default)."""
    device = torch.device(device)
    if device.type != "cuda":
        return 0
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def lm_batch_for_memory(free_bytes: int, ctx_len: int, d_model: int, n_layers_run: int, vocab: int = 0,
                        bytes_per_value: int = 2, headroom: float = 0.6, cap: int = 256) -> int:
    """Contexts per forward pass that fit ``headroom`` of ``free_bytes``.

    Per token a forward (no grad) stopped after ``n_layers_run`` blocks holds about 16 d_model values
    live per block (residual, attention and MLP intermediates, 4x MLP width) plus the embedding output;
    ``vocab`` adds the logits when the full model runs.  A rough, conservative estimate: the harvester
    also checks by halving on out-of-memory.
    """
    per_token = (16 * d_model + vocab) * bytes_per_value + 4 * d_model  # + the float32 copy kept
    per_context = per_token * ctx_len * max(1, min(n_layers_run, 2))  # activations are freed block by block
    return int(max(1, min(cap, headroom * free_bytes // max(1, per_context))))


def probe_lm_batch(model, layer: int, ctx_len: int, start: int, minimum: int = 1) -> int:
    """The largest batch <= ``start`` (halving) whose forward to ``layer`` runs without CUDA OOM."""
    device = torch.device(model.device)
    if device.type != "cuda":
        return start
    batch = start
    while batch >= minimum:
        try:
            ids = torch.zeros(batch, ctx_len, dtype=torch.long, device=device)
            model.residual(ids, layer)
            torch.cuda.synchronize(device)
            return batch
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            batch //= 2
    raise DeviceError(f"even {minimum} context(s) of {ctx_len} tokens do not fit on {device}: use a shorter "
                      "--ctx-len or a smaller model")


def auto_lm_batch(model, layer: int, ctx_len: int, default: int = 8) -> int:
    """Memory-aware LM batch: estimated from free GPU memory, confirmed by a probe; ``default`` on CPU."""
    device = torch.device(model.device)
    if device.type != "cuda":
        return default
    est = lm_batch_for_memory(free_memory(device), ctx_len, model.d_model, layer + 1,
                              bytes_per_value=torch.finfo(next(model.hf_model.parameters()).dtype).bits // 8)
    return probe_lm_batch(model, layer, ctx_len, est)


__all__ = ["lm_dtype", "resolve_device", "enable_fast_fp32", "free_memory", "lm_batch_for_memory",
           "probe_lm_batch", "auto_lm_batch", "DeviceError"]
