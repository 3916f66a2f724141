"""Fixed-probe topic readout: probes fitted once on clean activations, read after edits at later layers."""

import numpy as np
import pytest
import torch

from scaffold_sae.analyses import ablation_table as at
from scaffold_sae.analyses import topic_ablation as ta
from scaffold_sae.probing import fit_probe


def two_topic_docs(tokenizer, n=40, seed=0):
    """Class 0 documents use the first 20 words of the tiny vocabulary, class 1 the next 20."""
    rng = np.random.default_rng(seed)
    vocab = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]) if t.isalpha()]
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = vocab[20 * label:20 * label + 20]
        texts.append(" ".join(rng.choice(words, size=rng.integers(8, 14))))
        labels.append(label)
    return texts, np.array(labels)


def test_fixed_probes_read_edits_at_the_layer_and_after_it(tiny_lm):
    texts, labels = two_topic_docs(tiny_lm.tokenizer)
    docs = ta.tokenise(tiny_lm, texts, 16)
    conditions = {"identity": lambda resid, ordinary, index: resid,
                  "residual:zero": at.component_edit(None, None, "zero", "ordinary", None)}
    features = ta.pooled_after(tiny_lm, 0, docs, conditions, [0, 1], batch_size=8, sink_factor=0)
    assert set(features) == {"clean", "identity", "residual:zero"}
    assert np.allclose(features["residual:zero"][0], 0.0)                       # nothing left at layer 0
    train, test = np.arange(28), np.arange(28, 40)            # classes alternate: both sides balanced
    readouts, probes, differences = ta.fixed_probe_readouts(features, labels, train, test, "toy", n_boot=100)
    assert differences == []                                  # no scaffold condition, nothing to pair
    acc = {(o.condition, o.read_layer): o.accuracy.value for o in readouts}
    assert acc[("clean", 0)] > 0.9 and acc[("identity", 0)] == acc[("clean", 0)]
    assert acc[("identity", 1)] == acc[("clean", 1)]
    # all-zero features: the fixed probe answers one class for every document, so accuracy is that class's share
    constant = probes[0].predict(np.zeros((1, tiny_lm.d_model)))[0]
    assert acc[("residual:zero", 0)] == np.mean(labels[test] == constant)
    # a probe refitted on the edited features could not do this: the readout never refits
    assert acc[("residual:zero", 1)] <= acc[("clean", 1)]
    assert {o.chance for o in readouts} == {0.5}


def test_probe_aligned_latents_and_read_layers():
    g = np.random.default_rng(0)
    x = g.normal(size=(60, 6))
    y = (x[:, 2] > 0).astype(int)
    probe = fit_probe(x, y)
    w_dec = torch.eye(6, dtype=torch.float64)
    top = ta.probe_aligned_latents(probe, w_dec, 1)
    assert top.tolist() == [2]                                # the axis the probe reads
    ranked = ta.probe_aligned_latents(probe, w_dec, 6)
    skip = torch.zeros(6, dtype=torch.bool)
    skip[[2, ranked[2].item()]] = True                         # e.g. dense latents: left out, order kept
    kept = ta.probe_aligned_latents(probe, w_dec, 3, exclude=skip)
    assert kept.tolist() == [i for i in ranked.tolist() if not skip[i]][:3]
    assert ta.read_layers(9, 18, "0,3,last") == [9, 12, 17]
    assert ta.read_layers(16, 18, "0,3,last") == [16, 17]


