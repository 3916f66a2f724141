"""Topic, faithfully: probes trained on clean activations and held fixed, read after each ablation.

The paper says removing the scaffold drops MMLU topic classification from 98.7% to chance, while ablating 2,048
topic-aligned sparse features leaves it unchanged. A probe retrained on the ablated activations cannot test that (it
reads the topic from the other d - r dimensions), so here a multiclass probe per read layer is fitted once, on clean
mean-pooled activations of training documents, and evaluated on disjoint test documents after each ablation at layer
L: (a) at layer L itself and (b) at later layers (e.g. L+3 and the last block) after the ablation has propagated.
Ablations reuse the causal ablation table's edits (zero / mean per position class, means from the fit contexts); the
control ablates (zero, error kept) the baseline SAE latents most aligned with the layer-L probe. Accuracies carry a
paired bootstrap 95% interval over test documents; the random-directions condition is the mean over
topic_random_bases bases drawn afresh for each seed, and its interval resamples bases as well as documents
(stats.crossed_bootstrap). The scaffold's accuracy minus the top-r PCs' and minus random directions' (same edit, same
test documents) is what a verdict needs: the scaffold's drop is specific only if it beats both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from scaffold_sae import probing
from scaffold_sae.analyses.ablation_table import (ClassReference, component_edit, parse_choices, random_bases,
                                                  rows_edit)
from scaffold_sae.analyses.base import AnalysisContext, AnalysisError, register
from scaffold_sae.analyses.codes import firing_density
from scaffold_sae.analyses.redundancy import latent_edit
from scaffold_sae.evals import DENSE
from scaffold_sae.lm_passes import ResidEdit, eval_mask, position_class_rows, residuals_after
from scaffold_sae.report import Section, Table, format_number
from scaffold_sae.stats import Estimate, crossed_bootstrap

PAPER_CONTROL_SHARE = 2048 / 16_384
"""The paper's 2,048 topic-aligned features of a 16,384-latent dictionary."""
DRAW = "#"
"""A condition named "<condition>#<i>" is draw i of several (random bases) that are read as one condition."""


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
    topic_random_bases: int = 10
    """Random r-dimensional bases of the random-directions condition, drawn afresh for each seed (the same bases as
    the causal ablation table's); each adds a condition per operator and position set."""


