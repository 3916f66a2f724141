"""Feature browser: the streaming top-n, densities and logit effects against slow references, the site's files,
and the site in a real headless Chromium."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scaffold_sae import browse
from scaffold_sae.browse import BrowseConfig, TopContexts, best_positions, build_site, windows


@pytest.fixture(scope="module")
def tiny_sae(tiny_lm, tiny_corpus, tmp_path_factory):
    """A batchtopk SAE with a rank-2 scaffold trained for a few steps on layer 1 of the tiny Llama."""
    from scaffold_sae.cache import harvest
    from scaffold_sae.sae import SAEConfig
    from scaffold_sae.saving import load_sae
    from scaffold_sae.trainer import TrainConfig, train_saes

    root = tmp_path_factory.mktemp("browse")
    cache = harvest(tiny_lm, 1, str(tiny_corpus), 2048, root / "cache", ctx_len=32, progress=False)
    train = TrainConfig(tokens=256 * 8, batch_size=256, progress=False, checkpoint_every=0, log_every=4,
                        init_sample_tokens=1024, threshold_sample_tokens=1024, dead_tokens=256, lr=3e-3)
    [path] = train_saes(cache, [SAEConfig(arch="batchtopk", width=48, k=4, rank=2)], train, root / "saes")
    return path, load_sae(path).eval()


@pytest.fixture(scope="module")
def heldout(tiny_lm, tiny_corpus):
    from scaffold_sae.corpus import load_corpus, pack_contexts

    return pack_contexts(tiny_lm.tokenizer, load_corpus(str(tiny_corpus)), ctx_len=24, n_tokens=24 * 20,
                         split="heldout", bos_id=tiny_lm.bos_token_id)


@pytest.fixture(scope="module")
def site(tiny_sae, tiny_lm, heldout, tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    cfg = BrowseConfig(top_n=5, batch_size=6, progress=False)
    index = build_site(tiny_sae[1], tiny_lm, 1, heldout, out, cfg)
    return index, json.loads((out / "site.json").read_text())


def test_top_contexts_keeps_exactly_the_top_n_of_a_stream():
    g = torch.Generator().manual_seed(0)
    width, n, window, seen = 7, 5, 3, []
    top = TopContexts(width, n, window)
    start = 0
    for b in (4, 1, 9, 3, 6):
        scores = torch.rand(b, width, generator=g)
        positions = torch.randint(0, 30, (b, width), generator=g)
        wins = torch.rand(b, width, window, generator=g)
        top.update(scores, torch.arange(start, start + b), positions, wins)
        seen += [(start + r, scores[r], positions[r], wins[r]) for r in range(b)]
        start += b
    for j in range(width):
        reference = sorted(((float(s[j]), c, int(p[j]), w[j].tolist()) for c, s, p, w in seen), reverse=True)[:n]
        kept = top.column(j)
        assert [(c, p) for _, c, p, _ in kept] == [(c, p) for _, c, p, _ in reference]
        for (v, _, _, w), (rv, _, _, rw) in zip(kept, reference):
            assert v == pytest.approx(rv) and w == pytest.approx(rw)


def test_top_contexts_with_fewer_contexts_than_n():
    top = TopContexts(2, 4, 1)
    top.update(torch.tensor([[1.0, 2.0]]), torch.tensor([7]), torch.tensor([[3, 4]]), torch.ones(1, 2, 1))
    assert [(c, p) for _, c, p, _ in top.column(1)] == [(7, 4)]


def test_best_positions_and_windows_match_a_loop():
    g = torch.Generator().manual_seed(1)
    codes = torch.rand(3, 9, 4, generator=g)
    keep = torch.rand(3, 9, generator=g) > 0.3
    keep[:, 0] = False
    scores, positions = best_positions(codes, keep)
    wins = windows(codes, positions, 2, 1)
    for b in range(3):
        for j in range(4):
            kept = [t for t in range(9) if keep[b, t]]
            best = max(kept, key=lambda t: float(codes[b, t, j]))
            assert int(positions[b, j]) == best and float(scores[b, j]) == float(codes[b, best, j])
            expect = [float(codes[b, t, j]) if 0 <= t < 9 else 0.0 for t in range(best - 2, best + 2)]
            assert wins[b, j].tolist() == pytest.approx(expect)


def test_log_histogram_matches_numpy():
    import numpy as np

    g = torch.Generator().manual_seed(2)
    values = torch.rand(500, generator=g).pow(4) * 50 + 1e-6
    cols = torch.randint(0, 3, (500,), generator=g)
    counts = browse.log_histogram(values, cols, 3)
    edges = np.linspace(browse.HIST_LOG10_MIN, browse.HIST_LOG10_MAX, browse.HIST_BINS + 1)
    for j in range(3):
        logs = np.clip(np.log10(values[cols == j].double().numpy()), edges[0], edges[-1])  # clipped into end bins
        ref, _ = np.histogram(logs, bins=edges)
        assert counts[j].tolist() == ref.tolist()


def test_logit_effects_match_an_explicit_rmsnorm_and_unembedding(tiny_lm, tiny_sae):
    sae = tiny_sae[1]
    norm, head = browse.final_norm_and_head(tiny_lm)
    assert norm is tiny_lm.hf_model.model.norm and head is tiny_lm.hf_model.lm_head
    effects = browse.logit_effects(sae.W_dec.detach(), norm, head)
    gain, eps, w_u = norm.weight.detach(), norm.variance_epsilon, head.weight.detach()
    d = sae.W_dec.shape[1]
    for i in range(sae.W_dec.shape[0]):
        w = sae.W_dec[i].detach().double()
        v = w / w.norm() * math.sqrt(d)
        ref = (w_u.double() @ (gain.double() * v / torch.sqrt(v.pow(2).mean() + eps))).float()
        assert torch.allclose(effects[i], ref, atol=1e-4, rtol=1e-4)
    pos_v, pos_i, neg_v, neg_i = browse.top_logit_effects(sae.W_dec.detach(), norm, head, n=5, chunk=7)
    assert torch.equal(pos_i, effects.topk(5, dim=1).indices) and torch.equal(neg_i, (-effects).topk(5, dim=1).indices)


def test_site_densities_match_evals_and_the_files_are_complete(site, tiny_sae, tiny_lm, heldout):
    from scaffold_sae.evals import evaluate

    index, data = site
    core = evaluate(tiny_sae[1], tiny_lm, 1, heldout, batch_size=6, progress=False)
    assert [row["density"] for row in data["latents"]] == pytest.approx(core.density, abs=1e-6)
    assert data["meta"]["n_tokens"] == core.n_tokens and data["meta"]["dense_10"] == core.dense_10
    assert data["meta"]["elapsed_s"] > 0 and len(data["scaffold"]) == 2
    out = index.parent
    assert {p.name for p in out.iterdir()} == {"index.html", "app.js", "style.css", "site.json", "data"}
    assert (out / "data" / "latents-0000.js").read_text().startswith("BROWSE.chunk(0, ")
    assert "http" not in (out / "index.html").read_text() and "http://" not in (out / "app.js").read_text().replace(
        "http://www.w3.org/2000/svg", "")
    for direction in data["scaffold"]:
        assert set(direction["mean_abs_by_position"]) == {"bos", "sink", "ordinary"}
        assert direction["position_counts"]["bos"] == heldout.shape[0]
        assert [c["value"] for c in direction["top"]] == sorted((c["value"] for c in direction["top"]), reverse=True)
