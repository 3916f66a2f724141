"""Topic, faithfully: probes trained on clean activations and held fixed, read after each ablation.

The paper says removing the scaffold drops MMLU topic classification from 98.7% to chance, while ablating 2,048
topic-aligned sparse features leaves it unchanged. A probe retrained on the ablated activations cannot test that (it
reads the topic from the other d - r dimensions), so here a multiclass probe per read layer is fitted once, on clean
mean-pooled activations of training documents, and evaluated on disjoint test documents after each ablation at layer
L: (a) at layer L itself and (b) at later layers (e.g. L+3 and the last block) after the ablation has propagated.
Ablations reuse the causal ablation table's edits (zero / mean per position class, means from the fit contexts); the
control ablates (zero, error kept) the baseline SAE latents most aligned with the layer-L probe. Accuracies carry a
paired bootstrap 95% interval over test documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from scaffold_sae import probing
from scaffold_sae.analyses.ablation_table import (ClassReference, component_edit, parse_choices, rows_edit)
from scaffold_sae.analyses.base import AnalysisContext, register
from scaffold_sae.analyses.codes import firing_density
from scaffold_sae.analyses.redundancy import latent_edit
from scaffold_sae.evals import DENSE
from scaffold_sae.lm_passes import ResidEdit, eval_mask, position_class_rows, residuals_after
from scaffold_sae.report import Section, Table, format_number
from scaffold_sae.sae import random_orthonormal
from scaffold_sae.stats import Estimate, paired_bootstrap

PAPER_CONTROL_SHARE = 2048 / 16_384
"""The paper's 2,048 topic-aligned features of a 16,384-latent dictionary."""


@dataclass
class TopicConfig:
    """Settings of the fixed-probe topic analysis (primary hybrid and the baseline SAE)."""

    topic_datasets: str = "bbc_topic,language"
    """Comma-separated labelled datasets (scaffold_sae.probing.DATASETS); empty disables the analysis."""
    topic_docs: int = 200
    """Documents per dataset (balanced over classes); 30% are test documents, never used to fit."""
    topic_tokens: int = 64
    """Tokens per document, BOS included."""
    topic_read_after: str = "0,3,last"
    """Blocks after the ablated layer L to read the probe at: offsets from L, and 'last' for the final block."""
    topic_operators: str = "zero,mean"
    """Operators of the ablations (zero, mean)."""
    topic_positions: str = "ordinary,all"
    """Edited positions (ordinary, all)."""


@dataclass
class TopicReadout:
    """Accuracy of a fixed clean-trained probe after one ablation, read at one layer."""

    dataset: str
    condition: str
    """clean | subject:operator:positions | aligned_latents:N."""
    read_layer: int
    accuracy: Estimate
    chance: float


@dataclass
class TopicDifference:
    """Accuracy after one ablation minus accuracy after another, on the same test documents and read layer."""

    dataset: str
    condition: str
    """scaffold:operator:positions."""
    against: str
    """pca:... or random:... under the same operator and positions."""
    read_layer: int
    difference: Estimate
    """Paired bootstrap 95% interval over test documents."""


@dataclass
class TopicResult:
    sae: str
    baseline: str
    rank: int
    layer: int
    readouts: list[TopicReadout]
    train_docs: dict[str, int]
    test_docs: dict[str, int]
    control_latents: int
    """Baseline latents most aligned with the layer-L probe ablated in the control."""
    differences: list[TopicDifference] = field(default_factory=list)
    """The scaffold against the top-r PCs and random directions under the same edit (paired over documents)."""
    control_dense: dict[str, int] = field(default_factory=dict)
    """dataset -> dense baseline latents (> DENSE of held-out tokens) among the control's; the second control
    (aligned_sparse_latents) takes the most aligned latents with the dense ones left out."""


def tokenise(lm, texts: list[str], max_tokens: int) -> list[list[int]]:
    """BOS + the first max_tokens - 1 tokens of each text (as the probing analysis pools them)."""
    from scaffold_sae.corpus import resolve_bos

    bos = resolve_bos(lm.tokenizer, lm.bos_token_id)
    return [[bos, *lm.tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens - 1]] for t in texts]


