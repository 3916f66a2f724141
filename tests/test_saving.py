"""save_sae / load_sae: round trips, the SAELens-compatible layout, and foreign formats."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from scaffold_sae.sae import HybridSAE, SAEConfig
from scaffold_sae.saving import SAEFormatError, load_sae, save_sae
from scaffold_sae.trainer import TensorSource, TrainConfig, train_saes

D, M = 12, 40


def trained_like(arch="batchtopk", rank=3, **kw) -> HybridSAE:
    sae = HybridSAE(SAEConfig(arch=arch, d_in=D, width=M, k=4, rank=rank, **kw), torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        sae.b_enc.copy_(0.1 * torch.randn(M, generator=g))
        sae.b_dec.copy_(torch.randn(D, generator=g))
        sae.encoder_weight.add_(0.3 * torch.randn(M, D, generator=g))
        if rank:
            sae.U.add_(0.1 * torch.randn(D, rank, generator=g))
        sae.threshold.fill_(0.3)
    return sae


def x_raw(n=64) -> torch.Tensor:
    return 3 * torch.randn(n, D, generator=torch.Generator().manual_seed(2)) + 5


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka", "topk", "relu"])
@pytest.mark.parametrize("variant", [{}, {"scaffold_tied": True}, {"encoder_input": "residual"}, {"rank": 0},
                                     {"scaffold_centred": False},
                                     {"scaffold_centred": False, "encoder_input": "residual"}])
def test_save_load_round_trip_identical_outputs(tmp_path, arch, variant):
    sae = trained_like(arch, **{"rank": 3, **variant}).folded(0.25)
    save_sae(sae, tmp_path / "s", metadata={"model_name": "m", "hook_layer": 3, "context_size": 64})
    loaded = load_sae(tmp_path / "s")
    assert loaded.cfg == sae.cfg
    x = x_raw()
    with torch.no_grad():
        a, b = sae(x), loaded(x)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_trained_sae_works_on_raw_activations(tmp_path):
    import copy
    data = 40 * torch.randn(2048, D, generator=torch.Generator().manual_seed(0)) + 100
    cfg = TrainConfig(tokens=256 * 3, batch_size=256, progress=False, checkpoint_every=0, init_sample_tokens=512,
                      threshold_sample_tokens=512)
    last = {}
    path = train_saes(TensorSource(data), [SAEConfig(arch="topk", width=M, k=4, rank=2)], cfg, tmp_path,
                      on_step=lambda step, states: last.update(sae=copy.deepcopy(states[0].sae)))[0]
    sae = load_sae(path)
    scale = sae.summary["input_scale"]
    assert scale == pytest.approx(D ** 0.5 / float(data[:512].norm(dim=1).mean()), rel=0.05)
    with torch.no_grad():
        raw = sae(data[:256])
        scaled = last["sae"](data[:256] * scale)
    assert torch.allclose(raw.x_hat, scaled.x_hat / scale, rtol=1e-4, atol=1e-3)
    assert torch.equal(raw.codes > 0, scaled.codes > 0)


def test_saelens_layout(tmp_path):
    sae = trained_like("batchtopk", rank=3, encoder_input="residual")
    save_sae(sae, tmp_path, metadata={"model_name": "smollm2-135m", "hook_layer": 15, "context_size": 256})
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["d_in"] == D and cfg["d_sae"] == M
    assert cfg["normalize_activations"] == "none" and cfg["apply_b_dec_to_input"] is True
    assert cfg["metadata"]["hook_name"] == "blocks.15.hook_resid_post"
    assert cfg["metadata"]["model_name"] == "smollm2-135m" and cfg["metadata"]["context_size"] == 256
    weights = load_file(str(tmp_path / "sae_weights.safetensors"))
    assert {k: tuple(v.shape) for k, v in weights.items()} == {
        "W_enc": (D, M), "W_dec": (M, D), "b_enc": (M,), "b_dec": (D,), "threshold": (M,)}
    scaffold = load_file(str(tmp_path / "scaffold.safetensors"))
    assert scaffold["U"].shape == (D, 3) and scaffold["V"].shape == (D, 3)
    # SAELens's JumpReLU encoder on the saved tensors gives our codes (scaffold folded into W_enc)
    x = x_raw()
    pre = (x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    saelens_codes = pre.relu() * (pre > weights["threshold"])
    with torch.no_grad():
        assert torch.allclose(saelens_codes, sae.encode(x), atol=1e-5)
    for arch, name in (("topk", "topk"), ("relu", "standard")):
        save_sae(trained_like(arch), tmp_path / arch)
        cfg = json.loads((tmp_path / arch / "cfg.json").read_text())
        assert cfg["architecture"] == name
        assert "threshold" not in load_file(str(tmp_path / arch / "sae_weights.safetensors"))


@pytest.mark.parametrize("centred", [True, False])
def test_saelens_directory_written_by_us_loads_as_plain_saelens(tmp_path, centred):
    sae = trained_like("batchtopk", rank=3, encoder_input="residual", scaffold_centred=centred)
    save_sae(sae, tmp_path)
    (tmp_path / "scaffold_sae.json").unlink()
    (tmp_path / "scaffold.safetensors").unlink()
    plain = load_sae(tmp_path)
    assert plain.cfg.arch == "jumprelu" and plain.cfg.rank == 0
    x = x_raw()
    with torch.no_grad():
        ours = sae(x)
        theirs = plain(x)
    assert torch.allclose(theirs.codes, ours.codes, atol=1e-5)
    assert torch.allclose(theirs.x_hat, ours.x_hat - ours.scaffold_out, atol=1e-5)


def test_foreign_saelens_variants(tmp_path):
    g = torch.Generator().manual_seed(0)
    w_enc, w_dec = torch.randn(D, M, generator=g), torch.randn(M, D, generator=g)
    b_enc, b_dec = torch.randn(M, generator=g), torch.randn(D, generator=g)
    save_file({"W_enc": w_enc, "W_dec": w_dec, "b_enc": b_enc, "b_dec": b_dec},
              str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": D, "d_sae": M,
                                                   "apply_b_dec_to_input": False}))
    sae = load_sae(tmp_path)
    x = x_raw()
    with torch.no_grad():
        assert torch.allclose(sae.encode(x), (x @ w_enc + b_enc).relu(), atol=1e-4)
        assert torch.allclose(sae(x).x_hat, (x @ w_enc + b_enc).relu() @ w_dec + b_dec, atol=1e-4)
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": D, "d_sae": M,
                                                   "normalize_activations": "expected_average_only_in"}))
    with pytest.raises(SAEFormatError, match="normalize_activations"):
        load_sae(tmp_path)


def test_sparsify_format_loads(tmp_path):
    g = torch.Generator().manual_seed(0)
    enc, bias = torch.randn(M, D, generator=g), torch.randn(M, generator=g)
    w_dec, b_dec = torch.randn(M, D, generator=g), torch.randn(D, generator=g)
    save_file({"encoder.weight": enc, "encoder.bias": bias, "W_dec": w_dec, "b_dec": b_dec},
              str(tmp_path / "sae.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({"k": 5, "num_latents": M, "expansion_factor": 4}))
    sae = load_sae(tmp_path)
    assert (sae.cfg.arch, sae.cfg.k, sae.cfg.d_in, sae.cfg.width) == ("topk", 5, D, M)
    x = x_raw()
    pre = ((x - b_dec) @ enc.t() + bias).relu()
    top = pre.topk(5, dim=1)
    expected = torch.zeros_like(pre).scatter(1, top.indices, top.values)
    with torch.no_grad():
        assert torch.allclose(sae.encode(x), expected, atol=1e-5)
        assert torch.allclose(sae(x).x_hat, expected @ w_dec + b_dec, atol=1e-4)


def test_not_an_sae_directory(tmp_path):
    with pytest.raises(SAEFormatError, match="is not an SAE directory"):
        load_sae(tmp_path)
