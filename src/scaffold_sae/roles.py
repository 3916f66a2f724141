"""Each SAE's role in a study and what the report says over seeds: mean +- sd per role and rank, and the
dense-latent claim stated against each baseline.

A study's results.json gives every SAE a `kind` (baseline | hybrid | pca_deflation | capacity_matched |
other_encoder), a `seed` index, and `for_rank`, the hybrid rank it is compared at (0 for the plain SAE; r for the
capacity-matched SAE with k + r latents). Results written before roles existed are read as rank 0 = baseline,
rank > 0 = hybrid, seed 0. Pure functions of the `saes` dict, so a report redraws from results.json alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scaffold_sae.report import Figure, Section, Series, Table, format_number
from scaffold_sae.stats import mean_sd

KINDS = ("baseline", "hybrid", "pca_deflation", "capacity_matched", "other_encoder")
DESCRIPTIONS = {
    "baseline": "the plain SAE (k latents)",
    "hybrid": "the SAE with a rank-r scaffold",
    "pca_deflation": "the plain SAE on x with the top-r PCs projected out (frozen PCA scaffold)",
    "capacity_matched": "a plain SAE with k + r active latents",
    "other_encoder": "the hybrid with the other encoder input",
}
SEED_METRICS = (("dense >10%", "dense_10"), ("dense >1%", "dense_1"), ("FVU", "fvu"),
                ("CE score (zero-abl)", "ce_score_zero"), ("CE score (mean-abl)", "ce_score_mean"), ("dead", "dead"))
"""The numbers shown as mean +- sd over seeds."""
AGAINST = ("baseline", "pca_deflation", "capacity_matched", "other_encoder")
"""What each hybrid's dense-latent count is compared with, in this order."""


def kind_of(result: dict[str, Any]) -> str:
    return str(result.get("kind") or ("baseline" if int(result.get("rank", 0)) == 0 else "hybrid"))


def seed_of(result: dict[str, Any]) -> int:
    return int(result.get("seed") or 0)


def for_rank(result: dict[str, Any]) -> int:
    value = result.get("for_rank")
    return int(result.get("rank", 0) if value is None else value)


def format_mean_sd(mean: float | None, sd: float | None) -> str:
    if sd is None:
        return format_number(mean)
    return f"{format_number(mean)} ± {format_number(sd)}"


@dataclass
class RoleGroup:
    """The seeds of one SAE of the study: same role, same arch and inference, same compared rank."""

    kind: str
    arch: str
    inference: str
    for_rank: int
    by_seed: dict[int, dict[str, Any]] = field(default_factory=dict)
    """seed index -> that seed's core evaluation."""
    names: dict[int, str] = field(default_factory=dict)

    def values(self, key: str, seeds: list[int] | None = None) -> list[float]:
        chosen = sorted(self.by_seed) if seeds is None else seeds
        return [self.by_seed[s].get(key) for s in chosen if s in self.by_seed]

    def stat(self, key: str) -> tuple[float | None, float | None]:
        return mean_sd(self.values(key))

    @property
    def label(self) -> str:
        return f"{self.kind} r={self.for_rank}" if self.kind != "baseline" else "baseline"


def role_groups(saes: dict[str, dict[str, Any]]) -> list[RoleGroup]:
    """SAEs grouped over seeds, ordered by arch, inference, role (KINDS order) and rank."""
    groups: dict[tuple, RoleGroup] = {}
    for name, result in saes.items():
        kind = kind_of(result)
        key = (str(result.get("arch", "")), str(result.get("inference", "")), kind, for_rank(result))
        group = groups.setdefault(key, RoleGroup(kind, key[0], key[1], key[3]))
        group.by_seed[seed_of(result)] = result
        group.names[seed_of(result)] = name
    order = {kind: i for i, kind in enumerate(KINDS)}
    return sorted(groups.values(), key=lambda g: (g.arch, g.inference, order.get(g.kind, len(KINDS)), g.for_rank))


def n_seeds(saes: dict[str, dict[str, Any]]) -> int:
    return max((len(g.by_seed) for g in role_groups(saes)), default=0)


@dataclass
class DenseComparison:
    """One hybrid against one baseline on the dense-latent count, paired by seed (same batches, same seed)."""

    hybrid_rank: int
    against: str
    seeds: int
    hybrid_mean: float | None
    hybrid_sd: float | None
    against_mean: float | None
    against_sd: float | None
    diff_mean: float | None
    """Mean over seeds of hybrid - baseline (negative: the hybrid has fewer dense latents)."""
    diff_sd: float | None
    change: float | None
    """diff_mean / against_mean (-1 = all removed)."""
    fewer_every_seed: bool
    """True when the hybrid has strictly fewer dense latents than this baseline in every seed."""


