"""The activation cache's on-disk format: the manifest, its identity keys and exclusion rules, and the
checksummed safetensors shards (writing, reading headers, verifying)."""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from scaffold_sae.faults import LOCK_NAME
from scaffold_sae.fetch import atomic_write_bytes


MANIFEST = "manifest.json"


FORMAT = "scaffold-sae-activation-cache"


VERSION = 1


DTYPES = {"float32": (torch.float32, "F32", np.float32), "float16": (torch.float16, "F16", np.float16)}


EXCLUSION_RULES = {
    "bos": "the BOS token (opens every context; also document separators when the tokenizer has no EOS)",
    "special": "other special tokens of the tokenizer (e.g. EOS document separators)",
    "sink": "attention sinks: residual norm > sink_factor x the lower median norm of the context's "
            "non-special positions",
}


IDENTITY_KEYS = ("model", "fingerprint", "layer", "ctx_len", "dtype", "corpus", "split", "seed", "sink_factor",
                 "n_tokens", "batch_size", "shard_rows", "bos_id")
"""Manifest fields that must match for a harvest to resume into an existing directory."""


class CacheError(RuntimeError):
    """An activation cache that cannot be written, resumed or read."""


@dataclass
class ShardRecord:
    """One complete shard, as listed in the manifest."""

    file: str
    rows: int
    bytes: int
    sha256: str
    contexts: tuple[int, int]
    """Half-open range of context indices (in the deterministic stream) whose kept rows it holds."""
    excluded: dict[str, int]
    """Positions of those contexts excluded, per reason."""
    surplus: int = 0
    """Kept rows of the last batch dropped because n_tokens was reached."""


def _add_shard(manifest: dict, record: ShardRecord) -> None:
    manifest["shards"].append(asdict(record))
    manifest["shards"][-1]["contexts"] = list(record.contexts)
    _recount(manifest)


def _recount(manifest: dict) -> None:
    shards = manifest["shards"]
    manifest["n_rows"] = sum(s["rows"] for s in shards)
    manifest["n_contexts"] = shards[-1]["contexts"][1] if shards else 0
    manifest["tokens_seen"] = manifest["n_contexts"] * manifest["ctx_len"]
    manifest["excluded"] = {r: sum(s["excluded"][r] for s in shards) for r in EXCLUSION_RULES}
    manifest["surplus"] = sum(s["surplus"] for s in shards)


def _drop_bad_shards(out: Path, manifest: dict) -> dict:
    """Keep the listed shards up to the first that fails verification; the harvest recomputes the rest."""
    for index, shard in enumerate(manifest["shards"]):
        try:
            verify_shard(out, shard, manifest, full=True)
        except CacheError as error:
            print(f"{error.args[0].split(':')[0]}: recomputing from shard {index}", file=sys.stderr)
            manifest["shards"] = manifest["shards"][:index]
            manifest["complete"] = manifest["corpus_exhausted"] = False
            _recount(manifest)
            break
    return manifest


def _is_cache_file(name: str) -> bool:
    return name in (MANIFEST, LOCK_NAME) or (name.startswith("shard_") and name.endswith(".safetensors")) or \
        (name.startswith(".") and ".tmp" in name)


def _remove_cache_files(out: Path, keep) -> None:
    for path in out.iterdir():
        if _is_cache_file(path.name) and path.name not in keep and path.name != LOCK_NAME and path.is_file():
            path.unlink()


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def write_shard(path: Path, activations: torch.Tensor, token_ids: torch.Tensor,
                positions: torch.Tensor | None = None) -> tuple[int, str]:
    """Write one shard atomically (temp file, fsync, rename, fsync dir); returns (bytes, sha256)."""
    data = encode_shard(activations, token_ids, positions)
    atomic_write_bytes(Path(path), data)
    return len(data), hashlib.sha256(data).hexdigest()


def encode_shard(activations: torch.Tensor, token_ids: torch.Tensor, positions: torch.Tensor | None = None) -> bytes:
    """The bytes of one shard file (safetensors; identical tensors give identical bytes)."""
    from safetensors.torch import save

    if positions is None:
        positions = torch.zeros(len(token_ids), dtype=torch.int32)
    return save({"activations": activations.contiguous(), "token_ids": token_ids.to(torch.int64).contiguous(),
                 "positions": positions.to(torch.int32).contiguous()})