@torch.no_grad()
def pooled_after(lm, layer: int, docs: list[list[int]], conditions: dict[str, ResidEdit], read: list[int],
                 batch_size: int = 8, sink_factor: float = 10.0) -> dict[str, dict[int, np.ndarray]]:
    """condition -> read layer -> mean-pooled residual [n_docs, d] over each document's ordinary positions, with the
    residual after `layer` edited by the condition ('clean' included, unedited)."""
    pad = getattr(lm.tokenizer, "pad_token_id", None)
    pad = docs[0][0] if pad is None else pad
    d = lm.d_model
    names = ["clean", *conditions]
    sums = {c: {j: torch.zeros(len(docs), d, dtype=torch.float64) for j in read} for c in names}
    counts = torch.zeros(len(docs), dtype=torch.float64)
    order = sorted(range(len(docs)), key=lambda i: len(docs[i]))
    later = [j for j in read if j > layer]
    for index, start in enumerate(range(0, len(order), batch_size)):
        rows = order[start:start + batch_size]
        batch, valid = probing.padded_batch([docs[i] for i in rows], pad)
        resid = lm.residual(batch, layer)
        ordinary = eval_mask(lm, resid, batch, sink_factor) & valid.to(resid.device)
        doc = torch.tensor(rows).unsqueeze(1).expand(-1, batch.shape[1])[ordinary.cpu()]
        counts.index_add_(0, doc, torch.ones(doc.numel(), dtype=torch.float64))
        for name in names:
            edited = resid if name == "clean" else conditions[name](resid, ordinary, index)
            out = residuals_after(lm, batch, layer, edited, later) if later else {}
            out[layer] = edited
            for j in read:
                sums[name][j].index_add_(0, doc, out[j][ordinary].double().cpu())
    denom = counts.clamp_min(1.0).unsqueeze(1)
    return {c: {j: (v / denom).numpy() for j, v in per.items()} for c, per in sums.items()}


def fixed_probe_readouts(features: dict[str, dict[int, np.ndarray]], labels: np.ndarray, train: np.ndarray,
                         test: np.ndarray, dataset: str, seed: int = 0, n_boot: int = 2000):
    """Fit one probe per read layer on the clean features of the train documents; evaluate it, unchanged, on the test
    documents of every condition. Returns (readouts, the probes by read layer, the scaffold's paired differences
    from the top-r PCs and from random directions under the same edit)."""
    probes = {j: probing.fit_probe(x[train], labels[train], seed) for j, x in features["clean"].items()}
    chance = float(np.bincount(labels[test]).max() / len(test))
    names = list(features)
    columns = [np.ones(len(test))]
    keys = []
    for name in names:
        for j, probe in probes.items():
            columns.append((probe.predict(features[name][j][test]) == labels[test]).astype(float))
            keys.append((name, j))
    pairs = [(a, b, j) for a, j in keys if a.startswith("scaffold:")
             for b in ("pca" + a[len("scaffold"):], "random" + a[len("scaffold"):]) if (b, j) in keys]
    col = {key: i + 1 for i, key in enumerate(keys)}
    first = np.array([col[(a, j)] for a, _, j in pairs], dtype=int)
    second = np.array([col[(b, j)] for _, b, j in pairs], dtype=int)

    def statistic(s: np.ndarray) -> np.ndarray:
        return np.concatenate([s[..., 1:], s[..., first] - s[..., second]], -1) / s[..., :1]

    est = paired_bootstrap(np.stack(columns, 1), statistic, n_boot, seed)
    readouts = [TopicReadout(dataset, name, j, e, chance) for (name, j), e in zip(keys, est)]
    differences = [TopicDifference(dataset, a, b, j, e) for (a, b, j), e in zip(pairs, est[len(keys):])]
    return readouts, probes, differences