def dense_comparisons(saes: dict[str, dict[str, Any]], key: str = "dense_10") -> list[DenseComparison]:
    """Every hybrid against the plain SAE and against each extra baseline at its rank, on `key`."""
    groups = role_groups(saes)
    out = []
    for hybrid in (g for g in groups if g.kind == "hybrid"):
        for kind in AGAINST:
            rank = 0 if kind == "baseline" else hybrid.for_rank
            match = [g for g in groups if g.kind == kind and g.for_rank == rank and g.arch == hybrid.arch
                     and g.inference == hybrid.inference]
            if not match:
                continue
            other = match[0]
            seeds = sorted(set(hybrid.by_seed) & set(other.by_seed))
            h, b = hybrid.values(key, seeds), other.values(key, seeds)
            diffs = [x - y for x, y in zip(h, b) if x is not None and y is not None]
            hm, hs = mean_sd(h)
            bm, bs = mean_sd(b)
            dm, ds = mean_sd(diffs)
            out.append(DenseComparison(hybrid.for_rank, kind, len(seeds), hm, hs, bm, bs, dm, ds,
                                       dm / bm if dm is not None and bm else None,
                                       bool(diffs) and all(d < 0 for d in diffs)))
    return out


def seed_table(saes: dict[str, dict[str, Any]]) -> Table:
    rows = []
    for g in role_groups(saes):
        rows.append([g.label, g.arch, g.inference, len(g.by_seed),
                     *[format_mean_sd(*g.stat(key)) for _, key in SEED_METRICS]])
    return Table(["SAE", "arch", "inference", "seeds", *[title for title, _ in SEED_METRICS]], rows,
                 caption="mean ± sd over seeds (sample sd); every seed's numbers are in 'Rank sweep' and results.json")


def claim_table(saes: dict[str, dict[str, Any]]) -> Table:
    rows = []
    for c in dense_comparisons(saes):
        verdict = ("fewer in every seed" if c.fewer_every_seed else
                   "not fewer" if c.diff_mean is None or c.diff_mean >= 0 else "fewer on average, not in every seed")
        rows.append([f"hybrid r={c.hybrid_rank}", c.against, c.seeds, format_mean_sd(c.hybrid_mean, c.hybrid_sd),
                     format_mean_sd(c.against_mean, c.against_sd), format_mean_sd(c.diff_mean, c.diff_sd),
                     "n/a" if c.change is None else f"{100 * c.change:+.0f}%", verdict])
    return Table(["hybrid", "against", "seeds", "hybrid dense >10%", "against dense >10%", "difference",
                  "change", "verdict"], rows,
                 caption="difference = hybrid - baseline per seed (same batches), mean ± sd over seeds")


def sections(saes: dict[str, dict[str, Any]]) -> list[Section]:
    """'Dense latents against each baseline' (whenever there is a hybrid) and 'Over seeds' (with seeds > 1)."""
    out = []
    claim = claim_table(saes)
    if claim.rows:
        kinds = [k for k in AGAINST if any(row[1] == k for row in claim.rows)]
        text = ("The dense-latent claim (fewer latents firing on > 10% of held-out tokens at matched L0), stated "
                "against each baseline the study trained: " +
                "; ".join(f"{k} = {DESCRIPTIONS[k]}" for k in kinds) + ". " +
                ("With one seed there is no sd: differences of a few latents are within seed noise."
                 if n_seeds(saes) == 1 else f"Mean ± sd over {n_seeds(saes)} seeds."))
        out.append(Section("Dense latents against each baseline", text, tables=[claim]))
    if n_seeds(saes) > 1:
        figures = [_seed_figure(saes, "Dense latents (>10%) over seeds", "dense_10", "latents firing on > 10%"),
                   _seed_figure(saes, "FVU over seeds", "fvu", "FVU")]
        out.append(Section("Over seeds", "Each SAE trained from several initialisation seeds in lockstep on the "
                           "same batches; mean ± sd over seeds. Figures: the mean by compared rank r (capacity-"
                           "matched SAEs at their r, with k + r latents).", tables=[seed_table(saes)],
                           figures=figures))
    return out


def _seed_figure(saes, title: str, key: str, ylabel: str) -> Figure:
    series: dict[str, Series] = {}
    for g in role_groups(saes):
        if g.kind == "baseline":
            continue
        label = f"{g.kind} ({g.arch}, {g.inference})"
        s = series.setdefault(label, Series(label, [], []))
        mean, _ = g.stat(key)
        if mean is not None:
            s.x.append(g.for_rank)
            s.y.append(mean)
    for g in role_groups(saes):
        mean, _ = g.stat(key)
        if g.kind == "baseline" and mean is not None:
            xs = sorted({0, *(x for s in series.values() for x in s.x)})
            label = f"baseline ({g.arch}, {g.inference})"
            series[label] = Series(label, xs, [mean] * len(xs))
    return Figure(title, list(series.values()), xlabel="compared scaffold rank r", ylabel=ylabel,
                  logy=key.startswith("dense"))
