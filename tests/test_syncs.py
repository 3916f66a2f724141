"""The steady-state training step makes no host-device synchronisation (found on CPU by SyncRecorder), for
every architecture, with and without a scaffold; the recorder itself catches each kind of sync.  The two-process
(gloo) case is in test_distributed.py."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import synthetic
from scaffold_sae.sae import SAEConfig
from scaffold_sae.syncs import SyncRecorder
from scaffold_sae.trainer import TensorSource, TrainConfig, train_saes


def test_recorder_catches_every_kind_of_sync():
    t = torch.tensor([0.5, -1.0, 2.0, 2.0])
    mask = t > 0
    cases = {
        "aten._local_scalar_dense": lambda: float(t.sum()),
        "aten.nonzero": lambda: mask.nonzero(),
        "aten.index": lambda: t[mask],
        "aten.index_put_": lambda: t.clone().__setitem__(mask, 0.0),
        "aten.masked_select": lambda: t.masked_select(mask),
        "aten._unique2": lambda: torch.unique(t, return_counts=True),
        "aten.unique_consecutive": lambda: torch.unique_consecutive(t),
        "aten.repeat_interleave": lambda: torch.repeat_interleave(torch.tensor([1, 2])),
        "aten.bincount": lambda: torch.bincount(torch.tensor([1, 2])),
        "Tensor.tolist": lambda: t.tolist(),
        "Tensor.cpu": lambda: t.cpu(),
        "Tensor.numpy": lambda: t.numpy(),
    }
    for op, fn in cases.items():
        with SyncRecorder() as rec:
            fn()
        assert op in {e.op for e in rec.events}, (op, rec.summary())
    with SyncRecorder() as rec:  # fixed-shape equivalents: no sync
        torch.where(mask, t, 0.0)
        torch.nonzero_static(mask, size=4)
        t.index_select(0, torch.tensor([0, 2]))
        torch.repeat_interleave(torch.tensor([1, 2]), torch.tensor([2, 1]), output_size=3)
        torch.zeros(3, dtype=torch.long).index_add_(0, torch.tensor([1, 1]), torch.tensor([1, 1]))
    assert not rec.events, rec.summary()


ARCHS = [dict(arch="batchtopk", k=2), dict(arch="matryoshka", k=2), dict(arch="topk", k=2),
         dict(arch="relu", l1_coeff=0.003)]


@pytest.mark.parametrize("rank", [0, 3])
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a["arch"])
def test_training_steps_make_no_sync(tmp_path, arch, rank):
    """Every step's training work (dead latents and AuxK included: dead_tokens is short) runs without a sync;
    the log steps, where the host reads the metrics, are outside it."""
    cfgs = [SAEConfig(width=256, rank=rank, **arch)]
    if rank:
        cfgs.append(SAEConfig(width=256, rank=rank, scaffold_tied=True, encoder_input="residual", **arch))
    train_cfg = TrainConfig(tokens=64 * 12, batch_size=64, log_every=4, progress=False, checkpoint_every=0,
                            init_sample_tokens=512, threshold_sample_tokens=512, dead_tokens=128, lr=3e-3)
    with SyncRecorder() as outside:
        pass
    recorder = SyncRecorder()
    train_saes(TensorSource(synthetic(2048)), cfgs, train_cfg, tmp_path, sync_recorder=recorder)
    assert not outside.events
    assert not recorder.events, recorder.summary()
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 3 * len(cfgs)
    if arch["arch"] != "relu":  # AuxK ran: latents were dead, and their loss counted
        assert max(r["dead"] for r in log) > 0 and max(r["aux"] for r in log) > 0


class _CudaSyncsAreErrors:
    """While active, any synchronising CUDA call raises (torch.cuda.set_sync_debug_mode('error'))."""

    def __enter__(self):
        torch.cuda.set_sync_debug_mode("error")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/device.sh runs it)")
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a["arch"])
def test_cuda_training_steps_make_no_sync(tmp_path, arch):
    """On a GPU, CUDA itself checks the steady state: every step's training work runs with syncs as errors."""
    cfgs = [SAEConfig(width=256, rank=0, **arch), SAEConfig(width=256, rank=3, encoder_input="residual", **arch)]
    train_cfg = TrainConfig(tokens=64 * 12, batch_size=64, log_every=4, progress=False, checkpoint_every=0,
                            init_sample_tokens=512, threshold_sample_tokens=512, dead_tokens=128, lr=3e-3,
                            device="cuda")
    recorder = SyncRecorder()

    class Both:
        def __enter__(self):
            recorder.__enter__()
            self.cuda = _CudaSyncsAreErrors().__enter__()

        def __exit__(self, *exc):
            self.cuda.__exit__(*exc)
            recorder.__exit__(*exc)

    train_saes(TensorSource(synthetic(2048)), cfgs, train_cfg, tmp_path, sync_recorder=Both())
    assert not recorder.events, recorder.summary()
