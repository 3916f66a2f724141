"""Core evaluation metrics against slow references and hand-computed cases, and evaluate() on a tiny LM."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

from scaffold_sae import evals


class Output(NamedTuple):
    x_hat: torch.Tensor
    codes: torch.Tensor
    scaffold_out: torch.Tensor
    sparse_out: torch.Tensor


@dataclass
class StandInConfig:
    d_in: int
    width: int
    k: int
    rank: int
    arch: str = "batchtopk"


class StandInSAE(nn.Module):
    """A small real SAE with the HybridSAE interface: JumpReLU encoder, linear decoder, rank-r scaffold."""

    def __init__(self, W_enc, b_enc, W_dec, b_dec, threshold, U=None, V=None, k=4):
        super().__init__()
        d, width = W_enc.shape
        self.W_enc, self.b_enc = nn.Parameter(W_enc.float()), nn.Parameter(b_enc.float())
        self.W_dec, self.b_dec = nn.Parameter(W_dec.float()), nn.Parameter(b_dec.float())
        self.threshold = nn.Parameter(threshold.float())
        rank = 0 if U is None else U.shape[1]
        self.U = nn.Parameter((U if U is not None else torch.zeros(d, 0)).float())
        self.V = nn.Parameter((V if V is not None else torch.zeros(d, 0)).float())
        self.cfg = StandInConfig(d_in=d, width=width, k=k, rank=rank)

    def pre_acts(self, x):
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x):
        pre = self.pre_acts(x)
        return pre * (pre > self.threshold)

    def scaffold(self, x):
        return (x - self.b_dec) @ self.V @ self.U.T

    def decode(self, codes, x):
        return self.b_dec + self.scaffold(x) + codes @ self.W_dec

    def forward(self, x):
        codes = self.encode(x)
        scaffold = self.scaffold(x)
        sparse = codes @ self.W_dec
        return Output(self.b_dec + scaffold + sparse, codes, scaffold, sparse)


def identity_sae(d: int) -> StandInSAE:
    """Sparse-only exact identity: latents +e_i and -e_i, relu(x) - relu(-x) = x."""
    eye = torch.eye(d)
    return StandInSAE(torch.cat([eye, -eye], 1), torch.zeros(2 * d), torch.cat([eye, -eye], 0), torch.zeros(d),
                      torch.zeros(2 * d), k=d)


def scaffold_identity_sae(d: int, width: int = 8) -> StandInSAE:
    """Full-rank scaffold U = V = I carries everything; sparse latents never fire."""
    eye = torch.eye(d)
    return StandInSAE(torch.zeros(d, width), -torch.ones(width), torch.zeros(width, d), torch.zeros(d),
                      torch.zeros(width), U=eye, V=eye)


def constant_sae(d: int, value: torch.Tensor, width: int = 8) -> StandInSAE:
    """Reconstructs every token as `value` (b_dec), no latent fires."""
    return StandInSAE(torch.zeros(d, width), -torch.ones(width), torch.zeros(width, d), value.float(),
                      torch.zeros(width))


def random_sae(d: int, width: int, seed: int = 0, rank: int = 0) -> StandInSAE:
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(width, d, generator=g)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    U = V = None
    if rank:
        U, _ = torch.linalg.qr(torch.randn(d, rank, generator=g))
        V = U
    return StandInSAE(W_dec.T.clone(), torch.zeros(width), W_dec, torch.zeros(d), torch.full((width,), 0.5), U, V,
                      k=3)


# ---------------------------------------------------------------------------------------------- pure metrics


def test_l0_counts_nonzeros_per_token():
    codes = torch.tensor([[1.0, 0, 2, 0], [0, 0, 0, 0], [3, 1, 1, 1]])
    assert evals.l0(codes) == pytest.approx((2 + 0 + 4) / 3)


def test_fvu_matches_hand_computation():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]])
    x_hat = torch.tensor([[1.0, 2.5], [2.0, 4.0], [5.0, 0.0]])
    # mean (3, 2); total variance = (4+0+4) + (0+4+4) = 16; residual = 0.25 + 1 = 1.25
    assert evals.fvu(x, x_hat) == pytest.approx(1.25 / 16)
    assert evals.explained_variance(x, x_hat) == pytest.approx(1 - 1.25 / 16)
    assert evals.fvu(x, x) == 0.0
    assert evals.mse(x, x_hat) == pytest.approx(1.25 / 6)


def test_mean_cosine_against_loop():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 5, generator=g), torch.randn(20, 5, generator=g)
    slow = sum(float(x[i] @ y[i] / (x[i].norm() * y[i].norm())) for i in range(20)) / 20
    assert evals.mean_cosine(x, y) == pytest.approx(slow, abs=1e-6)
    assert evals.mean_cosine(x, 3 * x) == pytest.approx(1.0)
    assert evals.mean_cosine(x, -x) == pytest.approx(-1.0)


def test_density_dead_and_dense():
    n = 200
    codes = torch.zeros(n, 5)
    codes[: n // 2, 0] = 1.0          # 50% -> dense at 10% and 1%
    codes[:10, 1] = 2.0               # 5%  -> dense at 1% only
    codes[:2, 2] = 0.5                # 1%  -> not MORE than 1%
    codes[:1, 3] = 0.1                # 0.5%
    density = evals.firing_density(codes)   # latent 4 never fires
    np.testing.assert_allclose(density, [0.5, 0.05, 0.01, 0.005, 0.0])
    assert evals.dense_count(density, 0.1) == 1
    assert evals.dense_count(density, 0.01) == 2
    assert evals.dead_count(density) == 1


def test_density_histogram_fixed_edges_and_dead_excluded():
    density = np.array([0.0, 1e-9, 0.001, 0.5, 1.0])
    counts, edges = evals.density_histogram(density, bins=7, log10_min=-7.0)
    assert edges[0] == -7.0 and edges[-1] == 0.0 and len(edges) == 8
    assert sum(counts) == 4               # the dead latent is left out
    assert counts[0] == 1                 # 1e-9 clipped into the first bin
    assert counts[4] == 1                 # log10(0.001) = -3 starts bin 4
    assert counts[-1] == 2                # 0.5 and 1.0 in the last bin


def test_ce_and_kl_scores():
    assert evals.ce_score(ce_clean=2.0, ce_sae=2.0, ce_ablated=6.0) == 1.0
    assert evals.ce_score(ce_clean=2.0, ce_sae=6.0, ce_ablated=6.0) == 0.0
    assert evals.ce_score(ce_clean=2.0, ce_sae=3.0, ce_ablated=6.0) == pytest.approx(0.75)
    assert evals.kl_score(kl_sae=0.5, kl_ablated=2.0) == pytest.approx(0.75)
    assert math.isnan(evals.ce_score(1.0, 1.0, 1.0))


def test_kl_per_position_against_reference():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(3, 4, 11, generator=g), torch.randn(3, 4, 11, generator=g)
    ref = torch.nn.functional.kl_div(q.log_softmax(-1), p.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(evals.kl_per_position(p, q), ref)
    assert float(evals.kl_per_position(p, p).abs().max()) < 1e-6


def test_ce_per_position_skips_the_bos_prediction():
    g = torch.Generator().manual_seed(0)
    logits, ids = torch.randn(2, 6, 9, generator=g), torch.randint(0, 9, (2, 6), generator=g)
    ce = evals.ce_per_position(logits, ids)
    assert ce.shape == (2, 4)
    slow = -logits[0, 3].log_softmax(-1)[ids[0, 4]]
    assert float(ce[0, 2]) == pytest.approx(float(slow), rel=1e-6)


def test_batch_topk_keeps_k_per_token_on_average():
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(10, 50, generator=g)
    codes = evals.batch_topk_codes(pre, k=3)
    assert int((codes != 0).sum()) == 30
    kept = codes[codes != 0]
    assert float(kept.min()) >= float(pre.flatten().topk(30).values.min())


# --------------------------------------------------------------------------------------- streaming accumulator


def test_accumulator_matches_whole_tensor_metrics_with_large_offsets():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 6, generator=g) + torch.tensor([5000.0, 0, 0, -300.0, 0, 0])
    x_hat = x + 0.3 * torch.randn(300, 6, generator=g)
    codes = (torch.rand(300, 9, generator=g) < 0.2).float()
    acc = evals.ReconstructionAccumulator(d=6, width=9)
    for chunk in range(0, 300, 77):
        acc.update(x[chunk:chunk + 77], x_hat[chunk:chunk + 77], codes[chunk:chunk + 77])
    assert acc.n == 300
    assert acc.sse / acc.total_variance == pytest.approx(evals.fvu(x, x_hat), rel=1e-9)
    assert acc.cosine_sum / acc.n == pytest.approx(evals.mean_cosine(x, x_hat), rel=1e-9)
    assert acc.active_sum / acc.n == pytest.approx(evals.l0(codes))
    np.testing.assert_allclose(acc.density(), evals.firing_density(codes))


def test_scaffold_never_counts_as_latents():
    sae = scaffold_identity_sae(4)
    x = torch.randn(10, 4)
    out = evals.reconstruct(sae, x)
    assert evals.l0(out.codes) == 0.0
    assert evals.fvu(x, out.x_hat) < 1e-12
    assert out.scaffold is not None


def test_batchtopk_inference_gives_l0_k():
    sae = random_sae(8, 32)
    x = torch.randn(50, 8)
    out = evals.reconstruct(sae, x, inference="batchtopk")
    assert evals.l0(out.codes) == pytest.approx(sae.cfg.k)
    with pytest.raises(evals.EvalError, match="unknown inference mode"):
        evals.reconstruct(sae, x, inference="topk")


# ------------------------------------------------------------------------------------------ evaluate() on an LM


@pytest.fixture()
def lm(tiny_lm):
    return tiny_lm


@pytest.fixture(scope="module")
def contexts():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 128, (6, 12), generator=g)
    ids[:, 0] = 2
    return ids


def test_perfect_reconstruction(lm, contexts):
    result = evals.evaluate(identity_sae(lm.d_model), lm, 0, contexts, batch_size=4, progress=False)
    assert result.fvu < 1e-12 and result.explained_variance == pytest.approx(1.0)
    assert result.ce_sae == pytest.approx(result.ce_clean, abs=1e-6)
    assert result.ce_score_zero == pytest.approx(1.0, abs=1e-6)
    assert result.ce_score_mean == pytest.approx(1.0, abs=1e-6)
    assert result.kl_sae == pytest.approx(0.0, abs=1e-6)
    assert result.kl_score_zero == pytest.approx(1.0, abs=1e-6)
    assert result.cosine == pytest.approx(1.0)
    assert result.n_tokens == 6 * 11 and result.n_predictions == 6 * 10
    assert abs(result.ce_zero - result.ce_clean) > 1e-4


def test_mean_reconstruction_equals_mean_ablation(lm, contexts):
    mean = evals.mean_activation(lm, 1, contexts, batch_size=4, progress=False)
    sae = constant_sae(lm.d_model, mean.float())
    result = evals.evaluate(sae, lm, 1, contexts, batch_size=4, progress=False, mean_resid=mean)
    assert result.ce_sae == pytest.approx(result.ce_mean, abs=1e-6)
    assert result.ce_score_mean == pytest.approx(0.0, abs=1e-5)
    assert result.kl_sae == pytest.approx(result.kl_mean, abs=1e-6)
    assert result.fvu == pytest.approx(1.0, rel=1e-5)
    assert result.l0 == 0.0 and result.dead == sae.cfg.width
    # the mean is computed over exactly the eval tokens (position 0 excluded)
    slow = lm.residual(contexts, 1)[:, 1:].reshape(-1, lm.d_model).double().mean(0)
    torch.testing.assert_close(mean, slow)


def test_evaluate_streams_like_whole_batch_and_serialises(lm, contexts):
    sae = random_sae(lm.d_model, 40, rank=2)
    one = evals.evaluate(sae, lm, 1, contexts, batch_size=6, progress=False)
    many = evals.evaluate(sae, lm, 1, contexts, batch_size=2, progress=False)
    for key in ("fvu", "l0", "cosine", "ce_sae", "kl_sae", "dense_1", "dead", "fvu_sparse"):
        assert getattr(one, key) == pytest.approx(getattr(many, key), rel=1e-5, abs=1e-7), key
    x = lm.residual(contexts, 1)[:, 1:].reshape(-1, lm.d_model)
    out = sae(x)
    assert one.fvu == pytest.approx(evals.fvu(x, out.x_hat), rel=1e-6)
    assert one.fvu_sparse == pytest.approx(evals.fvu(x, out.x_hat - out.scaffold_out), rel=1e-6)
    assert one.l0 == pytest.approx(evals.l0(out.codes))
    assert one.rank == 2 and one.width == 40 and len(one.density) == 40
    assert sum(one.density_hist_counts) == 40 - one.dead
    # CE / KL against the model's own per-token CE and the plain KL reference
    assert one.ce_clean == pytest.approx(float(lm.token_ce(contexts)[:, 1:].double().mean()), rel=1e-5)
    spliced = torch.cat([lm.residual(contexts, 1)[:, :1], out.x_hat.detach().view(6, 11, -1)], dim=1)
    edit = lambda _r: spliced  # noqa: E731
    assert one.ce_sae == pytest.approx(float(lm.token_ce(contexts, 1, edit)[:, 1:].double().mean()), rel=1e-5)
    kl_ref = evals.kl_per_position(lm.logits(contexts)[:, 1:-1], lm.logits(contexts, 1, edit)[:, 1:-1]).mean()
    assert one.kl_sae == pytest.approx(float(kl_ref), rel=1e-4)
    assert one.kl_score_zero == pytest.approx(evals.kl_score(one.kl_sae, one.kl_zero))
    assert one.ce_score_mean == pytest.approx(evals.ce_score(one.ce_clean, one.ce_sae, one.ce_mean))
    restored = json.loads(json.dumps(asdict(one)))
    assert restored["dense_10"] == one.dense_10


def test_evaluate_batchtopk_matches_k(lm, contexts):
    sae = random_sae(lm.d_model, 40)
    result = evals.evaluate(sae, lm, 1, contexts, batch_size=3, inference="batchtopk", progress=False)
    assert result.l0 == pytest.approx(sae.cfg.k)
    assert result.inference == "batchtopk"


def test_evaluate_rejects_wrong_width_and_layer(lm, contexts):
    with pytest.raises(evals.EvalError, match="d_model"):
        evals.evaluate(identity_sae(lm.d_model + 1), lm, 0, contexts, progress=False)
    with pytest.raises(ValueError, match="valid layers are 0..1"):
        evals.evaluate(identity_sae(lm.d_model), lm, 5, contexts, progress=False)


# ------------------------------------------------------------------------------------ the real HybridSAE and CLI


def real_hybrid(d: int, rank: int, arch: str = "batchtopk"):
    from scaffold_sae.sae import HybridSAE, SAEConfig

    sae = HybridSAE(SAEConfig(arch=arch, d_in=d, width=96, k=5, rank=rank), torch.Generator().manual_seed(1))
    with torch.no_grad():
        sae.threshold.fill_(0.3)
    return sae.eval()


def test_real_hybrid_sae_both_inference_modes(lm, contexts):
    sae = real_hybrid(lm.d_model, rank=3)
    thr = evals.evaluate(sae, lm, 1, contexts, batch_size=3, progress=False)
    btk = evals.evaluate(sae, lm, 1, contexts, batch_size=3, inference="batchtopk", progress=False)
    assert btk.l0 == pytest.approx(5.0)
    x = lm.residual(contexts, 1)[:, 1:].reshape(-1, lm.d_model)
    with torch.no_grad():
        out = sae(x)
    assert thr.l0 == pytest.approx(evals.l0(out.codes))
    assert thr.fvu == pytest.approx(evals.fvu(x, out.x_hat), rel=1e-6)
    assert thr.fvu_sparse == pytest.approx(evals.fvu(x, out.x_hat - out.scaffold_out), rel=1e-6)
    assert thr.rank == 3 and thr.fvu_sparse != pytest.approx(thr.fvu)


def test_batchtopk_refused_for_non_batchtopk_arch(lm, contexts):
    with pytest.raises(evals.EvalError, match="--inference threshold"):
        evals.evaluate(real_hybrid(lm.d_model, 0, arch="relu"), lm, 1, contexts, inference="batchtopk",
                       progress=False)


def test_eval_cli_end_to_end(tmp_path, tiny_lm, tiny_corpus):
    import subprocess
    import sys

    from scaffold_sae.saving import save_sae

    model_dir = tmp_path / "model"
    tiny_lm.hf_model.save_pretrained(model_dir)
    tiny_lm.tokenizer.save_pretrained(model_dir)
    sae_dir = save_sae(real_hybrid(tiny_lm.d_model, rank=2), tmp_path / "sae",
                       metadata={"model_name": str(model_dir), "hook_layer": 1})
    command = [sys.executable, "-m", "scaffold_sae", "eval", "--sae", str(sae_dir), "--corpus", str(tiny_corpus),
               "--tokens", "256", "--ctx-len", "32", "--inference", "batchtopk"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "dense >10%" in result.stdout
    payload = json.loads((sae_dir / "eval-batchtopk.json").read_text())
    assert payload["layer"] == 1 and payload["eval"]["rank"] == 2 and payload["eval"]["l0"] == pytest.approx(5.0)
    # position 0 and the separator (special) tokens between documents are excluded
    assert 0.8 * payload["eval"]["n_contexts"] * 31 < payload["eval"]["n_tokens"] <= payload["eval"]["n_contexts"] * 31
    report_run = subprocess.run([sys.executable, "-m", "scaffold_sae", "report", "--results",
                                 str(sae_dir / "eval-batchtopk.json"), "--out", str(tmp_path / "rep")],
                                capture_output=True, text=True, timeout=300)
    assert report_run.returncode == 0, report_run.stderr
    assert "Rank sweep" in (tmp_path / "rep" / "report.md").read_text()
    bad = subprocess.run(command[:6] + ["--layer", "7"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "valid layers are 0..1" in bad.stderr


def identity_hybrid(d: int):
    """The real HybridSAE as an exact identity: relu latents +e_i and -e_i."""
    from scaffold_sae.sae import HybridSAE, SAEConfig

    sae = HybridSAE(SAEConfig(arch="relu", d_in=d, width=2 * d, rank=0))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.encoder_weight.copy_(torch.cat([eye, -eye]))
        sae.W_dec.copy_(torch.cat([eye, -eye]))
    return sae.eval()


@pytest.mark.slow
def test_embedded_model_identity_and_ablations():
    from scaffold_sae.corpus import load_corpus, pack_contexts
    from scaffold_sae.models import load_model

    lm = load_model("gemma3-270m")
    contexts = pack_contexts(lm.tokenizer, load_corpus("news"), ctx_len=64, n_tokens=8 * 64, split="heldout",
                             bos_id=lm.bos_token_id)
    result = evals.evaluate(identity_hybrid(lm.d_model), lm, 9, contexts, batch_size=4, progress=False)
    assert result.fvu < 1e-10 and result.l0 > 0
    assert result.ce_score_zero == pytest.approx(1.0, abs=1e-5)
    assert result.ce_score_mean == pytest.approx(1.0, abs=1e-5)
    assert result.kl_sae == pytest.approx(0.0, abs=1e-5)
    assert result.ce_zero > result.ce_clean + 1.0 and result.ce_mean > result.ce_clean + 1.0


def test_evaluate_many_equals_one_at_a_time(lm, contexts):
    saes = {"base": random_sae(lm.d_model, 40, seed=1), "hybrid": random_sae(lm.d_model, 40, seed=2, rank=4)}
    together = evals.evaluate_many(saes, lm, 1, contexts, batch_size=4,
                                   inference={"base": "batchtopk", "hybrid": "threshold"}, progress=False)
    alone = evals.evaluate(saes["hybrid"], lm, 1, contexts, batch_size=4, progress=False)
    assert together["base"].inference == "batchtopk" and together["base"].l0 == pytest.approx(3.0)
    a, b = asdict(together["hybrid"]), asdict(alone)
    for key, value in b.items():
        if isinstance(value, float):
            assert a[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        else:
            assert a[key] == value, key


def test_ce_on_a_prefix_keeps_statistics_on_all_contexts(lm, contexts):
    sae = {"hybrid": random_sae(lm.d_model, 40, seed=2, rank=4)}
    mean = evals.mean_activation(lm, 1, contexts, progress=False)
    full = evals.evaluate_many(sae, lm, 1, contexts, batch_size=3, mean_resid=mean, progress=False)["hybrid"]
    part = evals.evaluate_many(sae, lm, 1, contexts, batch_size=3, mean_resid=mean, progress=False,
                               ce_contexts=2)["hybrid"]
    prefix = evals.evaluate_many(sae, lm, 1, contexts[:2], batch_size=3, mean_resid=mean, progress=False)["hybrid"]
    assert part.n_tokens == full.n_tokens and part.fvu == pytest.approx(full.fvu, rel=1e-9)
    assert part.n_predictions == prefix.n_predictions < full.n_predictions
    assert part.ce_sae == pytest.approx(prefix.ce_sae, rel=1e-9)
    assert part.ce_score_zero == pytest.approx(prefix.ce_score_zero, rel=1e-9)


def test_mean_ablation_mean_is_fitted_off_the_ce_contexts(lm, contexts):
    sae = {"hybrid": random_sae(lm.d_model, 40, seed=2, rank=4)}
    default = evals.evaluate_many(sae, lm, 1, contexts, batch_size=3, progress=False, ce_contexts=2)["hybrid"]
    held_out = evals.mean_activation(lm, 1, contexts[2:], progress=False)
    in_sample = evals.mean_activation(lm, 1, contexts[:2], progress=False)
    fair = evals.evaluate_many(sae, lm, 1, contexts, batch_size=3, mean_resid=held_out, progress=False,
                               ce_contexts=2)["hybrid"]
    circular = evals.evaluate_many(sae, lm, 1, contexts, batch_size=3, mean_resid=in_sample, progress=False,
                                   ce_contexts=2)["hybrid"]
    assert default.ce_mean == pytest.approx(fair.ce_mean, rel=1e-9)
    assert abs(default.ce_mean - circular.ce_mean) > 1e-6


def test_sink_tokens_are_excluded_and_kept_in_the_splice(lm, contexts):
    resid = lm.residual(contexts[:2], 1)
    keep = evals.eval_mask(lm, resid, contexts[:2], sink_factor=10.0)
    assert not keep[:, 0].any()
    huge = resid.clone()
    huge[0, 5] *= 1000.0  # an attention-sink-like norm
    keep_huge = evals.eval_mask(lm, huge, contexts[:2], sink_factor=10.0)
    assert keep[0, 5] and not keep_huge[0, 5]
    assert (keep_huge ^ keep).sum() == 1


def test_one_sae_source_opens_the_sae_for_eval_browse_and_diagnose(tmp_path):
    """eval, browse and diagnose name their SAE, model, layer, corpus and device with the same fields, read by one
    SAESource; a missing SAE fails as the caller's error type before anything loads."""
    from scaffold_sae.browse import BrowseError, BrowseRun
    from scaffold_sae.diagnose import DiagnoseRun
    from scaffold_sae.source import SAESource

    expected = SAESource(sae="s", model="m", layer=3, corpus="c", device="cpu")
    for cls in (evals.CoreEvalConfig, BrowseRun, DiagnoseRun):
        assert SAESource.of(cls(sae="s", model="m", layer=3, corpus="c", device="cpu")) == expected
    with pytest.raises(BrowseError, match=r"SAE path .*nothing does not exist"):
        SAESource(sae=str(tmp_path / "nothing")).open(BrowseError)
