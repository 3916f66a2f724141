"""Reading an activation cache: `ActivationCache` (verified open, held-out rows, shuffled batches by rank) and
`scaffold-sae cache-info`."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from scaffold_sae.cache.shards import _read_manifest, CacheError, DTYPES, verify_shard


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
