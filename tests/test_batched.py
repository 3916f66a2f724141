"""Batched lockstep: SAEs stacked into [n, m, d] weights (bmm / baddbmm / one embedding_bag) train to the same
weights as separate one-SAE steps, Adam, clipping, AuxK and zero-padded scaffolds included."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import synthetic
from scaffold_sae.batched import StackedSAEs, StackedTrainer, StackError
from scaffold_sae.comm import LocalComm
from scaffold_sae.sae import HybridSAE, SAEConfig
from scaffold_sae.step import new_state, train_step
from scaffold_sae.syncs import SyncRecorder
from scaffold_sae.trainer import TrainConfig, input_scale


def saes(arch: str, ranks: list[int], **kw) -> list[HybridSAE]:
    data = synthetic(512)
    out = []
    for i, r in enumerate(ranks):
        sae = HybridSAE(SAEConfig(arch=arch, d_in=16, width=64, k=3, rank=r, **kw), torch.Generator().manual_seed(i))
        with torch.no_grad():
            sae.b_dec.copy_(data.mean(0) * input_scale(data))
        out.append(sae)
    return out


@pytest.mark.parametrize("arch", ["batchtopk", "topk"])
@pytest.mark.parametrize("encoder_input", ["x", "residual"])
def test_stacked_training_gives_the_weights_of_separate_training(arch, encoder_input):
    data = synthetic(2048)
    data = data * input_scale(data)
    models = saes(arch, [0, 2, 5], encoder_input=encoder_input)
    separate = [copy.deepcopy(s) for s in models]
    cfg = TrainConfig(tokens=10**6, batch_size=128, lr=3e-3, grad_clip=0.5)
    states = [new_state(f"s{i}", s, cfg, "cpu") for i, s in enumerate(separate)]
    stack = StackedSAEs(models)
    trainer = StackedTrainer(stack, lr=3e-3, grad_clip=0.5)
    dead_tokens = 256  # latents die after 2 steps: AuxK runs in both
    aux_seen = 0.0
    for step in range(12):
        x = data[step * 128:(step + 1) * 128]
        factor = min(1.0, (step + 1) / 4)
        for st in states:
            train_step(st, x, factor, dead_tokens, cfg, LocalComm())
        out = trainer.step(x, factor, dead_tokens)
        aux_seen += float(out["aux"].detach().sum())
    assert aux_seen > 0
    stack.unstack(models)
    for a, b in zip(models, separate):
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            assert torch.allclose(pa, pb, atol=1e-5, rtol=1e-4), (name, float((pa - pb).abs().max()))
    for i, st in enumerate(states):
        assert torch.equal(trainer.since_fired[i], st.since_fired)


def test_stacked_step_makes_no_sync():
    data = synthetic(256)
    trainer = StackedTrainer(StackedSAEs(saes("batchtopk", [0, 3])), lr=1e-3)
    trainer.step(data[:128], 1.0, 256)
    with SyncRecorder() as rec:
        trainer.step(data[128:], 1.0, 256)
    assert not rec.events, rec.summary()


def test_unstackable_saes_are_refused_with_the_reason():
    with pytest.raises(StackError, match="differ in more than rank and seed"):
        StackedSAEs(saes("batchtopk", [0]) + saes("topk", [0]))
    with pytest.raises(StackError, match="cannot be stacked"):
        StackedSAEs(saes("batchtopk", [2], scaffold_tied=True))