def read_header(path: Path) -> tuple[dict, int]:
    """The safetensors JSON header of a file and the byte offset where its data starts."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise ValueError("shorter than a safetensors header")
        (length,) = struct.unpack("<Q", raw)
        if length > 100_000_000:
            raise ValueError("implausible header length")
        header = handle.read(length)
        if len(header) < length:
            raise ValueError("header cut short")
    return json.loads(header), 8 + length


def verify_shard(root: Path, shard: dict, manifest: dict, full: bool = True) -> None:
    """Size, header (names, shapes, dtypes) and, if `full`, sha256 and finiteness of one listed shard."""
    from scaffold_sae.cache.harvester import repair_command  # the harvest's flags; harvest imports this module

    path = root / shard["file"]
    fix = (f"rerun the harvest that made it with --repair to re-harvest only the bad shards: "
           f"`{repair_command(root, manifest)}`")
    if not path.is_file():
        raise CacheError(f"shard {shard['file']} of {root} is missing: {fix}")
    size = path.stat().st_size
    if size != shard["bytes"]:
        raise CacheError(f"shard {shard['file']} of {root} is truncated or altered ({size} bytes, manifest says "
                         f"{shard['bytes']}): {fix}")
    try:
        header, data_start = read_header(path)
        acts, tokens = header["activations"], header["token_ids"]
        if not isinstance(acts, dict) or not isinstance(tokens, dict):
            raise ValueError("tensor entries are not objects")
        begin, end = (int(offset) for offset in acts["data_offsets"])
    except (ValueError, KeyError, TypeError) as error:
        raise CacheError(f"shard {shard['file']} of {root} has a corrupt header ({error}): {fix}") from None
    rows, d, dtype = shard["rows"], manifest["d_model"], DTYPES[manifest["dtype"]][1]
    if acts.get("shape") != [rows, d] or acts.get("dtype") != dtype or tokens.get("shape") != [rows]:
        raise CacheError(f"shard {shard['file']} of {root} holds activations {acts.get('shape')} "
                         f"{acts.get('dtype')}, expected [{rows}, {d}] {dtype}: {fix}")
    if not full:
        return
    digest, finite = _hash_and_check(path, data_start + begin, data_start + end, DTYPES[manifest["dtype"]][2])
    if digest != shard["sha256"]:
        raise CacheError(f"shard {shard['file']} of {root} is corrupted (sha256 {digest[:12]}... != manifest "
                         f"{shard['sha256'][:12]}...): {fix}")
    if not finite:
        raise CacheError(f"shard {shard['file']} of {root} contains NaN or inf activations: {fix}")


def _hash_and_check(path: Path, begin: int, end: int, np_dtype, chunk: int = 1 << 23) -> tuple[str, bool]:
    """sha256 of the whole file and whether the bytes in [begin, end) are all finite, in one bounded pass."""
    digest, finite = hashlib.sha256(), True
    item = np.dtype(np_dtype).itemsize
    chunk -= chunk % item
    with open(path, "rb") as handle:
        digest.update(handle.read(begin))
        remaining = end - begin
        while remaining > 0:
            block = handle.read(min(chunk, remaining))
            if not block:
                break
            remaining -= len(block)
            digest.update(block)
            usable = len(block) - len(block) % item
            finite = finite and bool(np.isfinite(np.frombuffer(block[:usable], dtype=np_dtype)).all())
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest(), finite


def _read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    if not path.is_file():
        raise CacheError(f"{root} is not an activation cache (no {MANIFEST}); create one with `scaffold-sae harvest`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CacheError(f"{path} is unreadable ({error}); harvest again with --overwrite") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CacheError(f"{path} is not a scaffold-sae activation cache manifest; use another directory")
    if manifest.get("version") != VERSION:
        raise CacheError(f"{root} is a version {manifest.get('version')} cache; this scaffold-sae reads version "
                         f"{VERSION}: harvest again with --overwrite")
    return manifest


def describe(manifest: dict) -> str:
    return (f"{manifest.get('model')} layer {manifest.get('layer')}, ctx {manifest.get('ctx_len')}, "
            f"{manifest.get('dtype')}, corpus {manifest.get('corpus')!r} ({manifest.get('split')})")
