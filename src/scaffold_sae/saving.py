"""Save and load hybrid SAEs: our directories (SAELens-compatible), SAELens and sparsify SAEs.

Our directory for one SAE:

    cfg.json                  SAELens config (architecture jumprelu | topk | standard)
    sae_weights.safetensors   W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold
    scaffold.safetensors      U [d_in, r], V [d_in, r] (and W_enc_unfolded, b_enc_unfolded, see below)
    scaffold_sae.json         our full SAEConfig, training summary and the sha256 of both weight files
                              (checked by load_sae); SAELens ignores both extras

The sparse part alone is a valid SAELens SAE on raw activations: input scaling is folded in at
save, and for ``encoder_input="residual"`` the scaffold projection is folded into W_enc
(W_enc_eff = (I - V U^T) W_enc; for an uncentred scaffold also b_enc_eff = b_enc - W_enc^T U V^T b_dec), so
SAELens's encoder computes the same codes.  The scaffold term
then belongs to SAELens's reconstruction error.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save

from . import archs
from .fetch import _umask, atomic_write_bytes, atomic_write_text
from .sae import SAEConfig, HybridSAE

FORMAT_VERSION = 1
OUR_CONFIG = "scaffold_sae.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
SCAFFOLD_WEIGHTS = "scaffold.safetensors"


class SAEFormatError(ValueError):
    """A directory that is not a readable SAE; the message says what was expected."""


class SAECorruptedError(SAEFormatError):
    """A weight file of our SAE directory whose sha256 differs from the one recorded at save time."""


def save_sae(sae: HybridSAE, path: str | Path, metadata: dict | None = None,
             summary: dict | None = None) -> Path:
    """Write ``sae`` (working on raw activations) to directory ``path``; returns ``path``.

    ``metadata`` fills SAELens's metadata (model_name, hook_name, hook_layer, context_size,
    prepend_bos, dataset_path, ...); ``summary`` is stored in scaffold_sae.json.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg
    with torch.no_grad():
        w_enc = sae.encoder_weight.detach().t().contiguous()  # [d, m]
        b_enc = sae.b_enc.detach()
        if cfg.encoder_input == "residual" and cfg.rank > 0:
            if not cfg.scaffold_centred:  # x_in = (I - U V^T)(x - b_dec) - U V^T b_dec: the last term goes to b_enc
                b_enc = b_enc - (sae.U.detach() @ (sae.V.detach().t() @ sae.b_dec.detach())) @ w_enc
            w_enc = w_enc - sae.V.detach() @ (sae.U.detach().t() @ w_enc)
        tensors = {
            "W_enc": w_enc.contiguous(),
            "W_dec": sae.W_dec.detach().contiguous(),
            "b_enc": b_enc.contiguous(),
            "b_dec": sae.b_dec.detach().contiguous(),
        }
        if archs.get(cfg.arch).saelens_name == "jumprelu":  # SAELens's JumpReLU needs its threshold
            tensors["threshold"] = sae.threshold.detach().contiguous()
        scaffold = {"U": sae.U.detach().contiguous(), "V": sae.V.detach().contiguous()}
        if cfg.encoder_input == "residual" and cfg.rank > 0:
            scaffold["W_enc_unfolded"] = sae.encoder_weight.detach().t().contiguous()
            scaffold["b_enc_unfolded"] = sae.b_enc.detach().contiguous()
    meta = dict(metadata or {})
    files = {SAELENS_WEIGHTS: save(tensors), SCAFFOLD_WEIGHTS: save(scaffold)}
    ours = {"format": "scaffold-sae", "format_version": FORMAT_VERSION, "sae_config": asdict(cfg),
            "metadata": meta, "summary": summary or {},
            "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}}
    with _replacing_dir(path) as tmp:
        for name, data in files.items():
            atomic_write_bytes(tmp / name, data)
        atomic_write_text(tmp / "cfg.json", json.dumps(_saelens_cfg(cfg, meta), indent=2))
        atomic_write_text(tmp / OUR_CONFIG, json.dumps(ours, indent=2))
    return path


@contextmanager
def _replacing_dir(path: Path) -> Iterator[Path]:
    """Yield a temp directory beside ``path``; on success it replaces ``path`` by rename, on any error it
    is removed, so ``path`` is either the old directory or the complete new one, never a partial one."""
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a saved SAE should read like any directory
        yield tmp
        old = None
        if path.exists():
            old = path.parent / f"{tmp.name}.old"
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _saelens_cfg(cfg: SAEConfig, meta: dict) -> dict:
    layer = meta.get("hook_layer")
    hook_name = meta.get("hook_name") or (f"blocks.{layer}.hook_resid_post" if layer is not None else "")
    metadata = {
        "model_name": meta.get("model_name", ""),
        "hook_name": hook_name,
        "hook_layer": layer,
        "hook_head_index": None,
        "context_size": meta.get("context_size"),
        "prepend_bos": meta.get("prepend_bos", True),
        "dataset_path": meta.get("dataset_path", ""),
        "model_from_pretrained_kwargs": {},
        "sae_lens_training_version": None,
    }
    out = {
        "architecture": archs.get(cfg.arch).saelens_name,
        "d_in": cfg.d_in,
        "d_sae": cfg.width,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
    }
    if out["architecture"] == "topk":
        out["k"] = cfg.k
    # flat copies for SAELens < 6 and SAEBench readers that look at the top level
    out.update({key: value for key, value in metadata.items() if key not in out})
    out["finetuning_scaling_factor"] = False
    return out


def load_sae(path: str | Path) -> HybridSAE:
    """Load an SAE directory written by us, by SAELens (cfg.json + sae_weights.safetensors) or by
    sparsify (cfg.json + sae.safetensors)."""
    path = Path(path)
    if (path / OUR_CONFIG).is_file():
        return _load_ours(path)
    if (path / SAELENS_WEIGHTS).is_file():
        return _load_saelens(path)
    if (path / SPARSIFY_WEIGHTS).is_file():
        return _load_sparsify(path)
    raise SAEFormatError(f"{path} is not an SAE directory: expected {OUR_CONFIG}, {SAELENS_WEIGHTS} "
                         f"(SAELens) or {SPARSIFY_WEIGHTS} (sparsify)")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SAEFormatError(f"cannot read {path}: {error}") from error


def _config_from_dict(data: dict) -> SAEConfig:
    known = {f.name for f in fields(SAEConfig)}
    return SAEConfig(**{key: value for key, value in data.items() if key in known})


def _build(cfg: SAEConfig, w_enc_dm: torch.Tensor, w_dec: torch.Tensor, b_enc: torch.Tensor,
           b_dec: torch.Tensor, threshold: torch.Tensor | None = None,
           u: torch.Tensor | None = None, v: torch.Tensor | None = None) -> HybridSAE:
    sae = HybridSAE(cfg)
    with torch.no_grad():
        sae.encoder_weight.copy_(w_enc_dm.t())
        sae.W_dec.copy_(w_dec)
        sae.b_enc.copy_(b_enc)
        sae.b_dec.copy_(b_dec)
        if threshold is not None:
            sae.threshold.copy_(threshold)
        if cfg.rank > 0:
            sae.U.copy_(u)
            if sae.V_free is not None:
                sae.V_free.copy_(v)
    sae.requires_grad_(False)
    return sae.eval()


def verify_sae_files(path: Path, ours: dict) -> None:
    """Check the weight files of our SAE directory against the sha256 recorded in scaffold_sae.json."""
    for name, want in (ours.get("sha256") or {}).items():
        file = path / name
        fix = (f"re-run the `scaffold-sae train` command that wrote {path} to train and save it again (in a "
               f"study: delete {path} and rerun the study), or restore {name} from a backup")
        if not file.is_file():
            raise SAECorruptedError(f"{name} of SAE {path} is missing: {fix}")
        if hashlib.sha256(file.read_bytes()).hexdigest() != want:
            raise SAECorruptedError(f"{name} of SAE {path} is corrupted (sha256 differs from {OUR_CONFIG}): {fix}")


def _load_ours(path: Path) -> HybridSAE:
    ours = _read_json(path / OUR_CONFIG)
    verify_sae_files(path, ours)
    cfg = _config_from_dict(ours["sae_config"])
    weights = load_file(str(path / SAELENS_WEIGHTS))
    scaffold = load_file(str(path / SCAFFOLD_WEIGHTS)) if (path / SCAFFOLD_WEIGHTS).is_file() else {}
    w_enc = scaffold.get("W_enc_unfolded", weights["W_enc"])
    sae = _build(cfg, w_enc, weights["W_dec"], scaffold.get("b_enc_unfolded", weights["b_enc"]), weights["b_dec"],
                 weights.get("threshold"), scaffold.get("U"), scaffold.get("V"))
    sae.metadata = ours.get("metadata", {})
    sae.summary = ours.get("summary", {})
    return sae


def _load_saelens(path: Path) -> HybridSAE:
    cfg_json = _read_json(path / "cfg.json")
    weights = load_file(str(path / SAELENS_WEIGHTS))
    norm = cfg_json.get("normalize_activations", "none") or "none"
    if norm != "none":
        raise SAEFormatError(f"{path}: normalize_activations={norm!r} is not supported; only 'none' "
                             "(fold the scaling into the weights first)")
    arch = cfg_json.get("architecture", "standard")
    mapping = {imported: name for name in archs.names(load_only=True) for imported in archs.get(name).saelens_imports}
    if arch not in mapping:
        raise SAEFormatError(f"{path}: SAELens architecture {arch!r} is not supported; allowed: "
                             f"{', '.join(mapping)}")
    w_enc = weights["W_enc"]
    d_in, width = w_enc.shape
    k = int(cfg_json.get("k") or 1)
    if archs.get(mapping[arch]).uses_k and "k" not in cfg_json:
        raise SAEFormatError(f"{path}: {arch} SAE without k in cfg.json")
    if archs.get(mapping[arch]).saelens_name == "jumprelu" and "threshold" not in weights:
        raise SAEFormatError(f"{path}: {arch} SAE without a threshold tensor")
    cfg = SAEConfig(arch=mapping[arch], d_in=d_in, width=width, k=min(k, width), rank=0)
    b_dec = weights["b_dec"]
    if not cfg_json.get("apply_b_dec_to_input", True):
        # encoder sees x, not x - b_dec: fold b_dec into b_enc
        weights["b_enc"] = weights["b_enc"] + b_dec @ w_enc
    sae = _build(cfg, w_enc, weights["W_dec"], weights["b_enc"], b_dec, weights.get("threshold"))
    sae.metadata = cfg_json.get("metadata", {})
    return sae


def _load_sparsify(path: Path) -> HybridSAE:
    cfg_json = _read_json(path / "cfg.json") if (path / "cfg.json").is_file() else {}
    weights = load_file(str(path / SPARSIFY_WEIGHTS))
    if "W_skip" in weights:
        raise SAEFormatError(f"{path}: sparsify SAEs with a skip connection are not supported")
    enc = weights["encoder.weight"]  # [m, d]
    width, d_in = enc.shape
    k = int(cfg_json.get("k", 32))
    cfg = SAEConfig(arch="topk", d_in=d_in, width=width, k=min(k, width), rank=0)
    sae = _build(cfg, enc.t(), weights["W_dec"], weights["encoder.bias"], weights["b_dec"])
    sae.metadata = {}
    return sae


def state_bytes(obj: object) -> bytes:
    """torch.save into bytes (for atomic checkpoint writes)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()