def test_topic_analysis_runs_in_the_protocol_and_round_trips(tiny_lm):
    from scaffold_sae import analyses
    from scaffold_sae.sae import HybridSAE, SAEConfig
    from test_analysis import tiny_cfg

    d = tiny_lm.d_model
    ids = torch.randint(4, 100, (8, 16), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 2
    hybrid = HybridSAE(SAEConfig(arch="batchtopk", d_in=d, width=32, k=4, rank=2)).eval()
    saes = {"r0": HybridSAE(SAEConfig(arch="batchtopk", d_in=d, width=32, k=4, rank=0)).eval(), "r2": hybrid}
    cfg = tiny_cfg(topic_datasets="bbc_topic", topic_docs=20, topic_tokens=12, topic_operators="zero",
                   topic_positions="ordinary,all", topic_read_after="0,last", topic_random_bases=3)
    only = {n: a for n, a in analyses.registered().items() if n == "topic_ablation"}
    results, sections = analyses.run_analyses(tiny_lm, 0, saes, "r0", None, ids, cfg, progress=False, analyses=only)
    result = results["topic_ablation"]
    conditions = {o.condition for o in result.readouts}
    assert conditions == {"clean", "scaffold:zero:ordinary", "scaffold:zero:all", "pca:zero:ordinary",
                          "pca:zero:all", "random:zero:ordinary", "random:zero:all", "aligned_latents:4",
                          "aligned_sparse_latents:4"}
    assert 0 <= result.control_dense["bbc_topic"] <= 4
    assert result.random_bases == 3 and result.seed == 0
    for o in result.readouts:
        assert (o.per_basis is not None) == o.condition.startswith("random")
        if o.per_basis is not None:
            assert len(o.per_basis) == 3 and o.accuracy.value == pytest.approx(np.mean(o.per_basis))
    assert {o.read_layer for o in result.readouts} == {0, 1}
    assert result.train_docs["bbc_topic"] + result.test_docs["bbc_topic"] == 20
    assert analyses.from_json(ta.TopicResult, analyses.to_json(result)) == result
    assert sections[0].title == "Topic with fixed probes"
    beats = ta.specific_drops(result)
    assert set(beats) == {("bbc_topic", f"scaffold:zero:{p}", j) for p in ("ordinary", "all") for j in (0, 1)}
    assert all(set(words) <= {"yes", "no"} for words in beats.values())
    old = analyses.to_json(result)
    del old["random_bases"]
    assert analyses.from_json(ta.TopicResult, old).random_bases == 1          # written with one basis
    pairs = {(d.condition, d.against, d.read_layer) for d in result.differences}
    assert pairs == {(f"scaffold:zero:{p}", f"{s}:zero:{p}", j) for p in ("ordinary", "all") for s in ("pca", "random")
                     for j in (0, 1)}
    acc = {(o.condition, o.read_layer): o.accuracy.value for o in result.readouts}
    for d in result.differences:
        assert d.difference.value == pytest.approx(acc[(d.condition, d.read_layer)] - acc[(d.against, d.read_layer)])
        assert d.difference.low <= d.difference.value <= d.difference.high


def test_paired_differences_against_a_slow_reference():
    """The scaffold-minus-PCA accuracy interval resamples documents jointly: it equals a loop over resamples."""
    rng = np.random.default_rng(1)
    n, d = 60, 4
    labels = np.arange(n) % 2
    clean = rng.normal(size=(n, d)) + labels[:, None] * 2.0
    features = {"clean": {0: clean}, "scaffold:zero:all": {0: clean + rng.normal(size=(n, d)) * 1.5},
                "pca:zero:all": {0: clean + rng.normal(size=(n, d)) * 3.0}}
    train, test = np.arange(30), np.arange(30, 60)
    readouts, probes, (diff,) = ta.fixed_probe_readouts(features, labels, train, test, "toy", n_boot=300)
    right = {c: (probes[0].predict(features[c][0][test]) == labels[test]).astype(float) for c in features}
    delta = right["scaffold:zero:all"] - right["pca:zero:all"]
    assert diff.difference.value == pytest.approx(delta.mean())
    draws = np.random.default_rng(0).integers(0, len(test), size=(300, len(test)))   # stats.resample_weights' draws
    samples = np.array([delta[idx].mean() for idx in draws])
    low, high = np.percentile(samples, [2.5, 97.5])
    assert (diff.difference.low, diff.difference.high) == (pytest.approx(low), pytest.approx(high))


def test_random_draws_resample_bases_and_documents_against_a_nested_loop():
    """Three random bases read as one condition: accuracy = mean over bases; the interval of the scaffold minus random
    directions equals a loop that draws bases, then documents (the same documents for every column)."""
    rng = np.random.default_rng(2)
    n, d, g, n_boot = 60, 4, 3, 300
    labels = np.arange(n) % 2
    clean = rng.normal(size=(n, d)) + labels[:, None] * 2.0
    features = {"clean": {0: clean}, "scaffold:zero:all": {0: clean + rng.normal(size=(n, d)) * 2.0},
                "pca:zero:all": {0: clean + rng.normal(size=(n, d)) * 1.0},
                **{f"random:zero:all#{i}": {0: clean + rng.normal(size=(n, d)) * (0.5 + i)} for i in range(g)}}
    train, test = np.arange(30), np.arange(30, 60)
    readouts, probes, diffs = ta.fixed_probe_readouts(features, labels, train, test, "toy", seed=4, n_boot=n_boot)
    assert [o.condition for o in readouts] == ["clean", "scaffold:zero:all", "pca:zero:all", "random:zero:all"]
    right = {c: (probes[0].predict(features[c][0][test]) == labels[test]).astype(float) for c in features}
    random = readouts[-1]
    assert random.per_basis == pytest.approx([right[f"random:zero:all#{i}"].mean() for i in range(g)])
    assert random.accuracy.value == pytest.approx(np.mean(random.per_basis))
    against = {x.against: x.difference for x in diffs}
    assert set(against) == {"pca:zero:all", "random:zero:all"}
    doc_draws = np.random.default_rng(4).integers(0, len(test), size=(n_boot, len(test)))
    basis_draws = np.random.default_rng([4, 1]).integers(0, g, size=(n_boot, g))
    samples = []
    for docs, bases in zip(doc_draws, basis_draws):
        scaffold = sum(right["scaffold:zero:all"][j] for j in docs)
        rand = sum(sum(right[f"random:zero:all#{i}"][j] for j in docs) for i in bases) / g
        samples.append((scaffold - rand) / len(docs))
    low, high = np.percentile(samples, [2.5, 97.5])
    e = against["random:zero:all"]
    assert e.value == pytest.approx(right["scaffold:zero:all"].mean() - np.mean(random.per_basis))
    assert (e.low, e.high) == (pytest.approx(low), pytest.approx(high))
    with pytest.raises(ValueError, match="same number of draws"):
        ta.fixed_probe_readouts({**features, "random:mean:all#0": features["clean"]}, labels, train, test, "toy",
                                n_boot=10)
