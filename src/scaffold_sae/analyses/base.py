"""The analysis protocol: a registry of analyses, the context they run in, and typed results <-> JSON.

An analysis is one module with a config dataclass (each field documented; the study config holds one, as
analyses.<name>, see runner.AnalysesConfig), a result dataclass, `run(context, config) -> result | None` (None:
nothing to analyse, e.g. no hybrid SAE) and `sections(result) -> list[Section]`, plus one `register(...)` call.
Analyses run, and their sections appear, in registration order; a later analysis may read the typed results of
earlier ones in `context.results`. A result dataclass (or one nested in it) whose JSON layout changed defines a
staticmethod `upgrade_json(data) -> data` that rewrites what earlier versions wrote, so old results.json files still
load.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from scaffold_sae.lm_passes import DEFAULT_SINK_FACTOR
from scaffold_sae.report import Section, jsonable
from scaffold_sae.subspace import PCA


class AnalysisError(ValueError):
    """An analysis that cannot run as asked."""


# ---------------------------------------------------------------------------------------------- typed JSON


def to_json(result: Any) -> Any:
    """A JSON-safe value from a result dataclass (recursively; NaN/inf -> None)."""
    return jsonable(result)


def from_json(cls: Any, data: Any) -> Any:
    """Rebuild a value of type `cls` (a dataclass, list[...], dict[str, ...], X | None or a plain type) from the
    JSON `to_json` wrote."""
    if data is None:
        return None
    origin = typing.get_origin(cls)
    if origin in (typing.Union, types.UnionType):
        options = [t for t in typing.get_args(cls) if t is not type(None)]
        return from_json(options[0], data) if len(options) == 1 else data
    if origin is list:
        (item,) = typing.get_args(cls) or (Any,)
        return [from_json(item, v) for v in data]
    if origin is dict:
        _, value = typing.get_args(cls) or (str, Any)
        return {k: from_json(value, v) for k, v in data.items()}
    if dataclasses.is_dataclass(cls):
        if hasattr(cls, "upgrade_json"):
            data = cls.upgrade_json(data)
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        return cls(**{k: from_json(hints[k], v) for k, v in data.items() if k in names})
    return data


# ---------------------------------------------------------------------------------------------- the context


@dataclass
class AnalysesSettings:
    """The settings every analysis shares: the `analyses` node of the study config, beside one sub-config per
    analysis (runner.AnalysesConfig)."""

    enabled: bool = True
    """Run the scaffold analyses (structure, causality, the causal ablation table, redundancy, probing, the
    fixed-probe topic analysis, rank selection) after evaluating."""
    seeds: int = 1
    """How many seeds (0 .. seeds - 1, at most sae.seeds) the analyses run on, each on that seed's plain SAE and
    hybrids; results.json keeps seed 0's under "analyses" and the others' under "seed_analyses", and the report's
    summary decides each claim over the seeds (a t-interval) as well as within each seed. Each seed repeats the
    analyses' cost."""
    tokens: int = 8_192
    """Held-out tokens for the structure, redundancy and rank-selection statistics."""
    ce_tokens: int = 512
    """Held-out tokens (a prefix of the eval contexts, at most harvest.ce_tokens) for the ablation CEs; the
    statistics, means, PCA basis and donors of the analyses are fitted on the eval contexts after this prefix (never
    on a CE context). Each ablation condition runs blocks layer+1.. and the head over them."""
    rank: int | None = None
    """Hybrid rank that the causality, redundancy, ablation-table and topic analyses use (None: the largest rank)."""
    bootstrap_samples: int = 2000
    """Bootstrap resamples behind the intervals of the causal ablation table and the redundancy curve (over CE
    contexts) and of probing (over test documents)."""


@dataclass
class SharedConfig:
    """What every analysis reads of the study config (runner.shared_config builds it from a StudyConfig; the
    defaults are the study's): the `analyses` node's shared settings and a few of the harvest's."""

    analysis_tokens: int = AnalysesSettings.tokens
    """analyses.tokens."""
    analysis_ce_tokens: int = AnalysesSettings.ce_tokens
    """analyses.ce_tokens."""
    ce_tokens: int = 1_024
    """harvest.ce_tokens: the study's spliced-CE tokens; caps analysis_ce_tokens."""
    analysis_rank: int | None = AnalysesSettings.rank
    """analyses.rank."""
    bootstrap_samples: int = AnalysesSettings.bootstrap_samples
    """analyses.bootstrap_samples."""
    ctx_len: int = 128
    """harvest.ctx_len: tokens per context."""
    sink_factor: float = DEFAULT_SINK_FACTOR
    """harvest.sink_factor: attention sinks (norm above this multiple of the context median) are left out."""
    seed: int = 0
    """The study's seed: seed of every random choice an analysis makes."""
    harvest_batch_size: int = 8
    """harvest.batch_size: contexts per LM forward (at most 4 for the full forwards of the CE passes)."""


