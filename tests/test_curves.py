"""Training curves: the trainer's snapshots are the SAEs as they stood (and do not change training), and the
curves measure each snapshot exactly as the final evaluation measures an SAE."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from helpers import weights
from scaffold_sae import curves
from scaffold_sae.cache import harvest
from scaffold_sae.corpus import load_corpus, pack_contexts
from scaffold_sae.evals import evaluate_many
from scaffold_sae.sae import SAEConfig
from scaffold_sae.saving import load_sae
from scaffold_sae.subspace import pca, principal_angles
from scaffold_sae.lm_passes import heldout_activations
from scaffold_sae.trainer import ConfigError, TrainConfig, snapshot_path, train_saes

CFGS = [SAEConfig(arch="batchtopk", width=32, k=4, rank=r) for r in (0, 2)]


def train_cfg(**kw) -> TrainConfig:
    return TrainConfig(tokens=6 * 256, batch_size=256, progress=False, checkpoint_every=0, init_sample_tokens=512,
                       threshold_sample_tokens=512, dead_tokens=256, **kw)


@pytest.fixture(scope="module")
def cache(tiny_lm, tiny_corpus, tmp_path_factory):
    return harvest(tiny_lm, 1, str(tiny_corpus), 2048, tmp_path_factory.mktemp("c") / "cache", ctx_len=32,
                   progress=False)


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory):
    """Two SAEs trained 6 steps with a snapshot every 2 steps, and the SAEs captured in memory after step 2."""
    out = tmp_path_factory.mktemp("snap")
    captured = {}

    def on_step(done, states):
        if done == 2:
            captured.update({st.name: copy.deepcopy(st.sae) for st in states})
    paths = train_saes(cache, CFGS, train_cfg(snapshot_every=2), out, on_step=on_step)
    return out, paths, captured


def test_snapshots_are_the_saes_as_they_stood_and_leave_training_unchanged(cache, trained, tmp_path):
    out, paths, captured = trained
    plain = train_saes(cache, CFGS, train_cfg(), tmp_path / "plain")
    for with_snapshots, without in zip(paths, plain):
        a, b = weights(with_snapshots), weights(without)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    for path in paths:
        steps = [(s, t) for s, t, _ in curves.snapshots(path)]
        assert steps == [(2, 512), (4, 1024), (6, 1536)]  # the last is the final SAE
        scale = json.loads((path / "scaffold_sae.json").read_text())["summary"]["input_scale"]
        snap = load_sae(snapshot_path(out, path.name, 2))
        want = captured[path.name].folded(scale)
        assert torch.allclose(snap.W_dec, want.W_dec) and torch.allclose(snap.U, want.U)
        assert bool((snap.threshold > 0).all())  # calibrated like a final save


def test_curves_measure_each_snapshot_as_the_final_evaluation_does(tiny_lm, tiny_corpus, trained):
    _, paths, _ = trained
    contexts = pack_contexts(tiny_lm.tokenizer, load_corpus(str(tiny_corpus)), 32, 1024, split="heldout",
                             bos_id=tiny_lm.bos_token_id)
    points = curves.measure({p.name: p for p in paths}, tiny_lm, 1, contexts, ce_contexts=4, progress=False)
    assert [(p.sae, p.step) for p in points] == [(paths[0].name, s) for s in (2, 4, 6)] + \
        [(paths[1].name, s) for s in (2, 4, 6)]
    direct = evaluate_many({p.name: load_sae(p).eval() for p in paths}, tiny_lm, 1, contexts, inference="batchtopk",
                           progress=False, ce_contexts=4)
    for point in points:
        if point.step == 6:
            want = direct[point.sae]
            assert (point.dense_10, point.fvu, point.ce_score, point.l0) == \
                (want.dense_10, want.fvu, want.ce_score_zero, want.l0)
    components = pca(heldout_activations(tiny_lm, 1, contexts[4:], 16_384)).vectors
    final_hybrid = load_sae(paths[1])
    angles = principal_angles(final_hybrid.U.double(), components[:, :2])
    assert points[-1].first_angle == pytest.approx(float(angles[0])) and points[0].first_angle is None
    section = curves.section(points)
    assert len(section.tables[0].rows) == 6 and [f.title for f in section.figures][0].startswith("dense")


def test_a_negative_snapshot_interval_is_refused():
    with pytest.raises(ConfigError, match=r"snapshot_every=-1 is invalid"):
        train_cfg(snapshot_every=-1).validate()
