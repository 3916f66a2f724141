"""Probing on real labelled text (datasets, pooling and probes in scaffold_sae.probing): SAEBench k-sparse probing,
the headline probing metric, for every SAE and the residual baseline over several stratified train/test splits,
with bootstrap intervals over test documents and a paired test of each SAE against the plain one; TPP (secondary:
known to be unreliable) and the scaffold topic probe for every hybrid.

Statistics of sparse probing, per dataset and for the mean over datasets:
- accuracy: test accuracy averaged over the one-vs-rest tasks and then over the splits; sd = the sample sd of the
  per-split accuracies; the 95% interval resamples test documents with replacement (stats.group_mean_bootstrap:
  one draw of documents serves every split, task and SAE);
- paired difference (an SAE minus the plain SAE, same test documents, same tasks): per test document and task the
  difference of the two probes' correctness, averaged like the accuracy; its interval resamples the same documents
  for both SAEs, per split and for the mean over splits; verdict better / worse when the 95% interval of the mean
  over splits lies above / below 0, undecided when it contains 0.
The PCA-deflation SAEs of the study (AnalysisContext.controls) are probed beside the hybrids, paired against the plain
SAE and against the hybrid of the same rank, so that a probing gain is credited to the scaffold only where the hybrid
beats the SAE that merely has the top-r PCs projected out.
The intervals cover the test-document sampling of one dataset sample, not the choice of datasets, and are not
corrected for the number of comparisons (SAEs x k x datasets).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from scaffold_sae.analyses.base import AnalysisContext, register
from scaffold_sae.lm_passes import DEFAULT_SINK_FACTOR
from scaffold_sae.probing import (ProbingError, fit_probe, load_dataset, multiclass_accuracy, one_vs_rest_tasks,
                                  pool_activations, sparse_probe_correct, stratified_splits, tpp_scores)
from scaffold_sae.report import Figure, Section, Series, Table, format_number
from scaffold_sae.stats import Estimate, group_mean_bootstrap, sd

MEAN = "mean"
"""The dataset name of the rows averaged over the probed datasets."""


@dataclass
class ProbingConfig:
    """Settings of the probing analysis in the study (its bootstrap resamples: analyses.bootstrap_samples)."""

    probe_datasets: str = "bbc_topic,sentiment,language"
    """Comma-separated probing datasets: bbc_topic, sentiment, language (empty disables probing)."""
    probe_docs: int = 200
    """Documents per probing dataset, balanced over classes (0 disables probing)."""
    probe_tokens: int = 64
    """Tokens per probing document, BOS included."""
    probe_splits: int = 5
    """Stratified random train/test splits (70/30) of the probing documents; results are mean +- sd over them."""
    probe_ks: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20])
    """Sparse-probing k values (latents per probe)."""


@dataclass
class ProbeConfig:
    """Sizes of one probing run."""

    datasets: list[str] = field(default_factory=lambda: ["bbc_topic", "sentiment", "language"])
    """Datasets to probe (see scaffold_sae.probing.DATASETS)."""
    n_docs: int = 250
    """Documents per dataset (balanced over classes)."""
    max_tokens: int = 64
    """Tokens per document, BOS included."""
    ks: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20])
    """Sparse-probing k values."""
    n_splits: int = 5
    """Stratified random train/test splits (split s seeded by (seed, s))."""
    test_frac: float = 0.3
    """Share of each class's documents in the test part of a split."""
    n_boot: int = 2000
    """Bootstrap resamples of the test documents."""
    tpp_n: list[int] = field(default_factory=lambda: [2, 5, 10, 20, 50])
    """TPP: numbers of latents ablated."""
    topic_dataset: str = "bbc_topic"
    """Dataset of the scaffold topic probe."""
    seed: int = 0
    """Seed of the document sample, the splits, the probes and the bootstrap."""
    sink_factor: float = DEFAULT_SINK_FACTOR
    """Attention sinks (norm above this multiple of the context median) are not pooled."""
    batch_size: int = 8
    """Documents per LM forward."""

    @staticmethod
    def upgrade_json(data: dict) -> dict:
        """Settings written before the splits: one split, no bootstrap."""
        return {"n_splits": 1, "n_boot": 0, **data}


@dataclass
class DatasetInfo:
    classes: list[str]
    documents: int
    """Documents with at least one pooled token."""
    mean_tokens: float
    """Mean pooled tokens per document."""
    tasks: int = 0
    """One-vs-rest tasks (1 for a binary dataset)."""
    test_documents: int = 0
    """Distinct test documents of the tasks, per split (the smallest over splits)."""
    skipped: str = ""
    """Why the dataset was not probed ("" when it was)."""