@dataclass
class AnalysisContext:
    """What an analysis may use: the model, the SAEs, held-out data (never training tokens) and earlier results."""

    lm: Any
    layer: int
    saes: dict[str, Any]
    """name -> SAE (eval mode); rank 0 is a plain SAE, rank > 0 a hybrid."""
    baseline: str
    """Name of the plain SAE the hybrids are compared with."""
    contexts: torch.Tensor
    """Held-out token contexts [N, T], each starting with BOS."""
    activations: torch.Tensor
    """Held-out residual rows [n, d] (float32, CPU) at the eval_mask positions of the first fit contexts (never a
    CE context)."""
    pca: PCA
    """PCA of `activations` (their mean, eigenvalues, eigenvectors)."""
    shared: SharedConfig = field(default_factory=SharedConfig)
    cache: Any = None
    """The training ActivationCache (not used for statistics)."""
    study_cfg: Any = None
    progress: bool = False
    results: dict[str, Any] = field(default_factory=dict)
    """Typed results of the analyses that ran before this one."""
    controls: dict[str, Any] = field(default_factory=dict)
    """name -> control SAE (the study's PCA-deflation SAEs: the plain SAE on x with the top-r PCs projected out, cfg.rank
    = r), compared with the hybrid of the same rank by the analyses that read it (probing); never among `saes`."""

    @property
    def device(self) -> torch.device:
        return torch.device(getattr(self.lm, "device", "cpu"))

    @property
    def ce_contexts(self) -> torch.Tensor:
        """The prefix of the contexts the ablation CEs (and other evaluations) use."""
        return split_contexts(self.contexts, self.shared)[0]

    @property
    def fit_contexts(self) -> torch.Tensor:
        """The contexts after the CE prefix: every mean, PCA basis, threshold and donor is fitted on these."""
        return split_contexts(self.contexts, self.shared)[1]

    @property
    def ce_batch_size(self) -> int:
        return max(1, min(4, self.shared.harvest_batch_size))

    def hybrids(self) -> list[str]:
        """Names of the SAEs with a scaffold, by increasing rank."""
        return sorted((n for n, s in self.saes.items() if s.cfg.rank > 0), key=lambda n: self.saes[n].cfg.rank)

    def primary_hybrid(self) -> str:
        return primary_hybrid(self.saes, self.shared.analysis_rank)


def split_contexts(contexts: torch.Tensor, shared: SharedConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE contexts, fit contexts): the first min(analysis_ce_tokens, ce_tokens) / ctx_len contexts are evaluated
    on, the rest fitted on; no context is in both."""
    tokens = min(shared.analysis_ce_tokens, shared.ce_tokens)
    n_ce = max(1, tokens // contexts.shape[1])
    if n_ce >= contexts.shape[0]:
        raise AnalysisError(f"{contexts.shape[0]} held-out contexts leave none to fit on after the {n_ce} CE contexts "
                            f"(analysis_ce_tokens={shared.analysis_ce_tokens}): raise eval_tokens or lower "
                            f"analysis_ce_tokens")
    return contexts[:n_ce], contexts[n_ce:]


def primary_hybrid(saes: Mapping[str, Any], rank: int | None) -> str:
    """The hybrid the costly analyses use: rank `rank` if given, else the largest rank."""
    hybrids = {name: int(s.cfg.rank) for name, s in saes.items() if int(s.cfg.rank) > 0}
    if not hybrids:
        raise AnalysisError("no hybrid SAE (rank > 0) to analyse: include a rank above 0 in --ranks")
    if rank is None:
        return max(hybrids, key=hybrids.get)
    match = [n for n, r in hybrids.items() if r == rank]
    if not match:
        raise AnalysisError(f"analysis_rank={rank} is not among the hybrids' ranks {sorted(hybrids.values())}: "
                            f"pick one of them or leave it unset")
    return match[0]


# ---------------------------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Analysis:
    """One registered analysis."""

    name: str
    """Key of its result in analyses.json / results.json."""
    config_cls: type
    result_cls: type
    run: Callable[[AnalysisContext, Any], Any]
    """(context, config) -> result, or None when there is nothing to analyse."""
    sections: Callable[[Any], list[Section]]
    """result -> report sections."""

    def config(self, study_cfg: Any = None) -> Any:
        """Its settings in the study config (the node analyses.<name>), or its config class's defaults where the
        study config has no node for it (an analysis registered from outside the package)."""
        node = getattr(getattr(study_cfg, "analyses", None), self.name, None)
        if node is None:
            return self.config_cls()
        if not isinstance(node, self.config_cls):
            raise AnalysisError(f"analyses.{self.name} of the study config is a {type(node).__name__}, not the "
                                f"{self.config_cls.__name__} analysis {self.name!r} was registered with")
        return node

    def from_json(self, data: Any) -> Any:
        return from_json(self.result_cls, data)


RESERVED = frozenset({"version", "n_tokens", "settings", "timings"})
"""Keys of the analyses JSON that are not analyses."""

_REGISTRY: dict[str, Analysis] = {}


def register(name: str, config_cls: type, result_cls: type, run: Callable[[AnalysisContext, Any], Any],
             sections: Callable[[Any], list[Section]]) -> Analysis:
    """Add an analysis (it runs after, and its sections follow, those registered before it)."""
    if name in RESERVED:
        raise AnalysisError(f"{name!r} is reserved in the analyses JSON: name the analysis otherwise")
    if name in _REGISTRY:
        raise AnalysisError(f"an analysis named {name!r} is already registered: pick another name or unregister it")
    for cls in (config_cls, result_cls):
        if not dataclasses.is_dataclass(cls):
            raise AnalysisError(f"{cls.__name__} of analysis {name!r} must be a dataclass")
    _REGISTRY[name] = Analysis(name, config_cls, result_cls, run, sections)
    return _REGISTRY[name]


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def registered() -> dict[str, Analysis]:
    """name -> Analysis, in registration (run and report) order."""
    return dict(_REGISTRY)
