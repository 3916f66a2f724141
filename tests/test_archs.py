"""The architecture registry: a toy architecture defined here alone trains, saves, loads and evaluates."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import D, synthetic
from scaffold_sae import archs, evals, kernels, probing
from scaffold_sae.sae import ConfigError, HybridSAE, SAEConfig
from scaffold_sae.saving import load_sae, save_sae
from scaffold_sae.trainer import TensorSource, TrainConfig, train_saes


class TopOne(archs.Architecture):
    """Toy: each token keeps only its largest pre-activation, when it is positive (a TopK with k = 1)."""

    name = "top1"
    saelens_name = "topk"  # SAELens reads it as a TopK SAE; the config sets k = 1

    def select(self, pre, cfg):
        rows = torch.arange(pre.shape[0])
        best = pre.argmax(1)
        keep = pre[rows, best] > 0
        return kernels.active_from_coo(rows[keep], best[keep], *pre.shape), 0.0

    def codes(self, sae, pre, batch_topk):
        return archs.codes_at(pre, self.select(pre, sae.cfg)[0])


@pytest.fixture()
def top1():
    arch = archs.register(TopOne())
    yield arch
    archs.unregister(arch.name)


def slow_top1(pre: torch.Tensor) -> torch.Tensor:
    """Reference rule, one token at a time."""
    out = torch.zeros_like(pre)
    for i, row in enumerate(pre):
        j = int(row.argmax())
        if row[j] > 0:
            out[i, j] = row[j]
    return out


def tcfg(**kw) -> TrainConfig:
    base = dict(tokens=128 * 8, batch_size=128, log_every=4, progress=False, checkpoint_every=0,
                init_sample_tokens=1024, threshold_sample_tokens=1024, dead_tokens=256, lr=3e-3)
    return TrainConfig(**{**base, **kw})


def test_toy_architecture_trains_saves_loads_and_evaluates(top1, tmp_path):
    cfgs = [SAEConfig(arch="top1", width=32, k=1, rank=0), SAEConfig(arch="top1", width=32, k=1, rank=2)]
    final = {}
    paths = train_saes(TensorSource(synthetic(2048)), cfgs, tcfg(), tmp_path / "run",
                       on_step=lambda step, states: final.update({st.name: st.sae for st in states}))
    assert [p.name for p in paths] == ["top1_m32_k1_r0_resin", "top1_m32_k1_r2_resin"]

    x = synthetic(300, seed=4)
    for path in paths:
        sae = load_sae(path)
        assert isinstance(sae, HybridSAE) and sae.cfg.arch == "top1" and sae.architecture is top1
        # the saved SAE is the trained one with the input scale folded in, bit for bit
        trained = final[path.name].folded(sae.summary["input_scale"])
        for key, value in trained.state_dict().items():
            assert torch.equal(value, sae.state_dict()[key]), key
        assert sae.summary["inference_l0_sample"] <= 1.0 and "threshold_scaled" not in sae.summary
        # save / load again: same tensors
        again = load_sae(save_sae(sae, tmp_path / "again" / path.name))
        for key, value in sae.state_dict().items():
            assert torch.equal(value, again.state_dict()[key]), key

        # inference follows the rule; L0 is the share of tokens with a positive pre-activation
        pre = sae.pre_activations(x)
        recon = evals.reconstruct(sae, x)
        assert torch.equal(recon.codes, slow_top1(pre))
        assert evals.l0(recon.codes) == pytest.approx(float((pre.max(1).values > 0).float().mean()))
        assert 0.5 < evals.l0(recon.codes) <= 1.0
        assert evals.fvu(x, recon.x_hat) < 1.0
        with pytest.raises(evals.EvalError, match="batchtopk or matryoshka SAE"):
            evals.reconstruct(sae, x, inference="batchtopk")
        assert probing.inference_mode(sae) == "threshold"

        cfg_json = json.loads((path / "cfg.json").read_text())
        assert cfg_json["architecture"] == "topk" and cfg_json["k"] == 1

    # training saw at most one active latent per token
    records = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").open()]
    assert records and all(0 < r["l0"] <= 1.0 for r in records)


def test_toy_exported_as_saelens_topk_gives_the_same_codes(top1, tmp_path):
    sae = HybridSAE(SAEConfig(arch="top1", d_in=D, width=24, k=1, rank=0), torch.Generator().manual_seed(3))
    path = save_sae(sae, tmp_path / "sae")
    (path / "scaffold_sae.json").unlink()  # read it the way SAELens would: cfg.json + sae_weights
    foreign = load_sae(path)
    assert foreign.cfg.arch == "topk" and foreign.cfg.k == 1
    x = synthetic(200, seed=6)
    assert torch.equal(foreign.encode(x), sae.encode(x))


def test_toy_evaluates_on_a_language_model(top1, tiny_lm):
    g = torch.Generator().manual_seed(0)
    contexts = torch.randint(4, 128, (6, 12), generator=g)
    contexts[:, 0] = 2
    sae = HybridSAE(SAEConfig(arch="top1", d_in=tiny_lm.d_model, width=40, k=1, rank=2),
                    torch.Generator().manual_seed(1)).eval()
    result = evals.evaluate(sae, tiny_lm, 1, contexts, batch_size=3, progress=False)
    x = tiny_lm.residual(contexts, 1)[:, 1:].reshape(-1, tiny_lm.d_model)
    with torch.no_grad():
        out = sae(x)
    assert result.arch == "top1" and result.inference == "threshold" and result.rank == 2
    assert result.l0 == pytest.approx(evals.l0(out.codes)) and result.l0 <= 1.0
    assert result.fvu == pytest.approx(evals.fvu(x, out.x_hat), rel=1e-6)


def test_registry_declarations_of_the_builtin_architectures():
    assert archs.names() == ["batchtopk", "matryoshka", "topk", "relu"]
    assert archs.names(load_only=True) == ["batchtopk", "matryoshka", "topk", "relu", "jumprelu"]
    assert {n: archs.get(n).inference_modes for n in archs.names(load_only=True)} == {
        "batchtopk": ("batchtopk", "threshold"), "matryoshka": ("batchtopk", "threshold"), "topk": ("threshold",),
        "relu": ("threshold",), "jumprelu": ("threshold",)}
    assert {n: archs.get(n).saelens_name for n in archs.names(load_only=True)} == {
        "batchtopk": "jumprelu", "matryoshka": "jumprelu", "topk": "topk", "relu": "standard", "jumprelu": "jumprelu"}
    assert [n for n in archs.names() if archs.get(n).calibrates_threshold] == ["batchtopk", "matryoshka"]
    assert [n for n in archs.names() if archs.get(n).uses_global_batch_selection] == ["batchtopk", "matryoshka"]


def test_unknown_architecture_fails_with_one_line_naming_the_registered_ones(top1, tmp_path):
    with pytest.raises(ConfigError) as info:
        SAEConfig(arch="gated", d_in=D, width=32).validate()
    message = str(info.value)
    assert "\n" not in message and "arch='gated'" in message
    assert "batchtopk, matryoshka, topk, relu, top1" in message

    with pytest.raises(archs.UnknownArchitecture) as info:
        archs.get("gated")
    assert "\n" not in str(info.value) and "batchtopk, matryoshka, topk, relu, jumprelu, top1" in str(info.value)

    with pytest.raises(ValueError, match="already registered"):
        archs.register(TopOne())

    # an SAE saved with an architecture this process has not registered
    path = save_sae(HybridSAE(SAEConfig(arch="top1", d_in=D, width=8, k=1)), tmp_path / "sae")
    archs.unregister("top1")
    with pytest.raises(ConfigError) as info:
        load_sae(path)
    assert "\n" not in str(info.value) and "arch='top1' is invalid" in str(info.value)
    assert "batchtopk, matryoshka, topk, relu, jumprelu" in str(info.value)
