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

Means, PCA basis and donors come from the fit contexts, which share no context with the CE contexts. Each number
has a paired bootstrap 95% interval over CE contexts (stats.paired_bootstrap).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from scaffold_sae import probing
from scaffold_sae.analyses.base import AnalysisContext, AnalysisError, register
from scaffold_sae.lm_passes import ResidEdit, condition_losses, position_class_rows
from scaffold_sae.report import Section, Table, format_number
from scaffold_sae.sae import random_orthonormal
from scaffold_sae.stats import Estimate, paired_bootstrap
from scaffold_sae.subspace import span_basis

OPERATORS = ("zero", "mean", "resample")
POSITIONS = ("ordinary", "all")
SUBSPACES = ("scaffold", "span_u", "pca", "random", "residual")
ERROR_KEPT, ERROR_DROPPED = "error kept", "error dropped"
WITHOUT_SCAFFOLD, SPLICED = "sae without scaffold", "sae spliced"


@dataclass
class AblationTableConfig:
    """Settings of the causal ablation table (primary hybrid; CE on the CE contexts, fits on the others)."""

    ablation_operators: str = "zero,mean,resample"
    """Comma-separated operators: zero, mean, resample."""
    ablation_positions: str = "ordinary,all"
    """Comma-separated position sets: ordinary (BOS and sinks untouched), all (BOS and sinks edited too)."""
    ablation_subjects: str = "scaffold,span_u,pca,random,residual"
    """Comma-separated subjects: scaffold (U V^T as trained), span_u (orthogonal projector onto span U), pca (top-r),
    random (r random directions), residual (the whole residual, for calibration)."""
    ablation_random_bases: int = 5
    """Random r-dimensional bases (the random subject's CE is their mean; each basis's ratio is listed)."""
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
    if config.ablation_random_bases < 1:
        raise AnalysisError("ablation_random_bases must be >= 1")
    ordinary_rows, special_rows = position_class_rows(lm, layer, fit_contexts, fit_tokens, batch_size, sink_factor)
    ref = ClassReference(ordinary_rows, special_rows, seed)
    d = int(sae.U.shape[0])
    q_u, q_pca = span_basis(sae.U).float(), pca_vectors[:, :r].float()
    bases: dict[str, list[tuple[torch.Tensor | None, torch.Tensor | None]]] = {
        "scaffold": [(sae.U, sae.V)], "span_u": [(q_u, q_u)], "pca": [(q_pca, q_pca)],
        "random": [(q, q) for q in (random_orthonormal(d, r, torch.Generator().manual_seed(1000 + seed + i))
                                    for i in range(config.ablation_random_bases))],
        "residual": [(None, None)]}
    bases = {subject: pairs for subject, pairs in bases.items() if subject in subjects}
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
    # columns: predictions, clean CE, then per cell the CE and KL sums averaged over its bases
    ce_cols = np.stack([losses.ce[[index[k] for k in groups[c]]].mean(0).numpy() for c in cell_keys], 1)
    kl_cols = np.stack([losses.kl[[index[k] for k in groups[c]]].mean(0).numpy() for c in cell_keys], 1)
    values = np.concatenate([losses.predictions.numpy()[:, None], losses.clean.numpy()[:, None], ce_cols, kl_cols], 1)
    n_cells = len(cell_keys)
    pairs = comparison_pairs(cell_keys)
    col = {c: i for i, c in enumerate(cell_keys)}

    def statistic(s: np.ndarray) -> np.ndarray:
        pred, clean, ce, kl = s[..., :1], s[..., 1:2], s[..., 2:2 + n_cells], s[..., 2 + n_cells:]
        num = np.stack([ce[..., col[a]] for a, _, _, _ in pairs], -1) if pairs else ce[..., :0]
        den = np.stack([ce[..., col[b]] for _, b, _, _ in pairs], -1) if pairs else ce[..., :0]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.concatenate([clean / pred, ce / pred, ce / clean, (ce - clean) / pred, kl / pred, num / den,
                                   (num - clean) / (den - clean)], -1)

    est = paired_bootstrap(values, statistic, bootstrap_samples, seed)
    clean_ce, est = est[0], est[1:]
    chunks = [est[i * n_cells:(i + 1) * n_cells] for i in range(4)]
    cells = []
    for i, (subject, op, pos) in enumerate(cell_keys):
        per_basis = None
        if subject == "random":
            totals = losses.ce[[index[k] for k in groups[(subject, op, pos)]]].sum(1)
            per_basis = [float(t / losses.clean.sum()) for t in totals]
        cells.append(Cell(subject, op, pos, chunks[0][i], chunks[1][i], chunks[2][i], chunks[3][i], per_basis))
    rest = est[4 * n_cells:]
    ratios, excess = rest[:len(pairs)], rest[len(pairs):]
    comparisons = [Comparison(f"{a[0]}:{a[1]}", f"{b[0]}:{b[1]}", a[2], like, why, ratios[i], excess[i],
                              ratios[i].verdict(2.0)) for i, (a, b, like, why) in enumerate(pairs)]
    return AblationTableResult(
        sae=name, rank=r, scaffold_centred=bool(getattr(sae.cfg, "scaffold_centred", True)),
        n_contexts=int(ce_contexts.shape[0]), n_predictions=int(losses.predictions.sum()),
        n_fit_contexts=int(fit_contexts.shape[0]), n_fit_tokens=int(ordinary_rows.shape[0]),
        n_fit_special=int(special_rows.shape[0]), ce_clean=clean_ce, cells=cells, comparisons=comparisons,
        bootstrap_samples=bootstrap_samples, forwards=losses.forwards, wall_s=time.perf_counter() - clock)


