"""Probing on real labelled text (datasets, pooling and probes in scaffold_sae.probing): SAEBench sparse probing and
TPP for every SAE and the residual baseline, and the scaffold topic probe for every hybrid."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping

import numpy as np
import torch

from scaffold_sae.analyses.base import AnalysisContext, register
from scaffold_sae.lm_passes import DEFAULT_SINK_FACTOR
from scaffold_sae.probing import (ProbingError, load_dataset, multiclass_accuracy, one_vs_rest_tasks,
                                  pool_activations, sparse_probe_accuracy, tpp_scores)
from scaffold_sae.report import Figure, Section, Series, Table


@dataclass
class ProbingConfig:
    """Settings of the probing analysis in the study (the study's probe_* fields)."""

    probe_datasets: str = "bbc_topic,sentiment,language"
    """Comma-separated probing datasets: bbc_topic, sentiment, language (empty disables probing)."""
    probe_docs: int = 200
    """Documents per probing dataset, balanced over classes (0 disables probing)."""
    probe_tokens: int = 64
    """Tokens per probing document, BOS included."""


@dataclass
class ProbeConfig:
    """Sizes of one probing run."""

    datasets: list[str] = field(default_factory=lambda: ["bbc_topic", "sentiment", "language"])
    """Datasets to probe (see scaffold_sae.probing.DATASETS)."""
    n_docs: int = 250
    """Documents per dataset (balanced over classes)."""
    max_tokens: int = 64
    """Tokens per document, BOS included."""
    ks: list[int] = field(default_factory=lambda: [1, 2, 5])
    """Sparse-probing k values."""
    tpp_n: list[int] = field(default_factory=lambda: [2, 5, 10, 20, 50])
    """TPP: numbers of latents ablated."""
    topic_dataset: str = "bbc_topic"
    """Dataset of the scaffold topic probe."""
    seed: int = 0
    """Seed of the document sample, the splits and the probes."""
    sink_factor: float = DEFAULT_SINK_FACTOR
    """Attention sinks (norm above this multiple of the context median) are not pooled."""
    batch_size: int = 8
    """Documents per LM forward."""


@dataclass
class DatasetInfo:
    classes: list[str]
    documents: int
    """Documents with at least one pooled token."""
    mean_tokens: float
    """Mean pooled tokens per document."""
    skipped: str = ""
    """Why the dataset was not probed ("" when it was)."""


@dataclass
class SparseProbeScore:
    dataset: str
    features: str
    """An SAE's name, or 'residual' for the residual-dimension baseline."""
    rank: int | None
    k: int
    accuracy: float
    """Test accuracy averaged over the one-vs-rest tasks."""


@dataclass
class TPPScore:
    dataset: str
    sae: str
    rank: int
    n_ablated: int
    score: float
    target_drop: float
    other_drop: float


@dataclass
class TopicProbeScore:
    dataset: str
    sae: str
    rank: int
    features: str
    """scaffold_coords | full | scaffold_removed | pca_coords | pca_removed."""
    accuracy: float
    chance: float


@dataclass
class ProbingResult:
    datasets: dict[str, DatasetInfo]
    l0: dict[str, dict[str, float]]
    """Per dataset and SAE: mean active latents per token while pooling."""
    sparse: list[SparseProbeScore]
    tpp: list[TPPScore]
    topic: list[TopicProbeScore]
    config: ProbeConfig


def run_probing(lm, layer: int, saes: Mapping[str, object], baseline_name: str | None = None,
                cfg: ProbeConfig | None = None, pca_basis: torch.Tensor | None = None,
                progress: bool = False) -> ProbingResult:
    """Sparse probing and TPP for every SAE and the residual baseline on each dataset; the topic probe for every
    hybrid on cfg.topic_dataset. `pca_basis` [d, >= r] (top PCs first) adds the PCA comparison rows."""
    cfg = cfg or ProbeConfig()
    info, l0s, sparse, tpp, topic = {}, {}, [], [], []
    for name in cfg.datasets:
        data = load_dataset(name, cfg.n_docs, cfg.seed)
        pooled = pool_activations(lm, layer, data.texts, saes, cfg.max_tokens, cfg.batch_size, cfg.sink_factor,
                                  progress)
        ok = (pooled.n_tokens > 0).numpy()
        labels = np.asarray(data.labels)[ok]
        resid = pooled.resid.double().numpy()[ok]
        info[name] = DatasetInfo(data.classes, int(ok.sum()),
                                 float(pooled.n_tokens[pooled.n_tokens > 0].mean()) if ok.any() else 0.0)
        l0s[name] = pooled.l0
        try:
            tasks = one_vs_rest_tasks(labels, len(data.classes), cfg.seed)
        except ProbingError as error:  # e.g. a tokenizer that maps this text to special tokens only
            info[name].skipped = str(error)
            continue
        feature_sets = {"residual": (None, resid, None),
                        **{n: (int(s.cfg.rank), pooled.codes[n].double().numpy()[ok],
                               s.W_dec.detach().double().cpu().numpy()) for n, s in saes.items()}}
        for fname, (rank, feats, w_dec) in feature_sets.items():
            for k in cfg.ks:
                acc = float(np.mean([sparse_probe_accuracy(feats, t, k, cfg.seed) for t in tasks]))
                sparse.append(SparseProbeScore(name, fname, rank, k, acc))
            if w_dec is not None and len(tasks) >= 3:
                for n, (score, target, other) in tpp_scores(resid, feats, w_dec, tasks, cfg.tpp_n, cfg.seed).items():
                    tpp.append(TPPScore(name, fname, rank, n, score, target, other))
        if name == cfg.topic_dataset:
            chance = float(np.bincount(labels).max() / len(labels))
            for sname, sae in saes.items():
                r = int(sae.cfg.rank)
                if r < 1:
                    continue
                u, v = sae.U.detach().double().cpu().numpy(), sae.V.detach().double().cpu().numpy()
                b = sae.b_dec.detach().double().cpu().numpy()
                variants = {"scaffold_coords": (resid - b) @ v, "full": resid,
                            "scaffold_removed": resid - (resid - b) @ v @ u.T}
                if pca_basis is not None:
                    q = pca_basis[:, :r].double().cpu().numpy()
                    mu = resid.mean(0)
                    variants["pca_coords"] = (resid - mu) @ q
                    variants["pca_removed"] = resid - (resid - mu) @ q @ q.T
                for vname, feats in variants.items():
                    topic.append(TopicProbeScore(name, sname, r, vname, multiclass_accuracy(feats, labels, cfg.seed),
                                                 chance))
    return ProbingResult(info, l0s, sparse, tpp, topic, cfg)


def run(context: AnalysisContext, config: ProbingConfig) -> ProbingResult | None:
    """Probing of every SAE of the study (None when the config disables it)."""
    datasets = [d.strip() for d in str(config.probe_datasets or "").split(",") if d.strip()]
    if not datasets or config.probe_docs <= 0:
        return None
    shared = context.shared
    probe_cfg = ProbeConfig(datasets=datasets, n_docs=config.probe_docs, max_tokens=config.probe_tokens,
                            seed=shared.seed, sink_factor=shared.sink_factor, batch_size=shared.harvest_batch_size)
    return run_probing(context.lm, context.layer, context.saes, context.baseline, probe_cfg,
                       pca_basis=context.pca.vectors, progress=context.progress)


def sections(result: ProbingResult) -> list[Section]:
    sparse = result.sparse
    names = list(dict.fromkeys(s.features for s in sparse))
    datasets = list(result.datasets)
    ks = sorted({s.k for s in sparse})
    lookup = {(s.dataset, s.features, s.k): s.accuracy for s in sparse}
    rows = []
    for feat in names:
        rank = next(s.rank for s in sparse if s.features == feat)
        for k in ks:
            accs = [lookup.get((d, feat, k)) for d in datasets]
            valid = [a for a in accs if a is not None]
            rows.append([feat, "-" if rank is None else rank, k, *accs, float(np.mean(valid)) if valid else None])
    sparse_table = Table(["features", "rank", "k", *datasets, "mean"], rows,
                         caption="Sparse probing test accuracy (one-vs-rest, averaged over classes)")
    info = Table(["dataset", "classes", "documents", "mean pooled tokens / doc", "skipped"],
                 [[d, ", ".join(v.classes), v.documents, v.mean_tokens, v.skipped] for d, v in result.datasets.items()])
    saes = list(dict.fromkeys(n for v in result.l0.values() for n in v))
    l0 = Table(["dataset", *saes], [[d, *[v.get(n) for n in saes]] for d, v in result.l0.items()],
               caption="Active latents per token while pooling (matched L0)")
    settings = Table(["setting", "value"], [[k, ", ".join(map(str, v)) if isinstance(v, list) else v]
                                            for k, v in asdict(result.config).items()], caption="Probing settings")
    figures = [Figure("Sparse probing accuracy vs k (mean over datasets)",
                      [Series(feat, ks, [next(r[-1] for r in rows if r[0] == feat and r[2] == k) for k in ks])
                       for feat in names], xlabel="k", ylabel="accuracy")] if rows else []
    out = [Section("Sparse probing", "SAEBench sparse probing on real labelled text at matched L0 (batch top-k "
                   "codes), with the top-k residual dimensions as the baseline. Each probe sees only k latents "
                   "chosen by their mean difference between classes on the train split.",
                   tables=[info, l0, settings, sparse_table], figures=figures)]
    if result.tpp:
        tpp_rows = [[t.dataset, t.sae, t.rank, t.n_ablated, t.score, t.target_drop, t.other_drop] for t in result.tpp]
        out.append(Section("Targeted probe perturbation (TPP)",
                           "SAEBench TPP: ablating the latents most tied to one class should hurt that class's "
                           "probe and leave the others alone; score = target drop minus mean other drop "
                           "(higher is better). Datasets with at least 3 classes.",
                           tables=[Table(["dataset", "SAE", "rank", "latents ablated", "TPP score",
                                          "target accuracy drop", "other accuracy drop"], tpp_rows)]))
    if result.topic:
        topic_rows = [[t.sae, t.rank, t.features, t.accuracy, t.chance] for t in result.topic]
        out.append(Section("Topic probe on the scaffold",
                           "A multiclass probe of the document topic from the r scaffold coordinates alone, "
                           "from the full pooled activations and from the activations with the scaffold "
                           "removed (paper, MMLU topics: 98.7% with the scaffold, chance without); the top-r "
                           "PCA coordinates and their removal are the comparison.",
                           tables=[Table(["SAE", "rank", "features", "test accuracy", "chance"], topic_rows,
                                         caption=f"dataset: {result.config.topic_dataset}")]))
    return out


register("probing", ProbingConfig, ProbingResult, run, sections)