@dataclass
class SparseProbeScore:
    dataset: str
    """A dataset, or 'mean' for the mean over the probed datasets."""
    features: str
    """An SAE's name, or 'residual' for the residual-dimension baseline."""
    rank: int | None
    k: int
    accuracy: Estimate
    """Test accuracy averaged over the one-vs-rest tasks and the splits, with its 95% bootstrap interval over test
    documents."""
    sd: float | None
    """Sample sd of the per-split accuracies (None with one split)."""
    per_split: list[float]

    @staticmethod
    def upgrade_json(data: dict) -> dict:
        """A score written before the splits: one accuracy, no interval."""
        if isinstance(data.get("accuracy"), (int, float)):
            acc = data["accuracy"]
            data = {"sd": None, "per_split": [acc], **data, "accuracy": {"value": acc, "low": None, "high": None}}
        return data


@dataclass
class PairedDifference:
    """Sparse-probing accuracy of `sae` minus that of `baseline` on the same test documents and tasks."""

    dataset: str
    sae: str
    baseline: str
    rank: int
    k: int
    difference: Estimate
    """Mean over splits, with the paired 95% bootstrap interval over test documents."""
    sd: float | None
    """Sample sd of the per-split differences (None with one split)."""
    per_split: list[Estimate]
    """Each split's difference with its own paired interval."""
    verdict: str
    """better (interval above 0), worse (below 0) or undecided (it contains 0)."""


@dataclass
class TPPScore:
    dataset: str
    sae: str
    rank: int
    n_ablated: int
    score: float
    """Mean over splits."""
    score_sd: float | None
    """Sample sd over splits (None with one split)."""
    target_drop: float
    other_drop: float

    @staticmethod
    def upgrade_json(data: dict) -> dict:
        return {"score_sd": None, **data}


@dataclass
class TopicProbeScore:
    dataset: str
    sae: str
    rank: int
    features: str
    """scaffold_coords | full | scaffold_removed | pca_coords | pca_removed."""
    accuracy: float
    """Mean over splits."""
    sd: float | None
    """Sample sd over splits (None with one split)."""
    chance: float

    @staticmethod
    def upgrade_json(data: dict) -> dict:
        return {"sd": None, **data}


@dataclass
class ProbingResult:
    datasets: dict[str, DatasetInfo]
    l0: dict[str, dict[str, float]]
    """Per dataset and SAE: mean active latents per pooled token (per-token threshold codes)."""
    sparse: list[SparseProbeScore]
    paired: list[PairedDifference]
    tpp: list[TPPScore]
    topic: list[TopicProbeScore]
    config: ProbeConfig
    controls: dict[str, str] = field(default_factory=dict)
    """Control SAE (PCA deflation) -> the hybrid of the same rank it is paired against (besides the plain SAE)."""

    @staticmethod
    def upgrade_json(data: dict) -> dict:
        """Results written before the paired test have none."""
        return {"paired": [], **data}


@dataclass
class ProbeOutcomes:
    """One dataset's sparse-probing outcomes: which documents each (split, task) tests and which each probe got
    right."""

    tested: np.ndarray
    """[documents, splits, tasks] 1 where the document is a test document of the task in the split."""
    correct: dict[tuple[str, int], np.ndarray]
    """(features, k) -> [documents, splits, tasks] 1 where that probe classified the test document correctly."""


def _sd(values: list[float]) -> float | None:
    return sd(values)


def verdict(difference: Estimate) -> str:
    """better / worse when the interval lies above / below 0, undecided when it contains 0."""
    return "better" if difference.low > 0 else "worse" if difference.high < 0 else "undecided"


