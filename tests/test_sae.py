"""Hybrid SAE maths against slow obvious references, and the sparse kernels against dense ones."""

from __future__ import annotations

import contextlib

import pytest
import torch

from scaffold_sae import kernels
from scaffold_sae.sae import ConfigError, HybridSAE, SAEConfig, geometric_median, orthonormalise, pca_basis
from scaffold_sae.syncs import SyncRecorder

D, M = 12, 40


def make_sae(arch="batchtopk", rank=3, k=4, seed=0, **kw) -> HybridSAE:
    sae = HybridSAE(SAEConfig(arch=arch, d_in=D, width=M, k=k, rank=rank, **kw),
                    torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-trivial values everywhere
        sae.b_enc.copy_(0.1 * torch.randn(M, generator=g))
        sae.b_dec.copy_(torch.randn(D, generator=g))
        sae.encoder_weight.add_(0.3 * torch.randn(M, D, generator=g))
        if rank:
            sae.U.add_(0.1 * torch.randn(D, rank, generator=g))
            if sae.V_free is not None:
                sae.V_free.add_(0.1 * torch.randn(D, rank, generator=g))
        sae.threshold.fill_(0.4)
    return sae


def data(n=32, seed=3) -> torch.Tensor:
    return 2 * torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def ref_pre(sae: HybridSAE, x: torch.Tensor) -> torch.Tensor:
    """Slow reference pre-activations, latent by latent."""
    xc = x - sae.b_dec
    if sae.cfg.encoder_input == "residual" and sae.rank:
        xc = xc - xc @ sae.V @ sae.U.t()
    out = torch.zeros(x.shape[0], M)
    for i in range(M):
        out[:, i] = xc @ sae.W_enc[:, i] + sae.b_enc[i]
    return out


def ref_batch_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    flat = pre.relu().flatten()
    keep = torch.zeros_like(flat)
    order = sorted(range(flat.numel()), key=lambda i: -float(flat[i]))[: pre.shape[0] * k]
    for i in order:
        keep[i] = 1.0 if flat[i] > 0 else 0.0
    return (flat * keep).view_as(pre)


def ref_row_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.zeros_like(pre)
    for b in range(pre.shape[0]):
        for i in sorted(range(pre.shape[1]), key=lambda j: -float(pre[b, j]))[:k]:
            out[b, i] = max(float(pre[b, i]), 0.0)
    return out


def ref_scaffold(sae: HybridSAE, x: torch.Tensor) -> torch.Tensor:
    return sum(((x - sae.b_dec) @ sae.V[:, j])[:, None] * sae.U[:, j][None] for j in range(sae.rank)) \
        if sae.rank else torch.zeros_like(x)


# ------------------------------------------------------------------- selection kernels


def selection_path(fixed: bool):
    """The GPU's fixed-shape batch top-k (kernels.device_path), or the CPU's host-read default."""
    return kernels.device_path() if fixed else contextlib.nullcontext()


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed-shapes", "host-read"])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_batch_topk_matches_flat_reference(k, fixed):
    pre = torch.randn(50, 30, generator=torch.Generator().manual_seed(k))
    pre[7] += 5.0  # one row holds far more than k of the batch's top values: exercises the retry
    with selection_path(fixed):
        active, thr = kernels.batch_topk(pre, k)
    dense = active.dense(pre)
    assert torch.equal(dense, ref_batch_topk(pre, k))
    assert float(thr) == pytest.approx(float(dense[dense > 0].min()))
    assert active.nnz == 50 * k  # the fixed path stores B*k pairs; the host path these are all active
    assert torch.equal(active.row, torch.arange(50).repeat_interleave(active.crow[1:] - active.crow[:-1]))
    assert torch.equal(torch.zeros(50, dtype=torch.long).index_add_(0, active.row, active.masked(
        torch.ones(active.nnz)).long()), (dense > 0).sum(1))
    assert torch.equal(active.fires(), (dense > 0).sum(0))
    assert torch.equal(active.pre_values, pre[active.row, active.col])


def test_batch_topk_reads_the_host_on_the_cpu_only_outside_device_path():
    pre = torch.randn(40, 30, generator=torch.Generator().manual_seed(0))
    assert kernels.batch_topk(pre, 2)[0].mask is None  # the CPU default: only the active pairs
    with kernels.device_path():
        assert kernels.batch_topk(pre, 2)[0].mask is not None  # what a GPU runs: B*k pairs and a mask
    with SyncRecorder() as syncs:
        kernels.batch_topk(pre, 2)
    assert not syncs.events, syncs.summary()
    with SyncRecorder() as syncs:
        kernels.batch_topk_host(pre, 2)
    assert syncs.events  # the host path does read back: the recorder sees it


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed-shapes", "host-read"])
def test_batch_topk_with_few_positive_values_keeps_only_positive(fixed):
    pre = -torch.ones(6, 5)
    pre[0, 0] = 2.0
    with selection_path(fixed):
        active, thr = kernels.batch_topk(pre, 2)
    assert int(active.count()) == 1 and float(thr) == 0.0
    assert torch.equal(active.dense(pre), pre.relu())


def test_row_topk_matches_reference_and_is_csr_sorted():
    pre = torch.randn(20, 30, generator=torch.Generator().manual_seed(0)) - 0.8
    active = kernels.row_topk(pre, 5)
    dense = active.dense(pre)
    assert torch.equal(dense, ref_row_topk(pre, 5))
    for b in range(20):
        cols = active.col[active.crow[b]:active.crow[b + 1]]
        assert torch.all(cols[1:] > cols[:-1])


# ------------------------------------------------------------------- inference interface


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka", "topk", "relu"])
@pytest.mark.parametrize("encoder_input", ["x", "residual"])
def test_encode_decode_forward_match_reference(arch, encoder_input):
    sae = make_sae(arch, rank=3, encoder_input=encoder_input)
    x = data()
    pre = ref_pre(sae, x)
    with torch.no_grad():
        codes = sae.encode(x)
        if arch == "topk":
            expected = ref_row_topk(pre, sae.cfg.k)
        elif arch == "relu":
            expected = pre.relu()
        else:  # JumpReLU at inference
            expected = pre * (pre > 0.4)
        assert torch.allclose(codes, expected, atol=1e-5)
        if arch in ("batchtopk", "matryoshka"):
            assert torch.allclose(sae.encode(x, batch_topk=True), ref_batch_topk(pre, sae.cfg.k), atol=1e-5)
        out = sae(x)
        scaffold = ref_scaffold(sae, x)
        sparse = sum(codes[:, i:i + 1] * sae.W_dec[i] for i in range(M))
        assert torch.allclose(out.scaffold_out, scaffold, atol=1e-5)
        assert torch.allclose(sae.scaffold(x), scaffold, atol=1e-5)
        assert torch.allclose(out.sparse_out, sparse, atol=1e-5)
        assert torch.allclose(out.x_hat, sae.b_dec + scaffold + sparse, atol=1e-5)
        assert torch.allclose(sae.decode(codes, x), out.x_hat, atol=1e-5)
        assert torch.allclose(sae.scaffold_codes(x), (x - sae.b_dec) @ sae.V, atol=1e-5)


def test_rank_zero_is_plain_sae():
    sae = make_sae(rank=0)
    x = data()
    with torch.no_grad():
        out = sae(x)
        assert sae.scaffold_codes(x).shape == (32, 0)
        assert torch.equal(out.scaffold_out, torch.zeros_like(x))
        assert torch.allclose(out.x_hat, sae.encode(x) @ sae.W_dec + sae.b_dec, atol=1e-6)


# ------------------------------------------------------------------- training loss


def ref_loss(sae: HybridSAE, x: torch.Tensor, dead: torch.Tensor | None) -> torch.Tensor:
    """The training loss written out densely from the definitions."""
    cfg = sae.cfg
    n, d = x.shape
    pre = ref_pre(sae, x)
    if cfg.arch == "relu":
        codes = pre.relu()
    elif cfg.arch == "topk":
        codes = ref_row_topk(pre, cfg.k)
    else:
        codes = ref_batch_topk(pre, cfg.k)
    base = sae.b_dec + ref_scaffold(sae, x)
    x_hat = base + codes @ sae.W_dec
    if cfg.arch == "matryoshka":
        mse = sum(((base + codes[:, :w] @ sae.W_dec[:w] - x) ** 2).sum() / (n * d)
                  for w in cfg.prefix_widths()) / len(cfg.prefix_widths())
    else:
        mse = ((x_hat - x) ** 2).sum() / (n * d)
    loss = mse
    if cfg.arch == "relu":
        loss = loss + cfg.l1_coeff * (codes * sae.W_dec.norm(dim=1)).sum() / n
    if dead is not None and cfg.arch != "relu" and dead.any():
        masked = torch.where(dead, pre, torch.full_like(pre, -1e9))
        aux_codes = ref_row_topk(masked, min(cfg.effective_aux_k, int(dead.sum())))
        e = (x - x_hat).detach()
        aux = ((aux_codes @ sae.W_dec - e) ** 2).sum() / ((e - e.mean(0)) ** 2).sum()
        loss = loss + cfg.aux_coeff * aux
    return loss


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka", "topk", "relu"])
@pytest.mark.parametrize("use_dead", [False, True])
def test_loss_matches_reference(arch, use_dead):
    sae = make_sae(arch, rank=2, encoder_input="residual", matryoshka_widths=(5, 10, 20, 40)
                   if arch == "matryoshka" else None)
    x = data()
    dead = torch.zeros(M, dtype=torch.bool)
    dead[::3] = True
    d = dead if use_dead else None
    out = sae.loss(x, dead=d, fast=True)
    assert float(out.loss) == pytest.approx(float(ref_loss(sae, x, d)), rel=1e-4)
    if use_dead and arch != "relu":
        assert float(out.aux) > 0


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka", "topk"])
@pytest.mark.parametrize("encoder_input", ["x", "residual"])
@pytest.mark.parametrize("tied", [False, True])
def test_fast_kernels_match_dense_gradients(arch, encoder_input, tied):
    x = data(64)
    dead = torch.zeros(M, dtype=torch.bool)
    dead[1::4] = True
    grads = []
    for fast in (True, False):
        sae = make_sae(arch, rank=3, encoder_input=encoder_input, scaffold_tied=tied)
        out = sae.loss(x, dead=dead, fast=fast)
        out.loss.backward()
        grads.append((float(out.loss), {n: p.grad.clone() for n, p in sae.named_parameters()}))
    (l_fast, g_fast), (l_dense, g_dense) = grads
    assert l_fast == pytest.approx(l_dense, rel=1e-5)
    for name in g_dense:
        assert torch.allclose(g_fast[name], g_dense[name], atol=1e-6, rtol=1e-4), name


def test_constraints_and_decoder_grad_projection():
    sae = make_sae(rank=3, scaffold_tied=True)
    x = data()
    sae.loss(x).loss.backward()
    sae.project_decoder_grad()
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(M), atol=1e-6)
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
        sae.U.add_(0.5)
    sae.apply_constraints()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(M), atol=1e-5)
    assert torch.allclose(sae.U.t() @ sae.U, torch.eye(3), atol=1e-5)


