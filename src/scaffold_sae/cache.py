"""On-disk activation cache: harvest one layer's residual stream into verified shards, stream shuffled batches.

Layout of a cache directory::

    manifest.json              what was harvested, how, what was excluded, and every complete shard
    shard_00000.safetensors    "activations" [n, d] (float32|float16), "token_ids" [n] int64, "positions" [n] int32
    ...

A shard counts only once the manifest lists it: the shard file is written to a temp file, fsynced and renamed,
then the manifest is rewritten the same way. Contexts are a deterministic function of (corpus, split, seed,
ctx_len), and shards end on batch boundaries, so an interrupted harvest resumes by skipping the contexts its
listed shards cover: nothing is lost or duplicated, and the result is bit-identical to an uninterrupted run.

Rows kept: every position except (counted per reason in the manifest)
  - ``bos``: the BOS token (position 0 of every context, and document separators when BOS doubles as one);
  - ``special``: any other special token of the tokenizer (e.g. EOS document separators);
  - ``sink``: attention-sink tokens, whose residual norm exceeds ``sink_factor`` x the (lower) median norm of
    the non-special positions of the same context.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shlex
import shutil
import struct
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from scaffold_sae.corpus import iter_contexts, load_corpus, resolve_bos
from scaffold_sae.devices import auto_lm_batch, lm_dtype, resolve_device
from scaffold_sae import distributed, faults
from scaffold_sae.comm import Communicator
from scaffold_sae.faults import LOCK_NAME, OutputLock, check_space
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
class HarvestConfig:
    """What to harvest; every field is recorded in the manifest."""

    layer: int
    """Block whose output residual stream is cached (0-based)."""
    corpus: str = "news"
    """Corpus spec (see scaffold_sae.corpus): 'news' (embedded), a .txt/.jsonl/.parquet file or folder (append
    #FIELD for another text field), or hf:name[:config][:split]."""
    n_tokens: int = 1_000_000
    """Rows to keep (excluded positions do not count)."""
    ctx_len: int = 256
    """Tokens per context, BOS included."""
    batch_size: int = 8
    """Contexts per forward pass (`scaffold-sae harvest`: 0 = as many as fit in free GPU memory, 8 on the CPU)."""
    split: str = "train"
    """Document split: 'train' or 'heldout' (a stable 10% of documents training never sees)."""
    dtype: str = "float32"
    """Storage dtype of the activations: 'float32' or 'float16'. Reading always yields float32."""
    shard_rows: int = 32_768
    """A shard is written once this many rows are buffered (shards end on batch boundaries, so may hold more)."""
    sink_factor: float = 10.0
    """Exclude positions whose norm exceeds this multiple of their context's median norm; 0 disables."""
    seed: int = 0
    """Seed of the document order."""
    slice_rank: int = 0
    """Distributed harvest: this slice's index (see harvest_slices)."""
    slice_count: int = 1
    """Distributed harvest: number of slices; slice r takes the batches of contexts numbered r mod slice_count."""


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


# --------------------------------------------------------------------------------------------------- harvest


def harvest(model, layer: int, corpus_spec: str, n_tokens: int, out_dir, ctx_len: int = 256, batch_size: int = 8,
            split: str = "train", dtype: str = "float32", shard_rows: int = 32_768, sink_factor: float = 10.0,
            seed: int = 0, overwrite: bool = False, progress: bool = True,
            repair: bool = False) -> "ActivationCache":
    """Cache the residual stream after block `layer` of `model` on `n_tokens` kept tokens of a corpus.

    Resumes an interrupted harvest of the same settings in `out_dir`; returns the opened (verified) cache.
    `repair` first re-harvests only the listed shards that are missing or fail their checksum (see
    Harvester.repair).
    """
    cfg = HarvestConfig(layer=layer, corpus=corpus_spec, n_tokens=n_tokens, ctx_len=ctx_len, batch_size=batch_size,
                        split=split, dtype=dtype, shard_rows=shard_rows, sink_factor=sink_factor, seed=seed)
    return Harvester(model, cfg, Path(out_dir)).run(overwrite=overwrite, progress=progress, repair=repair)


class Harvester:
    """Runs one harvest: prepares the directory, streams contexts through the model, writes shards."""

    def __init__(self, model, cfg: HarvestConfig, out_dir: Path):
        if cfg.dtype not in DTYPES:
            raise CacheError(f"unknown dtype {cfg.dtype!r}: use float32 or float16")
        if cfg.n_tokens < 1 or cfg.batch_size < 1 or cfg.shard_rows < 1:
            raise CacheError("n_tokens, batch_size and shard_rows must be positive")
        model.check_layer(cfg.layer)
        self.model, self.cfg, self.out = model, cfg, out_dir
        self.bos = resolve_bos(model.tokenizer, model.bos_token_id)
        self.special = torch.tensor(sorted(model.special_token_ids - {self.bos}), dtype=torch.long)

    def identity(self) -> dict:
        cfg = self.cfg
        return {"model": self.model.spec, "fingerprint": self.model.fingerprint, "layer": cfg.layer,
                "ctx_len": cfg.ctx_len, "dtype": cfg.dtype, "corpus": cfg.corpus, "split": cfg.split,
                "seed": cfg.seed, "sink_factor": float(cfg.sink_factor), "n_tokens": cfg.n_tokens,
                "batch_size": cfg.batch_size, "shard_rows": cfg.shard_rows, "bos_id": self.bos,
                **({"slice": [cfg.slice_rank, cfg.slice_count]} if cfg.slice_count > 1 else {})}

    def run(self, overwrite: bool = False, progress: bool = True, repair: bool = False) -> "ActivationCache":
        if self.out.exists() and not self.out.is_dir():
            raise CacheError(f"{self.out} is a file, not a directory; use another --out")
        created = not self.out.exists()
        try:
            with OutputLock(self.out, "harvest"):
                return self._run(overwrite, progress, repair)
        except BaseException:
            if created and self.out.is_dir() and [p.name for p in self.out.iterdir()] == [LOCK_NAME]:
                shutil.rmtree(self.out, ignore_errors=True)  # nothing worth resuming: leave nothing behind
            raise

    def _run(self, overwrite: bool, progress: bool, repair: bool) -> "ActivationCache":
        if repair:
            if overwrite:
                raise CacheError("--repair keeps the good shards and --overwrite discards them: pass one of them")
            if self.repair()["complete"]:
                return ActivationCache.open(self.out, verify="fast")  # every shard was just verified
        existing = None if overwrite else self._existing()
        if existing is not None and existing["complete"]:
            try:
                return ActivationCache.open(self.out)
            except CacheError:
                pass  # a damaged shard: recompute from there on
        corpus = load_corpus(self.cfg.corpus)
        check_space(self.out, self._bytes_still_needed(existing or {"n_rows": 0, "complete": False}), CacheError)
        manifest = self._start(existing, overwrite)
        contexts = iter_contexts(self.model.tokenizer, corpus, self.cfg.ctx_len, self.cfg.split, self.cfg.seed,
                                 self.bos)
        contexts = slice_contexts(contexts, self.cfg.batch_size, self.cfg.slice_rank, self.cfg.slice_count)
        contexts = itertools.islice(contexts, manifest["n_contexts"], None)
        bar = _progress(self.cfg.n_tokens, manifest["n_rows"], f"harvest L{self.cfg.layer}", progress)
        try:
            self._loop(manifest, contexts, bar)
        except BaseException:
            if not manifest["shards"]:  # nothing worth resuming: leave nothing behind
                (self.out / MANIFEST).unlink(missing_ok=True)
            raise
        finally:
            bar.close()
        return ActivationCache.open(self.out, verify="fast")

    def _loop(self, manifest: dict, contexts: Iterator[list[int]], bar) -> None:
        cfg = self.cfg
        rows_done = manifest["n_rows"]
        buffer: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        buffered, start, end = 0, manifest["n_contexts"], manifest["n_contexts"]
        excluded = {reason: 0 for reason in EXCLUSION_RULES}
        while True:
            batch = list(itertools.islice(contexts, cfg.batch_size))
            exhausted = len(batch) < cfg.batch_size
            if batch:
                ids = torch.tensor(batch, dtype=torch.long)
                acts, tokens, positions, counts = self._kept_rows(ids)
                buffer.append((acts, tokens, positions))
                buffered += len(tokens)
                end += len(batch)
                for reason, count in counts.items():
                    excluded[reason] += count
                bar.update(min(len(tokens), max(0, cfg.n_tokens - bar.n)))
            finished = exhausted or rows_done + buffered >= cfg.n_tokens
            if buffered >= cfg.shard_rows or (finished and buffered):
                surplus = max(0, rows_done + buffered - cfg.n_tokens)
                record = self._write_shard(len(manifest["shards"]), buffer, buffered - surplus, (start, end),
                                           excluded, surplus)
                _add_shard(manifest, record)
                if finished:
                    manifest["complete"] = True
                    manifest["corpus_exhausted"] = rows_done + buffered < cfg.n_tokens
                self._save_manifest(manifest, during=record.file)
                faults.progress("shard", len(manifest["shards"]))
                rows_done += record.rows
                buffer, buffered, start = [], 0, end
                excluded = {reason: 0 for reason in EXCLUSION_RULES}
            if finished:
                break
        if not manifest["shards"]:
            raise CacheError(f"corpus {cfg.corpus!r} ({cfg.split} split) gave no rows to keep at ctx_len "
                             f"{cfg.ctx_len}; use a larger corpus or a smaller --ctx-len")
        if not manifest["complete"]:  # the corpus ran out right after a shard was written
            manifest["complete"], manifest["corpus_exhausted"] = True, manifest["n_rows"] < cfg.n_tokens
            self._save_manifest(manifest)
        if manifest["corpus_exhausted"]:
            print(f"warning: corpus {cfg.corpus!r} ran out after {manifest['n_rows']} of {cfg.n_tokens} rows",
                  file=sys.stderr)

    def _kept_rows(self, ids: torch.Tensor):
        resid = self.model.residual(ids, self.cfg.layer).detach().to("cpu", torch.float32)
        keep, counts = keep_mask(resid, ids, self.bos, self.special, self.cfg.sink_factor)
        acts = resid[keep]
        if not torch.isfinite(acts).all():
            raise CacheError(f"{self.model.spec} produced NaN/inf activations at layer {self.cfg.layer}; "
                             f"check the model weights and dtype")
        stored = acts.to(DTYPES[self.cfg.dtype][0])
        if not torch.isfinite(stored).all():
            raise CacheError(f"activations at layer {self.cfg.layer} overflow {self.cfg.dtype} "
                             f"(max |x| = {acts.abs().max().item():.4g}); harvest with --dtype float32")
        positions = torch.arange(ids.shape[1], dtype=torch.int32).expand_as(ids)[keep]
        return stored, ids[keep], positions, counts

    def _write_shard(self, index: int, buffer, rows: int, contexts: tuple[int, int], excluded: dict,
                     surplus: int) -> ShardRecord:
        acts = torch.cat([b[0] for b in buffer])[:rows].contiguous()
        tokens = torch.cat([b[1] for b in buffer])[:rows].contiguous()
        positions = torch.cat([b[2] for b in buffer])[:rows].contiguous()
        name = shard_name(index)
        try:
            size, digest = write_shard(self.out / name, acts, tokens, positions)
        except OSError as error:
            raise self._write_error(error, name) from None
        return ShardRecord(name, rows, size, digest, contexts, dict(excluded), surplus)

    def _save_manifest(self, manifest: dict, during: str | None = None) -> None:
        try:
            atomic_write_bytes(self.out / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
        except OSError as error:
            if during:
                (self.out / during).unlink(missing_ok=True)  # the shard is not listed, so not part of the cache
            raise self._write_error(error, MANIFEST) from None

    def _write_error(self, error: OSError, name: str) -> CacheError:
        if faults.is_disk_full(error):
            need = self._bytes_still_needed(_read_manifest(self.out)) if (self.out / MANIFEST).exists() else None
            return faults.disk_full_error(self.out / name, need, CacheError)
        return CacheError(f"{error.strerror or error} while writing {name} in {self.out}: the shards already "
                          "listed stay valid; fix the cause and rerun the same command to resume")

    def _bytes_still_needed(self, manifest: dict) -> int:
        """Disk space the rest of this harvest needs: the rows to go, plus one shard's temp file."""
        row = self.model.d_model * DTYPES[self.cfg.dtype][0].itemsize + 8 + 4  # activations, token id, position
        rows = max(0, self.cfg.n_tokens - manifest["n_rows"]) if not manifest["complete"] else 0
        return (rows + min(rows, self.cfg.shard_rows)) * row

    def _existing(self) -> dict | None:
        """The manifest of an earlier run of this same harvest in `out_dir`, or None; refuses other contents."""
        out, identity = self.out, self.identity()
        if out.exists() and not out.is_dir():
            raise CacheError(f"{out} is a file, not a directory; use another --out")
        if not out.exists():
            return None
        if not (out / MANIFEST).exists():
            foreign = [p.name for p in out.iterdir() if not _is_cache_file(p.name)]
            if foreign:
                raise CacheError(f"{out} is not empty and holds no activation cache ({foreign[0]}, ...); "
                                 f"use another --out")
            return None
        old = _read_manifest(out)
        mismatched = [key for key in IDENTITY_KEYS if old.get(key) != identity[key]]
        if mismatched:
            key = mismatched[0]
            raise CacheError(f"{out} holds a cache of {describe(old)} ({key} {old.get(key)!r}, not "
                             f"{identity[key]!r}); use another --out or pass --overwrite")
        return old

    def _start(self, existing: dict | None, overwrite: bool) -> dict:
        """Resume `existing` (dropping shards from the first damaged one on) or start a fresh manifest."""
        out = self.out
        out.mkdir(parents=True, exist_ok=True)
        if existing is not None:
            manifest = _drop_bad_shards(out, existing)
            _remove_cache_files(out, keep={s["file"] for s in manifest["shards"]} | {MANIFEST})
            if manifest["shards"]:
                print(f"resuming {out}: {len(manifest['shards'])} complete shards, {manifest['n_rows']} rows",
                      file=sys.stderr)
            return manifest
        _remove_cache_files(out, keep=())
        manifest = {"format": FORMAT, "version": VERSION, **self.identity(), "n_layers": self.model.n_layers,
                    "d_model": self.model.d_model, "heldout_rule": "sha256(document)[:8] < 10% of 2**64",
                    "exclusion_rules": EXCLUSION_RULES, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "complete": False, "corpus_exhausted": False, "n_rows": 0, "n_contexts": 0,
                    "tokens_seen": 0, "excluded": {reason: 0 for reason in EXCLUSION_RULES}, "surplus": 0,
                    "shards": []}
        self._save_manifest(manifest)
        return manifest

    def repair(self) -> dict:
        """Verify every listed shard and re-harvest only those missing or corrupted, each atomically and
        bit-identical to the original (its contexts are a deterministic range of the context stream).

        Good shards are neither read by the model nor rewritten. Prints what it repaired (or that nothing
        needed it) and returns the manifest.
        """
        manifest = self._existing()
        if manifest is None:
            raise CacheError(f"{self.out} holds no activation cache to repair: drop --repair to harvest one")
        bad = []
        for shard in manifest["shards"]:
            try:
                verify_shard(self.out, shard, manifest, full=True)
            except CacheError as error:
                bad.append(shard)
                print(error.args[0].split(":")[0], file=sys.stderr)
        if not bad:
            print(f"nothing to repair: all {len(manifest['shards'])} shards of {self.out} verified",
                  file=sys.stderr)
            return manifest
        corpus = load_corpus(self.cfg.corpus)
        for shard in bad:
            self._reharvest(corpus, manifest, shard)
            first, last = shard["contexts"]
            print(f"repaired {shard['file']} (contexts {first}..{last - 1}, {shard['rows']} rows)", file=sys.stderr)
        return manifest

    def _reharvest(self, corpus, manifest: dict, shard: dict) -> None:
        """Recompute one listed shard from its context range; writes it only if it matches the manifest."""
        cfg = self.cfg
        rank, count = ((shard["slice"], manifest["slices"]["world_size"]) if "slice" in shard
                       else (cfg.slice_rank, cfg.slice_count))
        contexts = iter_contexts(self.model.tokenizer, corpus, cfg.ctx_len, cfg.split, cfg.seed, self.bos)
        first, last = shard["contexts"]
        contexts = itertools.islice(slice_contexts(contexts, cfg.batch_size, rank, count), first, last)
        buffer = []
        while batch := list(itertools.islice(contexts, cfg.batch_size)):  # the harvest's own batches
            buffer.append(self._kept_rows(torch.tensor(batch, dtype=torch.long))[:3])
        parts = [torch.cat([b[i] for b in buffer])[:shard["rows"]] for i in range(3)] if buffer else []
        data = encode_shard(*parts) if parts else b""
        digest = hashlib.sha256(data).hexdigest()
        if digest != shard["sha256"]:
            raise CacheError(f"re-harvesting shard {shard['file']} of {self.out} gave different bytes than the "
                             f"original (sha256 {digest[:12]}... != manifest {shard['sha256'][:12]}...): the "
                             f"corpus, the model dtype or the device differ from the original harvest; rerun "
                             f"--repair with the original --device and --lm-dtype, or harvest again with --overwrite")
        try:
            atomic_write_bytes(self.out / shard["file"], data)
        except OSError as error:
            raise self._write_error(error, shard["file"]) from None


def repair_command(root: Path, manifest: dict) -> str:
    """The `scaffold-sae harvest ... --repair` command line that re-harvests the bad shards of a cache."""
    d = HarvestConfig(layer=0)
    flags = [("--model", manifest.get("model")), ("--layer", manifest.get("layer")),
             ("--corpus", manifest.get("corpus")), ("--tokens", manifest.get("n_tokens")), ("--out", root)]
    optional = [("--ctx-len", "ctx_len", d.ctx_len), ("--batch-size", "batch_size", d.batch_size),
                ("--dtype", "dtype", d.dtype), ("--split", "split", d.split),
                ("--sink-factor", "sink_factor", d.sink_factor), ("--shard-rows", "shard_rows", d.shard_rows),
                ("--seed", "seed", d.seed)]
    flags += [(flag, manifest[key]) for flag, key, default in optional if manifest.get(key, default) != default]
    return " ".join(["scaffold-sae harvest", *(f"{flag} {shlex.quote(str(value))}" for flag, value in flags),
                     "--repair"])


def slice_contexts(contexts: Iterator[list[int]], batch_size: int, rank: int, count: int) -> Iterator[list[int]]:
    """The contexts of slice `rank` of `count`: those whose batch index (batch_size per batch) is rank mod count."""
    if count == 1:
        return contexts
    if not 0 <= rank < count:
        raise CacheError(f"slice {rank} of {count} is invalid: use 0..{count - 1}")
    return (ctx for index, ctx in enumerate(contexts) if (index // batch_size) % count == rank)


def keep_mask(resid: torch.Tensor, ids: torch.Tensor, bos_id: int, special_ids: torch.Tensor,
              sink_factor: float) -> tuple[torch.Tensor, dict[str, int]]:
    """Which positions of [B, T] to keep, and how many were excluded per reason (see EXCLUSION_RULES)."""
    bos = ids == bos_id
    special = torch.isin(ids, special_ids) & ~bos
    ordinary = ~(bos | special)
    if sink_factor and sink_factor > 0:
        norms = resid.float().norm(dim=-1)
        median = norms.masked_fill(~ordinary, float("nan")).nanmedian(dim=1).values
        sink = ordinary & (norms > sink_factor * median[:, None])
    else:
        sink = torch.zeros_like(bos)
    keep = ordinary & ~sink
    return keep, {"bos": int(bos.sum()), "special": int(special.sum()), "sink": int(sink.sum())}


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


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="tok", unit_scale=True, disable=not enabled,
                smoothing=0.1, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------- shard files


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


# ------------------------------------------------------------------------------------------------- reading


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


class ActivationCache:
    """A verified, complete activation cache on disk; all reads return float32.

    `row_limits` (see :meth:`hold_out`) makes a view that reads only the first row_limits[i] rows of shard i."""

    def __init__(self, root: Path, manifest: dict, row_limits: list[int] | None = None):
        self.root = Path(root)
        self.manifest = manifest
        self.row_limits = row_limits

    @classmethod
    def open(cls, path, verify: str = "full", allow_incomplete: bool = False) -> "ActivationCache":
        """Open and verify a cache. verify='full' (default) checks sha256 and finiteness of every shard;
        'fast' checks sizes and headers only; 'none' trusts the manifest."""
        if verify not in ("full", "fast", "none"):
            raise CacheError(f"unknown verify mode {verify!r}: use full, fast or none")
        root = Path(path)
        manifest = _read_manifest(root)
        if not manifest.get("complete") and not allow_incomplete:
            raise CacheError(f"{root} is an unfinished harvest ({manifest['n_rows']} of {manifest['n_tokens']} "
                             f"rows): rerun the same harvest command to resume it")
        if verify != "none":
            for shard in manifest["shards"]:
                verify_shard(root, shard, manifest, full=verify == "full")
        if not manifest["shards"]:
            raise CacheError(f"{root} holds no shards yet: rerun the same harvest command to resume it")
        return cls(root, manifest)

    @property
    def d_model(self) -> int:
        return int(self.manifest["d_model"])

    @property
    def n_rows(self) -> int:
        return int(self.manifest["n_rows"]) if self.row_limits is None else sum(self.row_limits)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.manifest["dtype"]][0]

    @property
    def layer(self) -> int:
        return int(self.manifest["layer"])

    @property
    def shard_rows(self) -> list[int]:
        if self.row_limits is not None:
            return list(self.row_limits)
        return [s["rows"] for s in self.manifest["shards"]]

    def _shard_path(self, index: int) -> Path:
        return self.root / self.manifest["shards"][index]["file"]

    def _read(self, index: int, name: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self._shard_path(index)), framework="pt") as handle:
            if self.row_limits is None:
                return handle.get_tensor(name)
            return handle.get_slice(name)[:self.row_limits[index]]

    def hold_out(self, n: int) -> tuple["ActivationCache", torch.Tensor]:
        """(this cache without its last `n` rows, those rows as float32 [n, d]).

        The rows come from the end of the last shard (and the shards before it when n is larger), i.e. the last
        contexts harvested: rows of the training split that the returned view never reads (batches, sample), not
        held-out documents."""
        if not 0 < n < self.n_rows:
            raise CacheError(f"cannot hold out {n} of the {self.n_rows} rows of {self.root}: ask for "
                             f"1..{self.n_rows - 1} (lower heldout_tokens or harvest more tokens)")
        rows = self.shard_rows
        kept, left = list(rows), n
        for index in reversed(range(len(kept))):
            take = min(left, kept[index])
            kept[index] -= take
            left -= take
        tail = torch.cat([self._read(i, "activations")[kept[i]:].float()
                          for i in range(len(rows)) if kept[i] < rows[i]])
        return ActivationCache(self.root, self.manifest, kept), tail

    def iter_shards(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(activations float32 [n, d], token_ids [n]) per shard, in harvest order."""
        for index in range(len(self.shard_rows)):
            yield self._read(index, "activations").float(), self._read(index, "token_ids")

    def token_ids(self) -> torch.Tensor:
        return torch.cat([self._read(i, "token_ids") for i in range(len(self.shard_rows))])

    def positions(self) -> torch.Tensor:
        return torch.cat([self._read(i, "positions") for i in range(len(self.shard_rows))])

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """`n` distinct rows chosen uniformly at random (float32 [n, d]); reads one shard at a time."""
        if not 0 < n <= self.n_rows:
            raise CacheError(f"cannot sample {n} rows from a cache of {self.n_rows}; ask for 1..{self.n_rows}")
        chosen = np.random.default_rng(seed).choice(self.n_rows, size=n, replace=False)
        out = torch.empty(n, self.d_model, dtype=torch.float32)
        bounds = np.cumsum([0, *self.shard_rows])
        for index in range(len(self.shard_rows)):
            where = np.nonzero((chosen >= bounds[index]) & (chosen < bounds[index + 1]))[0]
            if len(where):
                acts = self._read(index, "activations")
                out[torch.from_numpy(where)] = acts[torch.from_numpy(chosen[where] - bounds[index])].float()
        return out

    def batches(self, batch_size: int, seed: int = 0, skip: int = 0, rank: int = 0, world_size: int = 1,
                memory_mb: int = 512) -> Iterator[torch.Tensor]:
        """Endless shuffled float32 batches [batch_size, d] with memory bounded by about `memory_mb`.

        Per epoch, shard order is permuted by (seed, epoch); consecutive shards are grouped into windows of
        about `memory_mb` of float32; each window's rows are permuted and cut into batches, and global batch g
        goes to rank g % world_size. Each window drops its last (rows mod batch_size*world_size) rows, different
        ones each epoch. `skip` (in this rank's batches) passes over whole windows without reading them.
        """
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or skip < 0:
            raise CacheError(f"bad reader arguments: batch_size={batch_size}, rank={rank}, "
                             f"world_size={world_size}, skip={skip}")
        stride = batch_size * world_size
        if self.n_rows < stride:
            raise CacheError(f"cache {self.root} has {self.n_rows} rows, fewer than one step of "
                             f"{batch_size} x {world_size}; use a smaller batch or harvest more tokens")
        window_rows = max(stride, memory_mb * 2**20 // (4 * self.d_model))
        rows = self.shard_rows
        for epoch in itertools.count():
            order = np.random.default_rng([seed, epoch, 0]).permutation(len(rows))
            yielded = False
            for number, window in enumerate(_windows(order, rows, window_rows)):
                total = sum(rows[i] for i in window)
                per_rank = total // stride
                yielded = yielded or per_rank > 0
                if skip >= per_rank:
                    skip -= per_rank
                    continue
                data = self._load_window(window, total)
                perm = torch.from_numpy(np.random.default_rng([seed, epoch, 1, number]).permutation(total))
                for local in range(skip, per_rank):
                    first = (local * world_size + rank) * batch_size
                    yield data[perm[first:first + batch_size]]
                skip = 0
                del data, perm
            if not yielded:
                raise CacheError(f"no shard window of {self.root} fills one step of {batch_size} x {world_size} "
                                 f"rows; raise memory_mb or use a smaller batch")

    def _load_window(self, window: list[int], total: int) -> torch.Tensor:
        data = torch.empty(total, self.d_model, dtype=torch.float32)
        offset = 0
        for index in window:
            acts = self._read(index, "activations")
            data[offset:offset + len(acts)] = acts
            offset += len(acts)
            del acts
        return data

    def summary(self) -> str:
        m = self.manifest
        size = sum(s["bytes"] for s in m["shards"])
        excluded = ", ".join(f"{reason} {count}" for reason, count in m["excluded"].items())
        lines = [
            f"activation cache {self.root}",
            f"  model      {m['model']} (weights {m['fingerprint']}), layer {m['layer']} of {m['n_layers']}, "
            f"d_model {m['d_model']}",
            f"  corpus     {m['corpus']!r}, split {m['split']}, seed {m['seed']}, ctx_len {m['ctx_len']}",
            f"  rows       {m['n_rows']:,} {m['dtype']} in {len(m['shards'])} shards ({size / 2**20:.1f} MiB)"
            + ("" if m["complete"] else f" — unfinished, {m['n_tokens']:,} asked"),
            f"  contexts   {m['n_contexts']:,} ({m['tokens_seen']:,} tokens seen)",
            f"  excluded   {excluded} (sink_factor {m['sink_factor']}); {m['surplus']} surplus rows dropped",
        ]
        if m.get("corpus_exhausted"):
            lines.append(f"  note       the corpus ran out before {m['n_tokens']:,} rows")
        return "\n".join(lines)


def _windows(order, rows: list[int], window_rows: int) -> Iterator[list[int]]:
    window, total = [], 0
    for index in order:
        window.append(int(index))
        total += rows[index]
        if total >= window_rows:
            yield window
            window, total = [], 0
    if window:
        yield window


# -------------------------------------------------------------------------------------------- sliced harvest


def slice_dir(out_dir: Path, rank: int, world_size: int) -> Path:
    return Path(out_dir) / f".slice_{rank:03d}_of_{world_size:03d}"


def slice_quota(n_tokens: int, rank: int, world_size: int) -> int:
    """Rows slice ``rank`` harvests: an equal share, the first n_tokens % W slices one more."""
    return n_tokens // world_size + (1 if rank < n_tokens % world_size else 0)


def harvest_slices(model, cfg: HarvestConfig, out_dir, comm: Communicator | None = None, world_size: int | None = None,
                   progress: bool = True) -> ActivationCache:
    """Harvest ``cfg`` as ``world_size`` slices into ``out_dir``.

    Slice r of W holds the contexts whose batch index is r mod W, up to its share of the rows, in
    ``out/.slice_RRR_of_WWW`` (a complete, resumable cache of its own); the slices' shards are then
    linked, in slice order, into ``out`` under global shard names with one manifest recording the
    slices.  With ``comm`` each rank harvests its own slice (world_size = comm.world_size) and rank 0
    merges; without it this process harvests every slice in turn, giving the same files.  Returns the
    opened cache.
    """
    out = Path(out_dir)
    n = comm.world_size if comm is not None else int(world_size or 1)
    if n < 1:
        raise CacheError(f"world_size={n} is invalid: use a positive number of slices")
    if cfg.n_tokens < n:
        raise CacheError(f"n_tokens={cfg.n_tokens} is fewer than the {n} slices: harvest more tokens")
    if (out / MANIFEST).exists():
        old = _read_manifest(out)
        if old.get("complete") and (old.get("slices") or {}).get("world_size") == n:
            return ActivationCache.open(out, verify="full" if comm is None or comm.rank == 0 else "fast")
        if not old.get("slices"):
            raise CacheError(f"{out} already holds an activation cache harvested without slices; use another --out")
    ranks = [comm.rank] if comm is not None else list(range(n))
    for rank in ranks:
        sub = replace(cfg, n_tokens=slice_quota(cfg.n_tokens, rank, n), slice_rank=rank, slice_count=n)
        Harvester(model, sub, slice_dir(out, rank, n)).run(progress=progress and rank == 0)
    if comm is not None:
        comm.barrier()  # every slice is complete before rank 0 merges them
        comm.on_rank0(lambda: merge_slices(out, cfg.n_tokens, n), "merging the harvest slices")
    else:
        merge_slices(out, cfg.n_tokens, n)
    return ActivationCache.open(out, verify="fast")


def merge_slices(out_dir: Path, n_tokens: int, world_size: int) -> dict:
    """Link the complete slice caches' shards into ``out_dir`` in rank order and write its manifest."""
    out = Path(out_dir)
    subs = []
    for rank in range(world_size):
        manifest = _read_manifest(slice_dir(out, rank, world_size))
        if not manifest.get("complete"):
            raise CacheError(f"slice {rank} of {out} is unfinished: rerun the same harvest to resume it")
        subs.append(manifest)
    shards, slices = [], []
    for rank, manifest in enumerate(subs):
        first = len(shards)
        for shard in manifest["shards"]:
            name = shard_name(len(shards))
            src, dst = slice_dir(out, rank, world_size) / shard["file"], out / name
            dst.unlink(missing_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
            shards.append({**shard, "file": name, "slice": rank})
        slices.append({"rank": rank, "n_tokens": manifest["n_tokens"], "n_rows": manifest["n_rows"],
                       "n_contexts": manifest["n_contexts"], "shards": [first, len(shards)],
                       "corpus_exhausted": manifest["corpus_exhausted"]})
    merged = {key: value for key, value in subs[0].items() if key != "slice"}
    merged.update({
        "n_tokens": n_tokens, "shards": shards, "complete": True,
        "corpus_exhausted": any(m["corpus_exhausted"] for m in subs),
        "n_rows": sum(m["n_rows"] for m in subs), "n_contexts": sum(m["n_contexts"] for m in subs),
        "tokens_seen": sum(m["tokens_seen"] for m in subs),
        "excluded": {r: sum(m["excluded"][r] for m in subs) for r in EXCLUSION_RULES},
        "surplus": sum(m["surplus"] for m in subs),
        "slices": {"world_size": world_size,
                   "rule": "slice r holds the contexts whose batch index (batch_size contexts per batch, in "
                           "the deterministic context stream) is r mod world_size, up to its n_tokens rows; "
                           "shards are listed in slice order",
                   "ranks": slices},
    })
    atomic_write_bytes(out / MANIFEST, (json.dumps(merged, indent=1) + "\n").encode())
    for rank in range(world_size):
        shutil.rmtree(slice_dir(out, rank, world_size), ignore_errors=True)
    return merged


# --------------------------------------------------------------------------------------------------- commands


@dataclass
class HarvestRun:
    """How `scaffold-sae harvest` runs, beside the HarvestConfig fields."""

    model: str
    """Language model: smollm2-135m | gemma3-270m | HF hub id | local dir | file.gguf."""
    out: str
    """Cache directory."""
    device: str = "cpu"
    """torch device for the model: cpu | cuda | cuda:N | auto."""
    lm_dtype: str = "auto"
    """Model weights dtype: auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16."""
    overwrite: bool = False
    """Replace a cache of other settings in --out."""
    repair: bool = False
    """Verify every shard of the cache in --out and re-harvest only the missing or corrupted ones, bit-identical
    (pass the flags of the original harvest)."""


def harvest_with(cfg: HarvestConfig, run: HarvestRun, progress: bool = True) -> "ActivationCache":
    """`scaffold-sae harvest` in this one process: load ``run.model`` and harvest ``cfg`` into ``run.out``."""
    from scaffold_sae.corpus import SPLITS
    from scaffold_sae.models import load_model

    for name, value, allowed in (("dtype", cfg.dtype, tuple(DTYPES)), ("split", cfg.split, SPLITS)):
        if value not in allowed:  # before the model loads
            raise CacheError(f"{name}={value!r} is invalid: allowed values are {', '.join(allowed)}")
    for flag, value, least in (("--tokens", cfg.n_tokens, 1), ("--batch-size", cfg.batch_size, 0),
                               ("--shard-rows", cfg.shard_rows, 1), ("--ctx-len", cfg.ctx_len, 2), ("--layer", cfg.layer, 0)):
        if value < least:
            raise CacheError(f"{flag} {value} is invalid: use at least {least}")
    if Path(run.out).is_file():
        raise CacheError(f"{run.out} is a file, not a directory; use another --out")
    load_corpus(cfg.corpus)  # a missing or binary corpus fails before the model loads
    device = resolve_device(run.device)
    model = load_model(run.model, device=device, dtype=lm_dtype(run.lm_dtype, device))
    batch_size = cfg.batch_size or auto_lm_batch(model, cfg.layer, cfg.ctx_len)  # 0: as many as fit
    return harvest(model, cfg.layer, cfg.corpus, cfg.n_tokens, run.out, ctx_len=cfg.ctx_len, batch_size=batch_size,
                   split=cfg.split, dtype=cfg.dtype, shard_rows=cfg.shard_rows, sink_factor=cfg.sink_factor,
                   seed=cfg.seed, overwrite=run.overwrite, progress=progress, repair=run.repair)


@dataclass
class CacheInfoConfig:
    """`scaffold-sae cache-info DIR`."""

    path: str
    """Cache directory."""
    verify: str = "full"
    """How much to check: full (sizes, headers, sha256 and finiteness of every shard) | fast (sizes and headers)
    | none."""


def cache_info(cfg: CacheInfoConfig) -> str:
    """Verify a cache (complete or not) and return its summary."""
    return ActivationCache.open(cfg.path, verify=cfg.verify, allow_incomplete=True).summary()


def harvest_ranked(cfg: HarvestConfig, run: HarvestRun) -> None:
    """The body of ``scaffold-sae harvest`` on one torchrun rank: this rank's slice, then rank 0 merges."""
    from scaffold_sae.models import load_model

    if run.repair:
        raise CacheError("run `scaffold-sae harvest --repair` as one process, not under torchrun: it re-harvests "
                         "only the bad shards")
    comm = distributed.init_from_env(run.device or "auto")
    try:
        model = load_model(run.model, device=comm.device, dtype=lm_dtype(run.lm_dtype, comm.device))
        if cfg.batch_size == 0:  # every rank must use the same batch (it defines the slices)
            cfg = replace(cfg, batch_size=comm.min_int(auto_lm_batch(model, cfg.layer, cfg.ctx_len)))
        cache = harvest_slices(model, cfg, run.out, comm=comm)
        if comm.rank == 0:
            print(cache.summary())
    except BaseException:
        distributed.shutdown(sync=False)
        raise
    distributed.shutdown()