def _estimates(parts: list[ProbeOutcomes], quantities: list[tuple[str, int, str | None]], n_boot: int,
               seed: int) -> list[list[Estimate]]:
    """Per quantity (features, k, minus features or None): [mean over splits, split 0, split 1, ...], the mean over
    `parts` (datasets) of the tasks' mean accuracy (or paired difference), documents of all parts resampled."""
    n_splits = parts[0].tested.shape[1]
    rows = sum(p.tested.shape[0] for p in parts)
    groups = sum(p.tested.shape[1] * p.tested.shape[2] for p in parts)
    numerators = np.zeros((rows, len(quantities), groups))
    counts = np.zeros((rows, groups))
    weights = np.zeros((1 + n_splits, groups))
    row = col = 0
    for part in parts:
        n, s, t = part.tested.shape
        counts[row:row + n, col:col + s * t] = part.tested.reshape(n, s * t)
        for i, (feat, k, minus) in enumerate(quantities):
            value = part.correct[(feat, k)] - (part.correct[(minus, k)] if minus is not None else 0.0)
            numerators[row:row + n, i, col:col + s * t] = value.reshape(n, s * t)
        weights[0, col:col + s * t] = 1.0 / (len(parts) * s * t)
        for split in range(s):
            weights[1 + split, col + split * t:col + (split + 1) * t] = 1.0 / (len(parts) * t)
        row, col = row + n, col + s * t
    # rounded to 1e-12 so that an exact zero (or 1) summed from fractions reads as one in the report
    return [[Estimate(*(round(v, 12) for v in (e.value, e.low, e.high))) for e in estimates]
            for estimates in group_mean_bootstrap(numerators, counts, weights, n_boot, seed)]


def summarise(outcomes: dict[str, ProbeOutcomes], ranks: dict[str, int | None], baseline: str | None,
              cfg: ProbeConfig, against: Mapping[str, str] | None = None
              ) -> tuple[list[SparseProbeScore], list[PairedDifference]]:
    """Accuracy of every feature set (`ranks`: name -> rank, None for the residual) and the paired difference of
    every SAE minus `baseline`, and of each SAE in `against` minus the SAE it names (a PCA-deflation SAE minus the
    hybrid of its rank), per dataset and, with several datasets, for their mean (MEAN)."""
    features = list(ranks)
    others = [f for f in features if f not in ("residual", baseline)] if baseline in ranks else []
    quantities = ([(f, k, None) for f in features for k in cfg.ks]
                  + [(f, k, baseline) for f in others for k in cfg.ks]
                  + [(f, k, other) for f, other in (against or {}).items() for k in cfg.ks])
    from scaffold_sae.probing_sources import is_source_name

    groups = {name: [part] for name, part in outcomes.items()}
    pooled = [part for name, part in outcomes.items() if not is_source_name(name)]  # a source's tasks: breadth()
    if len(pooled) > 1:
        groups[MEAN] = pooled
    sparse, paired = [], []
    for dataset, parts in groups.items():
        for (feat, k, minus), (total, *splits) in zip(quantities, _estimates(parts, quantities, cfg.n_boot, cfg.seed)):
            values = [e.value for e in splits]
            if minus is None:
                sparse.append(SparseProbeScore(dataset, feat, ranks[feat], k, total, _sd(values), values))
            else:
                paired.append(PairedDifference(dataset, feat, minus, int(ranks[feat] or 0), k, total, _sd(values),
                                               splits, verdict(total)))
    return sparse, paired


def run_probing(lm, layer: int, saes: Mapping[str, object], baseline_name: str | None = None,
                cfg: ProbeConfig | None = None, pca_basis: torch.Tensor | None = None,
                progress: bool = False, controls: Mapping[str, object] | None = None) -> ProbingResult:
    """Sparse probing (every SAE and the residual baseline, each SAE paired against `baseline_name`) and TPP on each
    dataset over cfg.n_splits stratified splits; the topic probe for every hybrid on cfg.topic_dataset.
    `pca_basis` [d, >= r] (top PCs first) adds the PCA comparison rows. `controls` (PCA-deflation SAEs) are probed
    like the SAEs and also paired against the hybrid of their rank in `saes`."""
    cfg = cfg or ProbeConfig()
    controls = dict(controls or {})
    hybrid_of = {int(s.cfg.rank): n for n, s in saes.items() if int(s.cfg.rank) > 0}
    against = {n: hybrid_of[int(s.cfg.rank)] for n, s in controls.items() if int(s.cfg.rank) in hybrid_of}
    topic_saes, saes = saes, {**saes, **controls}
    info, l0s, tpp, topic, outcomes = {}, {}, [], [], {}
    ranks: dict[str, int | None] = {"residual": None, **{n: int(s.cfg.rank) for n, s in saes.items()}}
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
        try:  # e.g. a tokenizer that maps this text to special tokens only leaves too few documents
            splits = stratified_splits(labels, cfg.n_splits, cfg.test_frac, cfg.seed)
            split_tasks = [one_vs_rest_tasks(labels, len(data.classes), split, (cfg.seed, s))
                           for s, split in enumerate(splits)]
        except ProbingError as error:
            info[name].skipped = str(error)
            continue
        info[name].tasks = len(split_tasks[0])
        info[name].test_documents = min(len(set(np.concatenate([t.test for t in tasks]))) for tasks in split_tasks)
        codes = {n: pooled.codes[n].double().numpy()[ok] for n in saes}
        with threadpool_limits(limits=1, user_api="blas"):  # tiny fits: BLAS threads only add overhead
            outcomes[name], scores = _sparse_and_tpp(name, resid, codes, split_tasks, saes, ranks, cfg)
            tpp += scores
            if name == cfg.topic_dataset:
                topic += _topic_probes(name, resid, labels, topic_saes, splits, pca_basis, cfg.seed)
    sparse, paired = summarise(outcomes, ranks, baseline_name, cfg, against) if outcomes else ([], [])
    return ProbingResult(info, l0s, sparse, paired, tpp, topic, cfg, against)