def comparison_pairs(cells: list[tuple[str, str, str]]) -> list[tuple[tuple, tuple, bool, str]]:
    """(numerator cell, denominator cell, like for like, why): the scaffold (every reading of its removal) and
    span(U) against the top-r PCs under every operator, and span(U) / PCA against random directions; same positions."""
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


def sections(result: AblationTableResult) -> list[Section]:
    rows = [[c.subject, c.operator, c.positions, _interval(c.ce), _interval(c.ratio), _interval(c.delta),
             _interval(c.kl), None if c.per_basis_ratio is None else
             ", ".join(format_number(v) for v in c.per_basis_ratio)] for c in result.cells]
    table = Table(["subject", "operator", "positions", "CE (nats)", "CE / clean", "ΔCE", "KL", "random: per basis"],
                  rows, caption=f"{result.sae} (rank {result.rank}, scaffold on "
                                f"{'x - b_dec' if result.scaffold_centred else 'uncentred x'}); clean CE "
                                f"{_interval(result.ce_clean)}; {result.n_contexts} CE contexts, "
                                f"{result.n_predictions} predictions; paired bootstrap 95% intervals over contexts "
                                f"({result.bootstrap_samples} resamples)")
    comp = Table(["numerator", "denominator", "positions", "like for like", "why", "CE ratio", "ΔCE ratio",
                  "CE ratio >= 2"],
                 [[c.numerator, c.denominator, c.positions, "yes" if c.like_for_like else "no", c.why,
                   _interval(c.ce_ratio), _interval(c.excess_ratio), c.reaches_2] for c in result.comparisons],
                 caption="paper (Gemma-2-2B, r = 24): scaffold 7.5x vs top-24 PCs 2.8x clean CE, a CE ratio of 2.7")
    reach = [f"{c.numerator} / {c.denominator} ({c.positions})" for c in result.comparisons
             if c.denominator.startswith("pca") and c.reaches_2 == "yes"]
    open_ = [f"{c.numerator} / {c.denominator} ({c.positions})" for c in result.comparisons
             if c.denominator.startswith("pca") and c.reaches_2 == "undecided"]
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
            f"Wall time {format_number(result.wall_s)} s for {result.forwards} forwards from the layer (blocks L+1.. and the "
            "head only).")
    return [Section("Causal ablation table", text, tables=[table, comp])]


register("ablation_table", AblationTableConfig, AblationTableResult, run, sections)
