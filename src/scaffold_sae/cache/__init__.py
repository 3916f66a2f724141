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

The package: `shards` (the manifest and the shard format), `reader` (ActivationCache, cache-info), `harvester`
(harvest, the resumable Harvester and its repair, the rows kept) and `slices` (harvesting in slices, one per rank,
and merging them). Every name is importable from `scaffold_sae.cache` as before the split.
"""

from __future__ import annotations

from scaffold_sae.cache.shards import (CacheError, describe, DTYPES, encode_shard, EXCLUSION_RULES, FORMAT,
                                       IDENTITY_KEYS, MANIFEST, read_header, shard_name, ShardRecord, verify_shard,
                                       VERSION, write_shard)
from scaffold_sae.cache.reader import ActivationCache, cache_info, CacheInfoConfig
from scaffold_sae.cache.harvester import (harvest, harvest_with, HarvestConfig, Harvester, HarvestRun, keep_mask,
                                          repair_command, slice_contexts)
from scaffold_sae.cache.slices import harvest_ranked, harvest_slices, merge_slices, slice_dir, slice_quota

__all__ = [
    "ActivationCache", "CacheError", "CacheInfoConfig", "DTYPES", "EXCLUSION_RULES", "FORMAT", "HarvestConfig",
    "HarvestRun", "Harvester", "IDENTITY_KEYS", "MANIFEST", "ShardRecord", "VERSION", "cache_info", "describe",
    "encode_shard", "harvest", "harvest_ranked", "harvest_slices", "harvest_with", "keep_mask", "merge_slices",
    "read_header", "repair_command", "shard_name", "slice_contexts", "slice_dir", "slice_quota", "verify_shard",
    "write_shard"
]
