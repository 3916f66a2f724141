"""The scaffold learning-rate probe in RESULTS.md (section E): 60 steps of m=1024 BatchTopK SAEs on 60k tokens
sampled from a Gemma-3-270M layer-9 cache, baseline vs r=8 hybrids with scaffold lr x1, x0.1, x0.01, x0 and tied.

    python results/scripts/scaffold_lr_probe.py CACHE_DIR OUT_DIR     # then read OUT_DIR/train_log.jsonl
"""

import sys

from scaffold_sae.cache import ActivationCache
from scaffold_sae.sae import SAEConfig
from scaffold_sae.trainer import TensorSource, TrainConfig, train_saes

cache = ActivationCache.open(sys.argv[1], verify="none")
source = TensorSource(cache.sample(60_000, seed=3))
variants = [dict(rank=0), dict(rank=8), dict(rank=8, scaffold_lr_mult=0.1), dict(rank=8, scaffold_lr_mult=0.01),
            dict(rank=8, scaffold_tied=True), dict(rank=8, scaffold_lr_mult=0.0)]
cfgs = [SAEConfig(arch="batchtopk", width=1024, k=32, **v) for v in variants]
train_saes(source, cfgs, TrainConfig(tokens=60 * 2048, batch_size=2048, progress=False, log_every=20,
                                     checkpoint_every=0), sys.argv[2])