def test_folded_model_on_raw_inputs_matches_scaled_model():
    for arch in ("batchtopk", "topk", "relu"):
        sae = make_sae(arch, rank=3, encoder_input="residual")
        x = data()
        scale = 0.37
        with torch.no_grad():
            raw = sae.folded(scale)(x)
            scaled = sae(x * scale)
        assert torch.allclose(raw.x_hat, scaled.x_hat / scale, atol=1e-5)
        assert torch.equal(raw.codes > 0, scaled.codes > 0)


def test_init_helpers_match_references():
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(200, 3, generator=g) + torch.tensor([1.0, -2.0, 0.5])
    med = geometric_median(pts, iters=500)
    objective = lambda c: (pts - c).norm(dim=1).sum()  # noqa: E731
    for delta in (torch.eye(3) * 1e-2):
        assert objective(med) <= objective(med + delta) and objective(med) <= objective(med - delta)
    sample = torch.randn(500, 6, generator=g) * torch.tensor([5.0, 1, 1, 3, 1, 1])
    basis = pca_basis(sample, sample.mean(0), 2)
    assert set(basis.abs().argmax(0).tolist()) == {0, 3}
    q = orthonormalise(torch.randn(6, 3, generator=g))
    assert torch.allclose(q.t() @ q, torch.eye(3), atol=1e-5)


