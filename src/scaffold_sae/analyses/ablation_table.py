"""The causal ablation table: what removing the scaffold does to next-token CE, under every reading of "remove".

A rank-r component A = L R^T of a residual row x (scaffold as trained: L = U, R = V, oblique; a subspace with
orthonormal basis Q: L = R = Q; the whole residual: A = I) is removed by one operator:
    zero:      x - A x              the component set to zero (massive dimensions go to 0);
    mean:      x - A (x - mu)       the component set to its mean over fit tokens of the same position class;
    resample:  x - A (x - x')       the component taken from another token x' of the same class (fit tokens).
Position classes: ordinary tokens (lm_passes.eval_mask) and special ones (position 0 / BOS, special tokens,
attention sinks), so that "mean" gives BOS the BOS mean, as in Sun et al. 2024. Positions edited: "ordinary" (BOS and
sinks keep their values) or "all". The scaffold-only rows splice the SAE without its scaffold term: error kept
x - s(x), error dropped x_hat - s(x), next to the SAE itself (x_hat) for scale; s(x) = U V^T (x - b_dec), or U V^T x
for a scaffold trained on uncentred input.

Subjects beside the scaffold: span(U); the top-r PCs; span[top-r PCs, mean] ("pca_mean", r + 1 directions: the PCs
and the part of the activation mean mu orthogonal to them) and the mean direction alone ("mean", mu / |mu|), so that a
reader can tell whether removing the scaffold matters beyond removing the mean (an uncentred scaffold removes nearly
all of it); r random directions (ablation_random_bases bases, drawn afresh for each seed); the whole residual.

Means, PCA basis and donors come from the fit contexts, which share no context with the CE contexts; mu is the mean of
the ordinary fit tokens. Each number has a paired bootstrap 95% interval over CE contexts (stats.paired_bootstrap);
where random bases enter, the bootstrap resamples the bases as well as the contexts (stats.crossed_bootstrap), so the
interval carries the spread over bases.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from scaffold_sae import probing
from scaffold_sae.analyses.base import AnalysisContext, AnalysisError, register
from scaffold_sae.lm_passes import ResidEdit, condition_losses, position_class_rows
from scaffold_sae.report import Section, Table, format_number
from scaffold_sae.sae import random_orthonormal
from scaffold_sae.stats import Estimate, crossed_bootstrap
from scaffold_sae.subspace import span_basis, span_with

OPERATORS = ("zero", "mean", "resample")
POSITIONS = ("ordinary", "all")
SUBSPACES = ("scaffold", "span_u", "pca", "pca_mean", "mean", "random", "residual")
BEYOND_MEAN = ("pca_mean", "mean")
"""Subjects that answer: does the scaffold matter beyond removing the activation mean?"""
ERROR_KEPT, ERROR_DROPPED = "error kept", "error dropped"
WITHOUT_SCAFFOLD, SPLICED = "sae without scaffold", "sae spliced"


@dataclass
class AblationTableConfig:
    """Settings of the causal ablation table (primary hybrid; CE on the CE contexts, fits on the others)."""

    ablation_operators: str = "zero,mean,resample"
    """Comma-separated operators: zero, mean, resample."""
    ablation_positions: str = "ordinary,all"
    """Comma-separated position sets: ordinary (BOS and sinks untouched), all (BOS and sinks edited too)."""
    ablation_subjects: str = "scaffold,span_u,pca,pca_mean,mean,random,residual"
    """Comma-separated subjects: scaffold (U V^T as trained), span_u (orthogonal projector onto span U), pca (top-r),
    pca_mean (span of the top-r PCs and the activation mean), mean (the mean direction alone), random (r random
    directions), residual (the whole residual, for calibration)."""
    ablation_random_bases: int = 10
    """Random r-dimensional bases, drawn afresh for each seed (the random subject's CE is their mean; its interval
    resamples bases and contexts; each basis's ratio is listed)."""
    ablation_context_subjects: str = "scaffold,pca,pca_mean,mean,random"
    """Subjects whose per-context CE sums (every operator and position set; random: per basis) the result stores,
    rounded to 0.01 nats, so that a bootstrap over seeds and contexts can be run later; empty stores none."""
    ablation_splices: bool = True
    """Also splice the SAE without its scaffold term (error kept / dropped) and the SAE itself."""
    rows_per_forward: int = 8
    """Contexts stacked into one forward from the layer (several conditions per pass)."""


@dataclass
class Cell:
    """CE under one (subject, operator, positions) edit, with paired bootstrap 95% intervals over contexts."""

    subject: str
    """scaffold (U V^T as trained) | span_u (orthogonal projector onto span U) | pca (top-r) | random | residual |
    sae without scaffold | sae spliced."""
    operator: str
    positions: str
    ce: Estimate
    """Mean next-token CE (nats)."""
    ratio: Estimate
    """CE / clean CE."""
    delta: Estimate
    """CE - clean CE (nats)."""
    kl: Estimate
    """Mean KL(clean || edited) per prediction (nats)."""
    per_basis_ratio: list[float] | None = None
    """Random subject only: the ratio of each basis."""
    dims: int = 0
    """Directions removed (r; r + 1 for pca_mean, 1 for mean, d for residual; 0 for the splices and old results)."""


@dataclass
class Comparison:
    """A CE ratio between two cells at the same positions (the paper's scaffold vs top-r PCA: 7.5 / 2.8 = 2.7)."""

    numerator: str
    """subject:operator."""
    denominator: str
    positions: str
    like_for_like: bool
    """Same operator and both orthogonal projectors of r-dimensional subspaces."""
    why: str
    ce_ratio: Estimate
    """CE(numerator) / CE(denominator) = ratio to clean of one over the other's."""
    excess_ratio: Estimate
    """(CE(numerator) - clean) / (CE(denominator) - clean)."""
    reaches_2: str
    """ce_ratio >= 2: yes (whole interval), no (whole interval below), undecided."""
    question: str = ""
    """paper (against the top-r PCs), beyond_mean (same operator against pca_mean or mean: CE ratio above 1 means
    the scaffold matters beyond removing the mean) or control (a subspace against random directions)."""

    @staticmethod
    def upgrade_json(data: dict) -> dict:
        """Comparisons written before the question field: against pca or random only."""
        if data.get("question"):
            return data
        return {**data, "question": "control" if str(data.get("denominator", "")).startswith("random") else "paper"}


@dataclass
class ContextSums:
    """Per-context sums behind some cells (ablation_context_subjects), rounded to 0.01 nats: what a bootstrap over
    seeds and contexts (and random bases) needs later. Cell keys are "subject:operator:positions"."""

    predictions: list[int]
    """Predictions per CE context."""
    clean: list[float]
    """Clean CE sum per context (nats)."""
    ce: dict[str, list[float]] = field(default_factory=dict)
    """Cell -> CE sum per context (the random subject: mean over bases)."""
    random_ce: dict[str, list[list[float]]] = field(default_factory=dict)
    """Random cell -> per basis, CE sum per context."""


@dataclass
class AblationTableResult:
    """The causal ablation table of one hybrid."""

    sae: str
    rank: int
    scaffold_centred: bool
    n_contexts: int
    """CE contexts (the unit the bootstrap resamples)."""
    n_predictions: int
    n_fit_contexts: int
    """Contexts the means, PCA basis and donors come from (none of them is a CE context)."""
    n_fit_tokens: int
    n_fit_special: int
    ce_clean: Estimate
    cells: list[Cell]
    comparisons: list[Comparison]
    bootstrap_samples: int
    forwards: int
    """Forward passes from the layer (blocks L+1.. and the head)."""
    wall_s: float
    definitions: dict[str, str] = field(default_factory=lambda: {
        "zero": "x - A x", "mean": "x - A (x - mu_class)", "resample": "x - A (x - x') with x' another token",
        ERROR_KEPT: "x - s(x)", ERROR_DROPPED: "x_hat - s(x) (x_hat for 'sae spliced')"})
    random_bases: int = 0
    """Random bases behind the random cells (0: results written before this field, whose random interval left out
    the spread over bases)."""
    seed: int = 0
    """The seed the random bases, donors and bootstrap were drawn with."""
    context_sums: ContextSums | None = None
    """Per-context CE sums of the ablation_context_subjects cells (None when none were stored)."""

    def cell(self, subject: str, operator: str, positions: str) -> Cell:
        return next(c for c in self.cells if (c.subject, c.operator, c.positions) == (subject, operator, positions))


def parse_choices(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in chosen if t not in allowed]
    if bad or not chosen:
        raise AnalysisError(f"{what}={text!r} is invalid: give a comma-separated subset of {', '.join(allowed)}")
    return chosen


def component_edit(left: torch.Tensor | None, right: torch.Tensor | None, operator: str, positions: str,
                   reference: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None) -> ResidEdit:
    """x -> x - A (x - ref) at the chosen positions of a residual [B, T, d], A = left right^T (None: identity);
    ref is 0 for zero, else reference(resid, ordinary, batch_index) [B, T, d] (class mean or donor rows)."""
    if operator not in OPERATORS:
        raise AnalysisError(f"unknown operator {operator!r}: use one of {', '.join(OPERATORS)}")
    lf = None if left is None else left.detach().float()
    rf = None if right is None else right.detach().float()

    def edit(resid: torch.Tensor, ordinary: torch.Tensor, index: int) -> torch.Tensor:
        where = ordinary if positions == "ordinary" else torch.ones_like(ordinary)
        x = resid[where].float()
        ref = torch.zeros_like(x) if operator == "zero" else reference(resid, ordinary, index)[where].float()
        out = resid.clone()
        if lf is None:
            out[where] = ref.to(resid.dtype)
        else:
            out[where] = (x - ((x - ref) @ rf.to(x.device)) @ lf.to(x.device).t()).to(resid.dtype)
        return out

    return edit


def rows_edit(rows: Callable[[torch.Tensor], torch.Tensor], positions: str) -> ResidEdit:
    """Replace the rows at the chosen positions by rows(x)."""
    def edit(resid: torch.Tensor, ordinary: torch.Tensor, index: int) -> torch.Tensor:
        where = ordinary if positions == "ordinary" else torch.ones_like(ordinary)
        out = resid.clone()
        out[where] = rows(resid[where].float()).to(resid.dtype)
        return out

    return edit


class ClassReference:
    """Per-position-class means and resampling donors from fit rows (ordinary and special)."""

    def __init__(self, ordinary: torch.Tensor, special: torch.Tensor, seed: int):
        self.ordinary, self.special, self.seed = ordinary, special if special.shape[0] else ordinary, seed
        self.mean_ordinary, self.mean_special = self.ordinary.mean(0), self.special.mean(0)
        self._donors: dict[int, torch.Tensor] = {}

    def mean(self, resid: torch.Tensor, ordinary: torch.Tensor, index: int) -> torch.Tensor:
        m = torch.where(ordinary[..., None].cpu(), self.mean_ordinary, self.mean_special)
        return m.to(resid.device)

    def donors(self, resid: torch.Tensor, ordinary: torch.Tensor, index: int) -> torch.Tensor:
        """One donor row per position (the same for every condition of this batch: the conditions stay paired)."""
        if index not in self._donors:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            shape = tuple(ordinary.shape)
            pick_o = torch.randint(0, self.ordinary.shape[0], shape, generator=g)
            pick_s = torch.randint(0, self.special.shape[0], shape, generator=g)
            rows = torch.where(ordinary[..., None].cpu(), self.ordinary[pick_o], self.special[pick_s])
            self._donors = {index: rows}
        return self._donors[index].to(resid.device)

    def reference(self, operator: str):
        return {"zero": None, "mean": self.mean, "resample": self.donors}[operator]


def random_bases(d: int, r: int, n: int, seed: int) -> list[Tensor]:
    """n random orthonormal [d, r] bases for `seed`: basis i from a torch generator seeded by
    numpy SeedSequence([seed, i]), so every seed draws its own bases (no basis is shared between seeds)."""
    states = [int(np.random.SeedSequence([int(seed), i]).generate_state(1, np.uint64)[0]) for i in range(n)]
    return [random_orthonormal(d, r, torch.Generator().manual_seed(state)) for state in states]


def subject_bases(subjects: list[str], sae, pca_vectors: Tensor, mean: Tensor, n_random: int, seed: int
                  ) -> dict[str, list[tuple[Tensor | None, Tensor | None]]]:
    """subject -> [(left, right)] of the component A = left right^T each subject removes (None: the identity);
    several pairs for the random subject (one per basis)."""
    d, r = int(sae.U.shape[0]), int(sae.cfg.rank)
    q_pca = pca_vectors[:, :r].double()
    q_mean = (mean.double() / mean.double().norm().clamp_min(1e-300))[:, None]
    make = {"scaffold": lambda: [(sae.U, sae.V)], "span_u": lambda: [(span_basis(sae.U),) * 2],
            "pca": lambda: [(q_pca, q_pca)], "pca_mean": lambda: [(span_with(q_pca, mean),) * 2],
            "mean": lambda: [(q_mean, q_mean)],
            "random": lambda: [(q, q) for q in random_bases(d, r, n_random, seed)], "residual": lambda: [(None, None)]}
    return {subject: [tuple(None if m is None else m.float() for m in pair) for pair in make[subject]()]
            for subject in subjects}


def ablation_table(lm, layer: int, sae, ce_contexts: torch.Tensor, fit_contexts: torch.Tensor, pca_vectors,
                   name: str = "sae", config: AblationTableConfig | None = None, fit_tokens: int = 8192,
                   batch_size: int = 4, sink_factor: float = 10.0, seed: int = 0,
                   progress: bool = False, bootstrap_samples: int = 2000) -> AblationTableResult:
    """Every (subject, operator, positions) cell on ce_contexts; means / donors from fit_contexts; pca_vectors
    [d, >= r] the PCs of fit tokens; bootstrap_samples resamples of the CE contexts behind every interval."""
    config = config or AblationTableConfig()
    clock = time.perf_counter()
    r = int(sae.cfg.rank)
    if r < 1:
        raise AnalysisError(f"SAE {name!r} has no scaffold (rank 0): the ablation table needs a hybrid")
    operators = parse_choices(config.ablation_operators, OPERATORS, "ablation_operators")
    positions = parse_choices(config.ablation_positions, POSITIONS, "ablation_positions")
    subjects = parse_choices(config.ablation_subjects, SUBSPACES, "ablation_subjects")
    stored = (parse_choices(config.ablation_context_subjects, SUBSPACES, "ablation_context_subjects")
              if config.ablation_context_subjects.strip() else [])
    if config.ablation_random_bases < 1:
        raise AnalysisError("ablation_random_bases must be >= 1")
    ordinary_rows, special_rows = position_class_rows(lm, layer, fit_contexts, fit_tokens, batch_size, sink_factor)
    ref = ClassReference(ordinary_rows, special_rows, seed)
    bases = subject_bases(subjects, sae, pca_vectors, ref.mean_ordinary, config.ablation_random_bases, seed)
    conditions: dict[str, ResidEdit] = {}
    groups: dict[tuple[str, str, str], list[str]] = {}
    for pos in positions:
        for op in operators:
            for subject, pairs in bases.items():
                keys = [f"{subject}{i}|{op}|{pos}" for i in range(len(pairs))]
                for key, (left, right) in zip(keys, pairs):
                    conditions[key] = component_edit(left, right, op, pos, ref.reference(op))
                groups[(subject, op, pos)] = keys
        if config.ablation_splices:
            mode = probing.inference_mode(sae)
            from scaffold_sae.evals import reconstruct

            def kept(x, sae=sae):
                return x - sae.scaffold(x)

            def dropped(x, sae=sae, mode=mode):
                return reconstruct(sae, x, mode).x_hat - sae.scaffold(x)

            def spliced(x, sae=sae, mode=mode):
                return reconstruct(sae, x, mode).x_hat

            for subject, op, rows in ((WITHOUT_SCAFFOLD, ERROR_KEPT, kept), (WITHOUT_SCAFFOLD, ERROR_DROPPED, dropped),
                                      (SPLICED, ERROR_DROPPED, spliced)):
                key = f"{subject}|{op}|{pos}"
                conditions[key] = rows_edit(rows, pos)
                groups[(subject, op, pos)] = [key]
    losses = condition_losses(lm, layer, ce_contexts, conditions, batch_size, config.rows_per_forward, sink_factor,
                              progress)
    index = {key: i for i, key in enumerate(losses.names)}
    cell_keys = list(groups)
    once = [c for c in cell_keys if c[0] != "random"]
    crossed = [c for c in cell_keys if c[0] == "random"]
    # per-context columns: predictions, clean CE, then CE and KL of each cell measured once; the random cells' CE and
    # KL per basis go to the crossed array [bases, contexts, columns]
    values = np.stack([losses.predictions.numpy(), losses.clean.numpy(),
                       *[losses.ce[index[groups[c][0]]].numpy() for c in once],
                       *[losses.kl[index[groups[c][0]]].numpy() for c in once]], 1)
    n_bases = config.ablation_random_bases if crossed else 1
    grouped = np.zeros((n_bases, values.shape[0], 2 * len(crossed)))
    for j, c in enumerate(crossed):
        rows_ = [index[k] for k in groups[c]]
        grouped[:, :, j] = losses.ce[rows_].numpy()
        grouped[:, :, len(crossed) + j] = losses.kl[rows_].numpy()
    width = values.shape[1]
    ce_col = {c: 2 + i for i, c in enumerate(once)} | {c: width + j for j, c in enumerate(crossed)}
    kl_col = {c: 2 + len(once) + i for i, c in enumerate(once)} | {c: width + len(crossed) + j
                                                                   for j, c in enumerate(crossed)}
    ce_idx = np.array([ce_col[c] for c in cell_keys], dtype=int)
    kl_idx = np.array([kl_col[c] for c in cell_keys], dtype=int)
    pairs = comparison_pairs(cell_keys)
    num_idx = np.array([ce_col[a] for a, _, _, _ in pairs], dtype=int)
    den_idx = np.array([ce_col[b] for _, b, _, _ in pairs], dtype=int)
    n_cells = len(cell_keys)

    def statistic(s: np.ndarray) -> np.ndarray:
        pred, clean, ce, kl = s[..., :1], s[..., 1:2], s[..., ce_idx], s[..., kl_idx]
        num, den = s[..., num_idx], s[..., den_idx]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.concatenate([clean / pred, ce / pred, ce / clean, (ce - clean) / pred, kl / pred, num / den,
                                   (num - clean) / (den - clean)], -1)

    est = crossed_bootstrap(values, grouped, statistic, bootstrap_samples, seed)
    clean_ce, est = est[0], est[1:]
    chunks = [est[i * n_cells:(i + 1) * n_cells] for i in range(4)]
    cells = []
    for i, (subject, op, pos) in enumerate(cell_keys):
        per_basis = None
        if subject == "random":
            totals = losses.ce[[index[k] for k in groups[(subject, op, pos)]]].sum(1)
            per_basis = [float(t / losses.clean.sum()) for t in totals]
        dims = 0 if subject not in bases else (int(sae.U.shape[0]) if subject == "residual" else
                                               int(bases[subject][0][0].shape[1]))
        cells.append(Cell(subject, op, pos, chunks[0][i], chunks[1][i], chunks[2][i], chunks[3][i], per_basis, dims))
    rest = est[4 * n_cells:]
    ratios, excess = rest[:len(pairs)], rest[len(pairs):]
    comparisons = [Comparison(f"{a[0]}:{a[1]}", f"{b[0]}:{b[1]}", a[2], like, why, ratios[i], excess[i],
                              ratios[i].verdict(2.0), question_of(b[0]))
                   for i, (a, b, like, why) in enumerate(pairs)]
    sums = None
    if stored:
        sums = ContextSums([int(p) for p in losses.predictions], _rounded(losses.clean),
                           {f"{s_}:{o}:{p}": _rounded(losses.ce[[index[k] for k in groups[(s_, o, p)]]].mean(0))
                            for s_, o, p in cell_keys if s_ in stored},
                           {f"{s_}:{o}:{p}": [_rounded(losses.ce[index[k]]) for k in groups[(s_, o, p)]]
                            for s_, o, p in crossed if s_ in stored})
    return AblationTableResult(
        sae=name, rank=r, scaffold_centred=bool(getattr(sae.cfg, "scaffold_centred", True)),
        n_contexts=int(ce_contexts.shape[0]), n_predictions=int(losses.predictions.sum()),
        n_fit_contexts=int(fit_contexts.shape[0]), n_fit_tokens=int(ordinary_rows.shape[0]),
        n_fit_special=int(special_rows.shape[0]), ce_clean=clean_ce, cells=cells, comparisons=comparisons,
        bootstrap_samples=bootstrap_samples, forwards=losses.forwards, wall_s=time.perf_counter() - clock,
        random_bases=config.ablation_random_bases if "random" in bases else 0, seed=int(seed), context_sums=sums)


def _rounded(values: Tensor) -> list[float]:
    return [round(float(v), 2) for v in values]


def question_of(denominator: str) -> str:
    return "control" if denominator == "random" else "beyond_mean" if denominator in BEYOND_MEAN else "paper"


def comparison_pairs(cells: list[tuple[str, str, str]]) -> list[tuple[tuple, tuple, bool, str]]:
    """(numerator cell, denominator cell, like for like, why): the scaffold (every reading of its removal) and
    span(U) against the top-r PCs under every operator; the scaffold and span(U) against span[top-r PCs, mean] and
    against the mean alone under the same operator (beyond the mean?); span(U) / PCA against random directions; same
    positions."""
    have = set(cells)
    out = []
    for num in cells:
        subject, op, pos = num
        if subject not in ("scaffold", "span_u", WITHOUT_SCAFFOLD) or (subject == WITHOUT_SCAFFOLD
                                                                       and op != ERROR_KEPT):
            continue
        for den in [c for c in cells if c[0] == "pca" and c[2] == pos]:
            like = subject == "span_u" and den[1] == op
            if den[1] != op and subject != WITHOUT_SCAFFOLD:
                why = f"different operators ({op} vs {den[1]})"
            elif subject == "span_u":
                why = "like for like: same operator, both orthogonal projectors"
            else:
                why = "oblique scaffold term vs orthogonal projector" + (
                    "" if subject == "scaffold" else f" (scaffold term removed vs {den[1]})")
            out.append((num, den, like, why))
    for subject in ("scaffold", "span_u"):
        for op in OPERATORS:
            for pos in POSITIONS:
                for den in BEYOND_MEAN:
                    if (subject, op, pos) in have and (den, op, pos) in have:
                        out.append(((subject, op, pos), (den, op, pos), False,
                                    f"same operator: does removing the {'scaffold term' if subject == 'scaffold' else 'span of U'} "
                                    f"matter beyond removing {'the top-r PCs and ' if den == 'pca_mean' else ''}"
                                    "the activation mean?"))
    for subject in ("span_u", "pca"):
        for op in OPERATORS:
            for pos in POSITIONS:
                if (subject, op, pos) in have and ("random", op, pos) in have:
                    out.append(((subject, op, pos), ("random", op, pos), True,
                                "like for like: same operator, both orthogonal projectors"))
    return out


def run(context: AnalysisContext, config: AblationTableConfig) -> AblationTableResult | None:
    """The table for the primary hybrid: CE on the CE contexts, every fit on the disjoint fit contexts."""
    if not context.hybrids():
        return None
    name = context.primary_hybrid()
    return ablation_table(context.lm, context.layer, context.saes[name], context.ce_contexts, context.fit_contexts,
                          context.pca.vectors, name, config, context.shared.analysis_tokens, context.ce_batch_size,
                          context.shared.sink_factor, context.shared.seed, context.progress,
                          context.shared.bootstrap_samples)


def _interval(e: Estimate) -> str:
    return f"{format_number(e.value)} [{format_number(e.low)}, {format_number(e.high)}]"


def beyond_mean_word(c: Comparison) -> str:
    """Whether removing the numerator costs more CE than removing the denominator (pca_mean or mean)."""
    return "more" if c.ce_ratio.low > 1 else "less" if c.ce_ratio.high < 1 else "undecided"


def sections(result: AblationTableResult) -> list[Section]:
    rows = [[c.subject, c.dims or None, c.operator, c.positions, _interval(c.ce), _interval(c.ratio),
             _interval(c.delta), _interval(c.kl), None if c.per_basis_ratio is None else
             ", ".join(format_number(v) for v in c.per_basis_ratio)] for c in result.cells]
    random_note = (f"; random cells: mean over {result.random_bases} bases drawn for seed {result.seed}, their "
                   "interval resamples bases and contexts" if result.random_bases else
                   "; random cells: mean over bases, interval over contexts only (stored before bases were resampled)")
    table = Table(["subject", "directions", "operator", "positions", "CE (nats)", "CE / clean", "ΔCE", "KL",
                   "random: per basis"],
                  rows, caption=f"{result.sae} (rank {result.rank}, scaffold on "
                                f"{'x - b_dec' if result.scaffold_centred else 'uncentred x'}); clean CE "
                                f"{_interval(result.ce_clean)}; {result.n_contexts} CE contexts, "
                                f"{result.n_predictions} predictions; paired bootstrap 95% intervals over contexts "
                                f"({result.bootstrap_samples} resamples){random_note}")
    paper = [c for c in result.comparisons if c.question != "beyond_mean"]
    beyond = [c for c in result.comparisons if c.question == "beyond_mean"]
    comp = Table(["numerator", "denominator", "positions", "like for like", "why", "CE ratio", "ΔCE ratio",
                  "CE ratio >= 2"],
                 [[c.numerator, c.denominator, c.positions, "yes" if c.like_for_like else "no", c.why,
                   _interval(c.ce_ratio), _interval(c.excess_ratio), c.reaches_2] for c in paper],
                 caption="paper (Gemma-2-2B, r = 24): scaffold 7.5x vs top-24 PCs 2.8x clean CE, a CE ratio of 2.7")
    tables = [table, comp]
    if beyond:
        tables.append(Table(["numerator", "denominator", "positions", "CE ratio", "ΔCE ratio", "numerator costs"],
                            [[c.numerator, c.denominator, c.positions, _interval(c.ce_ratio),
                              _interval(c.excess_ratio), beyond_mean_word(c)] for c in beyond],
                            caption="beyond the mean: the scaffold (or span U) against span[top-r PCs, mean] and "
                                    "against the mean direction alone, same operator and positions; 'more' when the "
                                    "whole CE-ratio interval lies above 1"))
    reach = [f"{c.numerator} / {c.denominator} ({c.positions})" for c in result.comparisons
             if c.question == "paper" and c.reaches_2 == "yes"]
    open_ = [f"{c.numerator} / {c.denominator} ({c.positions})" for c in result.comparisons
             if c.question == "paper" and c.reaches_2 == "undecided"]
    more = [f"{c.numerator} / {c.denominator} ({c.positions})" for c in beyond if beyond_mean_word(c) == "more"]
    term = ("The scaffold's trained term is s(x) = U V^T (x - b_dec), so 'scaffold' zeroed (x - U V^T x) also removes "
            "U V^T b_dec, b_dec's share along span(U); the row 'sae without scaffold, error kept' removes s(x) alone "
            "(for mean and resample b_dec cancels). " if result.scaffold_centred else
            "The scaffold's trained term is s(x) = U V^T x, so 'scaffold' zeroed removes exactly that term. ")
    text = ("What removing the scaffold does to next-token CE, under each reading of 'remove'. "
            + "; ".join(f"{k}: {v}" for k, v in result.definitions.items()) + ". " + term
            + "mu and x' come from the same position class (ordinary / BOS-and-sinks) of fit tokens; the fit "
            f"contexts ({result.n_fit_contexts}, {result.n_fit_tokens} ordinary and {result.n_fit_special} special "
            "tokens) share no context with the CE contexts. Readings whose scaffold-vs-top-r-PCA CE ratio is 2 or "
            f"more (whole interval): {', '.join(reach) or 'none'}; undecided: {', '.join(open_) or 'none'}. "
            + (f"Readings where removing the scaffold costs more than removing the mean (alone or with the top-r "
               f"PCs): {', '.join(more) or 'none'}. " if beyond else "")
            + f"Wall time {format_number(result.wall_s)} s for {result.forwards} forwards from the layer (blocks L+1.. "
            "and the head only).")
    return [Section("Causal ablation table", text, tables=tables)]


register("ablation_table", AblationTableConfig, AblationTableResult, run, sections)