@dataclass
class TopicReadout:
    """Accuracy of a fixed clean-trained probe after one ablation, read at one layer."""

    dataset: str
    condition: str
    """clean | subject:operator:positions | aligned_latents:N."""
    read_layer: int
    accuracy: Estimate
    chance: float
    per_basis: list[float] | None = None
    """Random directions only: each basis's accuracy (the accuracy is their mean; its interval resamples bases and
    documents)."""


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
    """Paired bootstrap 95% interval over test documents (against random directions: over bases and documents)."""


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
    random_bases: int = 1
    """Random bases behind the random-directions condition (results written before this field used one)."""
    seed: int = 0
    """The seed of the documents' split, the random bases and the bootstrap."""


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
    documents of every condition. Conditions named "<name>#<i>" are draws (random bases) of one condition <name>: its
    accuracy is their mean and its interval resamples draws and documents. Returns (readouts, the probes by read
    layer, the scaffold's paired differences from the top-r PCs and from random directions under the same edit)."""
    probes = {j: probing.fit_probe(x[train], labels[train], seed) for j, x in features["clean"].items()}
    chance = float(np.bincount(labels[test]).max() / len(test))
    draws: dict[str, list[str]] = {}
    for name in features:
        draws.setdefault(name.split(DRAW)[0], []).append(name)
    several = {name: found for name, found in draws.items() if DRAW in found[0]}
    counts = {len(found) for found in several.values()}
    if len(counts) > 1:
        raise ValueError(f"conditions with draws need the same number of draws, got {sorted(counts)}")
    n_draws = counts.pop() if counts else 1

    def right(name: str, j: int) -> np.ndarray:
        return (probes[j].predict(features[name][j][test]) == labels[test]).astype(float)

    once = [(name, j) for name in draws if name not in several for j in probes]
    crossed = [(name, j) for name in several for j in probes]
    values = np.stack([np.ones(len(test)), *[right(name, j) for name, j in once]], 1)
    grouped = np.zeros((n_draws, len(test), len(crossed)))
    for c, (name, j) in enumerate(crossed):
        grouped[:, :, c] = np.stack([right(draw, j) for draw in several[name]])
    col = {key: 1 + i for i, key in enumerate(once)} | {key: values.shape[1] + c for c, key in enumerate(crossed)}
    keys = [(name, j) for name in draws for j in probes]
    pairs = [(a, b, j) for a, j in keys if a.startswith("scaffold:")
             for b in ("pca" + a[len("scaffold"):], "random" + a[len("scaffold"):]) if (b, j) in col]
    own = np.array([col[key] for key in keys], dtype=int)
    first = np.array([col[(a, j)] for a, _, j in pairs], dtype=int)
    second = np.array([col[(b, j)] for _, b, j in pairs], dtype=int)

    def statistic(s: np.ndarray) -> np.ndarray:
        return np.concatenate([s[..., own], s[..., first] - s[..., second]], -1) / s[..., :1]

    est = crossed_bootstrap(values, grouped, statistic, n_boot, seed)
    per_draw = {key: [float(v) for v in grouped[:, :, c].mean(1)] for c, key in enumerate(crossed)}
    readouts = [TopicReadout(dataset, name, j, e, chance, per_draw.get((name, j))) for (name, j), e in zip(keys, est)]
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
    if config.topic_random_bases < 1:
        raise AnalysisError(f"topic_random_bases={config.topic_random_bases} is invalid: give at least 1 (10 or more "
                            "for an interval that carries the spread over bases)")
    q_pca = context.pca.vectors[:, :r].float()
    subjects = {"scaffold": (sae.U, sae.V), "pca": (q_pca, q_pca),
                **{f"random{DRAW}{i}": (q, q) for i, q in enumerate(random_bases(q_pca.shape[0], r,
                                                                                  config.topic_random_bases,
                                                                                  shared.seed))}}
    conditions = {condition_name(s, op, pos): component_edit(left, right, op, pos, ref.reference(op))
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
                       control_dense, config.topic_random_bases, int(shared.seed))


def condition_name(subject: str, operator: str, positions: str) -> str:
    """subject:operator:positions, with a random basis's draw index ("random#3") moved to the end."""
    base, _, draw = subject.partition(DRAW)
    return f"{base}:{operator}:{positions}" + (f"{DRAW}{draw}" if draw else "")


def specific_drops(result: TopicResult) -> dict[tuple[str, str, int], tuple[str, str]]:
    """(dataset, scaffold condition, read layer) -> whether its accuracy lies below the top-r PCs' and below random
    directions' (each 'yes' when the whole paired interval is below 0, 'no' otherwise, 'not run' without that
    control)."""
    out = {}
    for d in result.differences:
        key = (d.dataset, d.condition, d.read_layer)
        words = dict(zip(("pca", "random"), out.get(key, ("not run", "not run"))))
        words[d.against.split(":")[0]] = "yes" if d.difference.high < 0 else "no"
        out[key] = (words["pca"], words["random"])
    return out


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
                                    "directions, on the same test documents (paired bootstrap 95%; against random "
                                    f"directions the {result.random_bases} bases are resampled too)"))
        beats = specific_drops(result)
        tables.append(Table(["dataset", "scaffold removed", "read at layer", "below the top-r PCs",
                             "below random directions", "drop specific to the scaffold"],
                            [[*key, *words, "yes" if words == ("yes", "yes") else "no"]
                             for key, words in beats.items()],
                            caption="the scaffold's drop counts as specific only where it leaves less topic accuracy "
                                    "than both controls (whole interval of each paired difference below 0)"))
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