@pytest.mark.parametrize("kwargs, field, allowed", [
    ({"arch": "gated"}, "arch", "batchtopk, matryoshka, topk, relu"),
    ({"scaffold_init": "svd"}, "scaffold_init", "pca, random"),
    ({"encoder_input": "both"}, "encoder_input", "x, residual"),
    ({"k": 0}, "k", "1..width"),
    ({"rank": 12}, "rank", "0..11"),
    ({"arch": "matryoshka", "matryoshka_widths": (10, 5, 40)}, "matryoshka_widths", "strictly increasing"),
])
def test_bad_configs_name_field_and_allowed_values(kwargs, field, allowed):
    cfg = SAEConfig(**{"d_in": D, "width": M, **kwargs})
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    assert field in str(info.value) and allowed in str(info.value)
    assert "\n" not in str(info.value)


def test_uncentred_scaffold_acts_on_x():
    """scaffold_centred=False: the scaffold term is U V^T x (it carries its share of the mean), everywhere the term
    is used: forward, scaffold(), the training loss and the residual the encoder sees."""
    g = torch.Generator().manual_seed(0)
    cfg = SAEConfig(arch="batchtopk", d_in=10, width=24, k=3, rank=2, encoder_input="residual",
                    scaffold_centred=False)
    sae = HybridSAE(cfg, g)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(10, generator=g))
        sae.U.add_(0.2 * torch.randn(10, 2, generator=g))
    x = torch.randn(6, 10, generator=g) + 3.0
    term = x @ sae.V @ sae.U.t()
    out = sae(x, batch_topk=True)
    assert torch.allclose(out.scaffold_out, term, atol=1e-5) and torch.allclose(sae.scaffold(x), term, atol=1e-5)
    assert torch.allclose(sae.scaffold_codes(x), x @ sae.V, atol=1e-5)
    pre = (x - sae.b_dec - term) @ sae.encoder_weight.t() + sae.b_enc
    assert torch.allclose(sae.pre_activations(x), pre, atol=1e-4)
    with torch.no_grad():
        sae.W_dec.zero_()                         # no sparse output: the training reconstruction is b_dec + term
    assert torch.allclose(sae.loss(x, fast=False).x_hat, sae.b_dec + term, atol=1e-4)
    centred = HybridSAE(SAEConfig(**{**cfg.__dict__, "scaffold_centred": True}), torch.Generator().manual_seed(0))
    centred.load_state_dict(sae.state_dict())
    assert torch.allclose(centred.scaffold(x), (x - sae.b_dec) @ sae.V @ sae.U.t(), atol=1e-5)
    assert SAEConfig().scaffold_centred is True


def test_an_uncentred_scaffold_starts_where_the_centred_one_does():
    """Without the b_dec correction the scaffold's share of the centre would be counted twice at initialisation."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, 10, generator=g) + 20.0
    b = x.mean(0)
    basis = orthonormalise(torch.randn(10, 2, generator=g))
    outs = []
    for centred in (True, False):
        sae = HybridSAE(SAEConfig(arch="batchtopk", d_in=10, width=24, k=3, rank=2, encoder_input="residual",
                                  scaffold_centred=centred), torch.Generator().manual_seed(0))
        sae.set_scaffold(basis)
        with torch.no_grad():
            sae.b_dec.copy_(b)
        sae.start_uncentred_at_centre()
        outs.append(sae(x, batch_topk=True))
    assert torch.allclose(outs[0].x_hat, outs[1].x_hat, atol=1e-4)
    assert torch.equal(outs[0].codes != 0, outs[1].codes != 0)
