"""Harvesting in slices: each rank (or each turn of one process) harvests its slice of the contexts into a
complete cache of its own; rank 0 links the slices into one cache (`merge_slices`)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path


from scaffold_sae.devices import auto_lm_batch, lm_dtype
from scaffold_sae import distributed
from scaffold_sae.comm import Communicator
from scaffold_sae.fetch import atomic_write_bytes
from scaffold_sae.cache.shards import _read_manifest, CacheError, EXCLUSION_RULES, MANIFEST, shard_name
from scaffold_sae.cache.reader import ActivationCache
from scaffold_sae.cache.harvester import HarvestConfig, Harvester, HarvestRun


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
