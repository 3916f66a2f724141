"""TrainConfig.compile: the SAE's training loss traces into one graph (no graph break) for every architecture,
and a compiled run trains like an eager one."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo

from helpers import assert_same, synthetic
from scaffold_sae.sae import DeadLatents, HybridSAE, SAEConfig
from scaffold_sae.trainer import TensorSource, TrainConfig, train_saes


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka", "topk", "relu"])
def test_training_loss_has_no_graph_break(arch):
    sae = HybridSAE(SAEConfig(arch=arch, d_in=16, width=64, k=3, rank=2, encoder_input="residual"))
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    pool = torch.arange(0, 64, 2)
    dead = DeadLatents(pool, torch.arange(32) % 3 == 0)

    def loss(x, dead):
        out = sae.loss(x, dead=dead, fast=False)
        return out.loss, out.fvu, out.l0, out.fires, out.batch_threshold

    dynamo.reset()
    explained = dynamo.explain(loss)(x, dead)
    assert explained.graph_break_count == 0, [str(b.reason)[:300] for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.slow  # inductor compiles forward and backward: minutes on a 2-core CPU
def test_compiled_training_equals_eager(tmp_path):
    cfg = dict(tokens=64 * 4, batch_size=64, log_every=2, progress=False, checkpoint_every=0, init_sample_tokens=512,
               threshold_sample_tokens=512, dead_tokens=128, lr=3e-3, fast=False)
    sae_cfg = [SAEConfig(arch="batchtopk", width=32, k=2, rank=2)]
    src = TensorSource(synthetic(1024))
    dynamo.reset()
    eager = train_saes(src, sae_cfg, TrainConfig(**cfg), tmp_path / "eager")
    compiled = train_saes(src, sae_cfg, TrainConfig(**cfg, compile=True), tmp_path / "compiled")
    assert_same(eager, compiled, atol=1e-5)
