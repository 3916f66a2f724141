"""The claims plan: each claim's primary reading and decision rule, declared before anything trains.

The study writes the plan into its output folder first (plan.json, and results.json's "plan"); the summary of the
paper's claims (scaffold_sae.claims) decides each claim from the reading the plan names and from nothing else:
other readings are reported as secondary and decide nothing. A plan changed after training began is detected
(`plan_status`: the stored plan.json differs from the current one) and said in the summary; the claims are then still
decided under the stored plan. Seeds beyond the plan's count (added after a look at the data) form a replication,
shown on its own row and never merged into the primary verdict.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from scaffold_sae.config import ConfigError, build

CLAIMS = ("dense", "structure", "causal", "redundancy", "topic", "probing")
PLAN_FILE = "plan.json"


@dataclass
class ClaimsPlan:
    """Each claim's primary reading and the rule that decides it, fixed before training (`--claims.<field>`)."""

    seeds: int = 3
    """Seeds in each primary reading (training seeds for the dense-latent claim, analysed seeds for the others); more
    seeds form a replication row of their own, fewer leave the claim undecided."""
    rank: int | None = None
    """Scaffold rank of the primary readings (None: the largest hybrid rank trained)."""
    min_units: int = 30
    """Fewest independent units (contexts, documents, or seeds crossed with contexts) an interval needs to decide."""
    alpha: float = 0.05
    """Family-wise error rate: two-sided intervals at 1 - alpha, Holm-adjusted across the family."""
    family: str = "dense,structure,causal,redundancy,topic,probing"
    """Comma-separated claims whose primary readings form the Holm family (the others are corrected on their own)."""
    correction: str = "holm"
    """Multiplicity correction across the family: holm, or none (raw intervals decide)."""
    dense_key: str = "dense_10"
    """Core-eval metric of the dense-latent claim (dense_10: latents firing on more than 10% of held-out tokens)."""
    dense_paper: float = -0.84
    """The paper's size of the dense-latent claim: relative change of the dense-latent count, hybrid vs plain SAE."""
    structure_cos2: float = 0.5
    """The structure claim's size: mean cos^2 of the principal angles between span(U) and the top-r PCs (no effect:
    r / d, a random subspace)."""
    causal_subject: str = "scaffold"
    """Subject removed in the causal reading (scaffold = U V^T as trained, span_u = orthogonal projector onto span U)."""
    causal_operator: str = "zero"
    """Operator of the causal reading: zero, mean or resample."""
    causal_positions: str = "ordinary"
    """Positions of the causal reading: ordinary (BOS and sinks untouched) or all."""
    causal_paper: float = 2.7
    """The paper's causal size: CE after removing the scaffold over CE after removing the top-r PCs (7.5 / 2.8)."""
    redundancy_operators: str = "zero,mean"
    """Operators under which the redundancy claim must hold alike (otherwise it depends on the operator)."""
    redundancy_paper: float = 0.387
    """The paper's redundancy size: CE ratio of the aligned latents ablated over the scaffold removed (2.9 / 7.5)."""
    topic_dataset: str = "bbc_topic"
    """Dataset of the topic reading."""
    topic_operator: str = "zero"
    """Operator removing the scaffold in the topic reading."""
    topic_positions: str = "ordinary"
    """Positions of the topic reading."""
    probing_k: int = 5
    """Sparse-probing k of the probing reading (mean accuracy over datasets, hybrid minus plain SAE)."""

    def __post_init__(self) -> None:
        unknown = [c for c in self.family_claims if c not in CLAIMS]
        if unknown:
            raise ConfigError(f"claims.family={self.family!r} names {unknown[0]!r}: use a comma-separated subset of "
                              f"{', '.join(CLAIMS)}")
        choices = {"correction": ("holm", "none"), "causal_operator": ("zero", "mean", "resample"),
                   "causal_positions": ("ordinary", "all"), "topic_operator": ("zero", "mean", "resample"),
                   "topic_positions": ("ordinary", "all")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"claims.{name}={getattr(self, name)!r} is invalid: use one of {', '.join(allowed)}")
        if self.seeds < 1 or self.min_units < 1:
            raise ConfigError("claims.seeds and claims.min_units must be at least 1")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"claims.alpha={self.alpha} is invalid: give a level between 0 and 1, e.g. 0.05")

    @property
    def family_claims(self) -> list[str]:
        return [c.strip() for c in self.family.split(",") if c.strip()]

    @property
    def redundancy_operator_list(self) -> list[str]:
        return [c.strip() for c in self.redundancy_operators.split(",") if c.strip()]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ClaimsPlan":
        """A stored plan; fields added since it was written take their defaults, fields since removed are dropped."""
        names = {f.name for f in fields(cls)}
        return build(cls, {k: v for k, v in data.items() if k in names})


def write_plan(out_dir: str | Path, plan: ClaimsPlan) -> None:
    """Write plan.json into the study's output folder, before anything trains; a plan already there is the one the
    study declared first and stays (plan_status reports a difference)."""
    from scaffold_sae.fetch import atomic_write_text

    path = Path(out_dir) / PLAN_FILE
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(plan.to_json(), indent=1) + "\n")


def stored_plan(out_dir: str | Path) -> ClaimsPlan | None:
    path = Path(out_dir) / PLAN_FILE
    if not path.is_file():
        return None
    try:
        return ClaimsPlan.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, ConfigError) as error:
        raise ConfigError(f"{path} is not a claims plan ({error}): restore it, or remove it to declare a new plan "
                          "(the summary then says the plan was declared after training began)") from None


def plan_changes(stored: ClaimsPlan, current: ClaimsPlan) -> list[str]:
    """'field: stored -> current' for every field that differs."""
    a, b = stored.to_json(), current.to_json()
    return [f"{name}: {a[name]!r} -> {b[name]!r}" for name in a if a[name] != b[name]]


def plan_status(out_dir: str | Path, plan: ClaimsPlan) -> str:
    """One line for results.json's "plan_status" and the summary: whether the run's current plan is the one stored
    before training began."""
    stored = stored_plan(out_dir)
    if stored is None:
        return "no plan was stored before training: the claims are decided under the current plan"
    changes = plan_changes(stored, plan)
    if not changes:
        return "as planned: the plan stored before training began decides every claim"
    return ("the plan changed after training began (" + "; ".join(changes) + "): the claims are decided under the "
            "stored plan")


def plan_of(study: Mapping[str, Any]) -> tuple[ClaimsPlan, str]:
    """The plan a study's results are decided under, and what the summary says about it: results.json's "plan" (with
    its "plan_status"); results written before plans get the default plan, its seed count capped at the seeds the
    study trained, and say so."""
    data = study.get("plan")
    if isinstance(data, Mapping):
        return ClaimsPlan.from_json(data), str(study.get("plan_status") or "plan stored in results.json")
    from scaffold_sae.config import setting

    seeds = setting(study.get("config", {}), "sae.seeds") or len(
        {int(r.get("seed") or 0) for r in (study.get("saes") or {}).values() if isinstance(r, Mapping)}) or 1
    default = ClaimsPlan()
    plan = ClaimsPlan(**{**default.to_json(), "seeds": max(1, min(default.seeds, int(seeds)))})
    return plan, (f"no plan stored (results written before plans): the default plan decides, with the first "
                  f"{plan.seeds} seed(s) primary and any further seeds a replication")


__all__ = ["CLAIMS", "PLAN_FILE", "ClaimsPlan", "write_plan", "stored_plan", "plan_changes", "plan_status", "plan_of"]