def _sparse_and_tpp(dataset: str, resid: np.ndarray, codes: Mapping[str, np.ndarray], split_tasks: list,
                    saes: Mapping[str, object], ranks: dict[str, int | None], cfg: ProbeConfig
                    ) -> tuple[ProbeOutcomes, list[TPPScore]]:
    """Every sparse probe's correctness on every test document of every split and task, and TPP per SAE (mean over
    splits; datasets with at least 3 one-vs-rest tasks)."""
    n_tasks = len(split_tasks[0])
    tested = np.zeros((resid.shape[0], len(split_tasks), n_tasks))
    for s, tasks in enumerate(split_tasks):
        for t, task in enumerate(tasks):
            tested[task.test, s, t] = 1.0
    correct: dict[tuple[str, int], np.ndarray] = {}
    tpp = []
    resid_probes = ([[fit_probe(resid[t.train], t.train_y, cfg.seed) for t in tasks] for tasks in split_tasks]
                    if n_tasks >= 3 and saes else None)
    for fname, feats in {"residual": resid, **codes}.items():
        for s, tasks in enumerate(split_tasks):
            for t, task in enumerate(tasks):
                for k, right in sparse_probe_correct(feats, task, cfg.ks, cfg.seed).items():
                    correct.setdefault((fname, k), np.zeros_like(tested))[task.test, s, t] = right
        if fname in saes and resid_probes is not None:
            w_dec = saes[fname].W_dec.detach().double().cpu().numpy()
            per_split = [tpp_scores(resid, feats, w_dec, tasks, cfg.tpp_n, cfg.seed, probes)
                         for tasks, probes in zip(split_tasks, resid_probes)]
            for n in cfg.tpp_n:
                score, target, other = (np.array([scores[n][i] for scores in per_split]) for i in range(3))
                tpp.append(TPPScore(dataset, fname, int(ranks[fname]), n, float(score.mean()), _sd(list(score)),
                                    float(target.mean()), float(other.mean())))
    return ProbeOutcomes(tested, correct), tpp


def _topic_probes(dataset: str, resid: np.ndarray, labels: np.ndarray, saes: Mapping[str, object], splits: list,
                  pca_basis: torch.Tensor | None, seed: int) -> list[TopicProbeScore]:
    chance = float(np.bincount(labels).max() / len(labels))
    out, full = [], None
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
            if vname == "full" and full is not None:
                accs = full  # the same features for every hybrid
            else:
                accs = [multiclass_accuracy(feats, labels, split, seed) for split in splits]
                full = accs if vname == "full" else full
            out.append(TopicProbeScore(dataset, sname, r, vname, float(np.mean(accs)), _sd(accs), chance))
    return out


def run(context: AnalysisContext, config: ProbingConfig) -> ProbingResult | None:
    """Probing of every SAE of the study (None when the config disables it)."""
    from scaffold_sae import probing_sources

    datasets = probing_sources.expand([d.strip() for d in str(config.probe_datasets or "").split(",") if d.strip()])
    if not datasets or config.probe_docs <= 0:
        return None
    shared = context.shared
    probe_cfg = ProbeConfig(datasets=datasets, n_docs=config.probe_docs, max_tokens=config.probe_tokens,
                            ks=sorted(set(int(k) for k in config.probe_ks)), n_splits=config.probe_splits,
                            n_boot=shared.bootstrap_samples, seed=shared.seed, sink_factor=shared.sink_factor,
                            batch_size=shared.harvest_batch_size)
    return run_probing(context.lm, context.layer, context.saes, context.baseline, probe_cfg,
                       pca_basis=context.pca.vectors, progress=context.progress, controls=context.controls)