def probe_aligned_latents(probe, w_dec: torch.Tensor, n: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """The n decoder rows with the largest share of their direction in the row space of the probe's class weights
    (in raw activation space: the standardiser's scale divided out), skipping rows where `exclude` (bool [m]) is set."""
    scaler, model = probe[0], probe[-1]
    w = np.atleast_2d(model.coef_) / scaler.scale_[None, :]
    q, _ = np.linalg.qr(w.T)
    dec = w_dec.detach().double().cpu().numpy()
    share = ((dec @ q) ** 2).sum(1) / np.maximum((dec ** 2).sum(1), 1e-300)
    order = np.argsort(-share, kind="stable")
    if exclude is not None:
        order = order[~exclude.cpu().numpy()[order]]
    return torch.from_numpy(order[:n].copy())


def read_layers(layer: int, n_layers: int, spec: str) -> list[int]:
    out = set()
    for item in (t.strip() for t in spec.split(",") if t.strip()):
        j = n_layers - 1 if item == "last" else layer + int(item)
        if layer <= j < n_layers:
            out.add(j)
    return sorted(out)


def run(context: AnalysisContext, config: TopicConfig) -> TopicResult | None:
    datasets = [d.strip() for d in config.topic_datasets.split(",") if d.strip()]
    if not datasets or config.topic_docs <= 0 or not context.hybrids():
        return None
    from sklearn.model_selection import train_test_split

    name = context.primary_hybrid()
    sae, base = context.saes[name], context.saes[context.baseline]
    r, layer, shared = int(sae.cfg.rank), context.layer, context.shared
    operators = parse_choices(config.topic_operators, ("zero", "mean"), "topic_operators")
    positions = parse_choices(config.topic_positions, ("ordinary", "all"), "topic_positions")
    ref = ClassReference(*position_class_rows(context.lm, layer, context.fit_contexts, shared.analysis_tokens,
                                              shared.harvest_batch_size, shared.sink_factor), shared.seed)
    q_pca = context.pca.vectors[:, :r].float()
    q_rand = random_orthonormal(q_pca.shape[0], r, torch.Generator().manual_seed(1000 + shared.seed))
    subjects = {"scaffold": (sae.U, sae.V), "pca": (q_pca, q_pca), "random": (q_rand, q_rand)}
    conditions = {f"{s}:{op}:{pos}": component_edit(left, right, op, pos, ref.reference(op))
                  for s, (left, right) in subjects.items() for op in operators for pos in positions}
    reads = read_layers(layer, context.lm.n_layers, config.topic_read_after)
    n_control = max(1, int(round(PAPER_CONTROL_SHARE * int(base.cfg.width))))
    mode = probing.inference_mode(base)
    dense = firing_density(base, context.activations, mode) > DENSE
    readouts, differences, train_docs, test_docs, control_dense = [], [], {}, {}, {}
    for dataset in datasets:
        data = probing.load_dataset(dataset, config.topic_docs, shared.seed)
        labels = np.asarray(data.labels)
        train, test = train_test_split(np.arange(len(labels)), test_size=0.3, random_state=shared.seed,
                                       stratify=labels)
        docs = tokenise(context.lm, data.texts, config.topic_tokens)
        features = pooled_after(context.lm, layer, docs, conditions, reads, shared.harvest_batch_size,
                                shared.sink_factor)
        found, probes, found_differences = fixed_probe_readouts(features, labels, train, test, dataset, shared.seed)
        differences += found_differences
        aligned = probe_aligned_latents(probes[layer], base.W_dec, n_control)
        sparse = probe_aligned_latents(probes[layer], base.W_dec, n_control, exclude=dense)
        control_dense[dataset] = int(dense[aligned].sum())
        control = {f"{name}:{n_control}": rows_edit(latent_edit(base, chosen, "zero", torch.zeros(1), mode), "ordinary")
                   for name, chosen in (("aligned_latents", aligned), ("aligned_sparse_latents", sparse))}
        extra = pooled_after(context.lm, layer, docs, control, reads, shared.harvest_batch_size, shared.sink_factor)
        extra_readouts, _, _ = fixed_probe_readouts(extra, labels, train, test, dataset, shared.seed)
        readouts += found + [o for o in extra_readouts if o.condition != "clean"]
        train_docs[dataset], test_docs[dataset] = int(len(train)), int(len(test))
    return TopicResult(name, context.baseline, r, layer, readouts, train_docs, test_docs, n_control, differences,
                       control_dense)


def sections(result: TopicResult) -> list[Section]:
    def iv(e: Estimate) -> str:
        return f"{format_number(e.value)} [{format_number(e.low)}, {format_number(e.high)}]"

    layers = sorted({o.read_layer for o in result.readouts})
    tables = []
    for dataset in dict.fromkeys(o.dataset for o in result.readouts):
        rows = {}
        for o in result.readouts:
            if o.dataset == dataset:
                rows.setdefault(o.condition, {})[o.read_layer] = o
        chance = next(o.chance for o in result.readouts if o.dataset == dataset)
        tables.append(Table(["ablation at layer %d" % result.layer, *[f"read at layer {j}" for j in layers]],
                            [[c, *[iv(v[j].accuracy) if j in v else None for j in layers]] for c, v in rows.items()],
                            caption=f"{dataset}: fixed probes trained on clean activations of "
                                    f"{result.train_docs[dataset]} documents, tested on {result.test_docs[dataset]} "
                                    f"others; chance (majority class) {format_number(chance)}"))
    if result.differences:
        tables.append(Table(["dataset", "scaffold removed", "against", "read at layer", "accuracy difference",
                             "scaffold leaves"],
                            [[d.dataset, d.condition, d.against, d.read_layer, iv(d.difference),
                              "less" if d.difference.high < 0 else "more" if d.difference.low > 0 else "undecided"]
                             for d in result.differences],
                            caption="the scaffold's ablation minus the same ablation of the top-r PCs or of r random "
                                    "directions, on the same test documents (paired bootstrap 95%)"))
    text = ("Topic, faithfully: does removing the scaffold take the topic away? (Paper: MMLU topic 98.7% -> chance "
            "without the scaffold; 2,048 topic-aligned features ablated: unchanged.) Probes are trained once on clean "
            "activations and held fixed; each ablation at layer L is read at L and at later layers after it has "
            f"propagated. The control zero-ablates the {result.control_latents} latents of {result.baseline} (the "
            "paper's 2,048/16,384 share) most aligned with the layer-L probe, keeping the SAE error; the second "
            f"control (aligned_sparse_latents) takes the most aligned latents that are not dense (> {DENSE:g} of "
            "held-out tokens): dense latents picked by the first control carry much of the activation and can take the "
            "topic with them (results/RESULTS.md H18). Dense latents among the first control's: "
            + (", ".join(f"{k} {v}" for k, v in result.control_dense.items()) or "not recorded")
            + ". Intervals: paired bootstrap 95% over test documents.")
    return [Section("Topic with fixed probes", text, tables=tables)]


register("topic_ablation", TopicConfig, TopicResult, run, sections)
