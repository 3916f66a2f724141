"""Harvesting one layer's residual stream into a cache: `harvest`, the resumable `Harvester` with its repair, the
rows kept (`keep_mask`), and `scaffold-sae harvest` in one process."""

from __future__ import annotations

import hashlib
import itertools
import json
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from scaffold_sae.corpus import iter_contexts, load_corpus, resolve_bos
from scaffold_sae.devices import auto_lm_batch, lm_dtype, resolve_device
from scaffold_sae import faults
from scaffold_sae.faults import LOCK_NAME, OutputLock, check_space
from scaffold_sae.fetch import atomic_write_bytes
from scaffold_sae.cache import shards
from scaffold_sae.cache.shards import (_add_shard, _drop_bad_shards, _is_cache_file, _read_manifest,
                                       _remove_cache_files, CacheError, describe, DTYPES, encode_shard,
                                       EXCLUSION_RULES, FORMAT, IDENTITY_KEYS, MANIFEST, shard_name, ShardRecord,
                                       verify_shard, VERSION)
from scaffold_sae.cache.reader import ActivationCache


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
    ctx_len: int = 128
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
            size, digest = shards.write_shard(self.out / name, acts, tokens, positions)
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


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="tok", unit_scale=True, disable=not enabled,
                smoothing=0.1, dynamic_ncols=True)


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