# ---------------------------------------------------------------------------------------------- report


def _cell(value: float, sd: float | None = None, interval: Estimate | None = None) -> str:
    text = format_number(value)
    if sd is not None:
        text += f" ± {format_number(sd)}"
    if interval is not None:
        text += f" [{format_number(interval.low)}, {format_number(interval.high)}]"
    return text


def beats(d: PairedDifference) -> str:
    """Which of the two SAEs of a paired difference probes better (by its 95% interval), in words."""
    return {"better": f"{d.sae} beats {d.baseline}", "worse": f"{d.baseline} beats {d.sae}",
            "undecided": "neither (interval contains 0)"}[d.verdict]


def _split_verdicts(d: PairedDifference) -> str:
    words = [verdict(e) for e in d.per_split]
    return ", ".join(f"{words.count(w)} {w}" for w in ("better", "worse", "undecided") if w in words)


def sections(result: ProbingResult) -> list[Section]:
    from scaffold_sae import probing_sources

    sparse, cfg = result.sparse, result.config
    names = list(dict.fromkeys(s.features for s in sparse))
    # a probing source's tasks (e.g. the 111 of sae_probes:binary>=1000) get the breadth sections, not a column each
    datasets = [d for d in dict.fromkeys(s.dataset for s in sparse) if not probing_sources.is_source_name(d)]
    ks = sorted({s.k for s in sparse})
    score = {(s.dataset, s.features, s.k): s for s in sparse}
    splits = f"{cfg.n_splits} stratified {round(100 * (1 - cfg.test_frac))}/{round(100 * cfg.test_frac)} splits"
    rows = []
    for feat in names:
        rank = next(s.rank for s in sparse if s.features == feat)
        for k in ks:
            cells = [score.get((d, feat, k)) for d in datasets]
            rows.append([feat, "-" if rank is None else rank, k,
                         *[_cell(c.accuracy.value, c.sd, c.accuracy) if c else None for c in cells]])
    accuracy = Table(["features", "rank", "k", *datasets], rows,
                     caption=f"Sparse probing test accuracy, mean ± sd over {splits} [95% interval over test "
                             f"documents]; one-vs-rest tasks averaged per dataset; '{MEAN}' averages the datasets")
    lead = MEAN if MEAN in datasets else None  # the mean over datasets leads; per-dataset rows follow
    versus = [d for d in result.paired if result.controls.get(d.sae) == d.baseline]
    plain = [d for d in result.paired if result.controls.get(d.sae) != d.baseline]
    head = [d for d in plain if lead is None or d.dataset == lead]
    paired_columns = ["SAE", "rank", "minus", "k", "dataset", "difference [95% interval]", "sd over splits",
                      "splits", "verdict"]

    def paired_rows(items: list[PairedDifference]) -> list[list]:
        return [[d.sae, d.rank, d.baseline, d.k, d.dataset, _cell(d.difference.value, None, d.difference), d.sd,
                 _split_verdicts(d), d.verdict] for d in items]

    tables = [accuracy]
    if result.paired:
        tables.append(Table(paired_columns, paired_rows(head),
                            caption="Paired difference in sparse-probing accuracy (SAE minus the plain SAE, same test "
                                    "documents), mean over splits; verdict from the 95% interval"))
        rest = [d for d in plain if lead is not None and d.dataset != lead]
        if rest:
            tables.append(Table(paired_columns, paired_rows(rest), caption="The same per dataset"))
    if versus:
        tables.append(Table(["PCA-deflation SAE", "hybrid", "rank", "k", "dataset", "difference [95% interval]",
                             "sd over splits", "splits", "which beats which"],
                            [[d.sae, d.baseline, d.rank, d.k, d.dataset, _cell(d.difference.value, None, d.difference),
                              d.sd, _split_verdicts(d), beats(d)] for d in versus],
                            caption="The PCA-deflation SAE (top-r PCs projected out, no trained scaffold) minus the "
                                    "hybrid of the same rank, same test documents: a probing gain is the scaffold's "
                                    "only where the hybrid beats it"))
    info = Table(["dataset", "classes", "documents", "mean pooled tokens / doc", "one-vs-rest tasks",
                  "test documents per split", "skipped"],
                 [[d, ", ".join(v.classes), v.documents, v.mean_tokens, v.tasks, v.test_documents, v.skipped]
                  for d, v in result.datasets.items()])
    saes = list(dict.fromkeys(n for v in result.l0.values() for n in v))
    l0 = Table(["dataset", *saes], [[d, *[v.get(n) for n in saes]] for d, v in result.l0.items()],
               caption="Active latents per pooled token (per-token threshold codes; each SAE's threshold was "
                       "calibrated to L0 = k on training tokens)")
    settings = Table(["setting", "value"], [[k, ", ".join(map(str, v)) if isinstance(v, list) else v]
                                            for k, v in asdict(cfg).items()], caption="Probing settings")
    top = MEAN if MEAN in datasets else (datasets[0] if datasets else None)
    figures = [Figure(f"Sparse probing accuracy vs k ({top})",
                      [Series(feat, [k for k in ks if (top, feat, k) in score],
                              [score[(top, feat, k)].accuracy.value for k in ks if (top, feat, k) in score])
                       for feat in names],
                      xlabel="k", ylabel="accuracy")] if sparse else []
    out = [Section("Sparse probing", "SAEBench k-sparse probing on real labelled text, the headline probing metric: "
                   "each probe sees only the k latents with the largest mean difference between its classes on the "
                   "train documents; the top-k residual dimensions are the baseline. Codes are per-token: each SAE's "
                   "own encoder with its exported JumpReLU threshold (TopK: its per-token top-k), so a document's "
                   "code does not depend on the documents batched with it. Every probe is refitted on each of "
                   f"{splits}; the paired test compares each SAE with the plain one on the same test documents. The "
                   "intervals are per comparison, not corrected for the number of SAEs, k values and datasets.",
                   tables=[*tables, info, l0, settings], figures=figures)]
    if sparse and cfg.n_splits > 1:
        split_cols = [f"split {s + 1}" for s in range(cfg.n_splits)]
        per_split = Table(["dataset", "features", "k", *split_cols],
                          [[s.dataset, s.features, s.k, *s.per_split] for s in sparse
                           if not probing_sources.is_source_name(s.dataset)],
                          caption="Sparse probing test accuracy per split")
        split_tables = [per_split]
        if result.paired:
            split_tables.append(Table(["dataset", "SAE", "minus", "k", *split_cols],
                                      [[d.dataset, d.sae, d.baseline, d.k,
                                        *[_cell(e.value, None, e) for e in d.per_split]] for d in result.paired],
                                      caption="Paired difference per split [95% interval over that split's test "
                                              "documents]"))
        out.append(Section("Sparse probing per split", "Each split's numbers behind the means above.",
                           tables=split_tables))
    if result.tpp:
        tpp_rows = [[t.dataset, t.sae, t.rank, t.n_ablated, _cell(t.score, t.score_sd), t.target_drop, t.other_drop]
                    for t in result.tpp]
        out.append(Section("Targeted probe perturbation (TPP, secondary)",
                           "SAEBench TPP: ablating the latents most tied to one class should hurt that class's "
                           "probe and leave the others alone; score = target drop minus mean other drop "
                           "(higher is better). Datasets with at least 3 classes. TPP is known to be unreliable at "
                           "its canonical settings (Chanin 2026, 'Are SAE Benchmarks Reliable?', arXiv 2605.18229: "
                           "it gets worse the longer an SAE trains), so it is reported for completeness; k-sparse "
                           "probing above is the headline.",
                           tables=[Table(["dataset", "SAE", "rank", "latents ablated", "TPP score (mean ± sd over "
                                          "splits)", "target accuracy drop", "other accuracy drop"], tpp_rows)]))
    if result.topic:
        topic_rows = [[t.sae, t.rank, t.features, _cell(t.accuracy, t.sd), t.chance] for t in result.topic]
        out.append(Section("Topic probe on the scaffold",
                           "A multiclass probe of the document topic from the r scaffold coordinates alone, "
                           "from the full pooled activations and from the activations with the scaffold "
                           "removed (paper, MMLU topics: 98.7% with the scaffold, chance without); the top-r "
                           "PCA coordinates and their removal are the comparison.",
                           tables=[Table(["SAE", "rank", "features", "test accuracy (mean ± sd over splits)",
                                          "chance"], topic_rows, caption=f"dataset: {cfg.topic_dataset}")]))
    return out + probing_sources.breadth_sections(probing_sources.breadth(result))


register("probing", ProbingConfig, ProbingResult, run, sections)
