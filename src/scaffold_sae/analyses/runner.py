"""The orchestrator: every registered analysis on held-out data inside the study, cached in <out>/analyses.json,
and the typed results <-> the JSON the study's results.json holds under "analyses"."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from scaffold_sae.analyses.ablation_table import AblationTableConfig
from scaffold_sae.analyses.base import (RESERVED, Analysis, AnalysesSettings, AnalysisContext, AnalysisError,
                                        SharedConfig, registered, split_contexts, to_json)
from scaffold_sae.analyses.causality import CausalityConfig
from scaffold_sae.analyses.probing import ProbingConfig
from scaffold_sae.analyses.rank_selection import RankSelectionConfig
from scaffold_sae.analyses.redundancy import RedundancyConfig
from scaffold_sae.analyses.structure import StructureConfig
from scaffold_sae.analyses.topic_ablation import TopicConfig
from scaffold_sae.lm_passes import heldout_activations
from scaffold_sae.report import Section, Table
from scaffold_sae.subspace import pca


@dataclass
class AnalysesConfig(AnalysesSettings):
    """The analyses of a study: the settings they share, then one sub-config per registered analysis (named as it
    is registered; tests/test_analysis.py checks the two lists agree)."""

    structure: StructureConfig = field(default_factory=StructureConfig)
    """The scaffold's structure: principal angles to the top PCs, variance shares, outlier dimensions."""
    causality: CausalityConfig = field(default_factory=CausalityConfig)
    """Next-token CE with the scaffold, the top-r PCs or r random directions ablated."""
    ablation_table: AblationTableConfig = field(default_factory=AblationTableConfig)
    """The causal ablation table: every (subject, operator, positions) cell with bootstrap intervals."""
    redundancy: RedundancyConfig = field(default_factory=RedundancyConfig)
    """Which of the plain SAE's latents the scaffold makes redundant, and the like-for-like ablation curve."""
    probing: ProbingConfig = field(default_factory=ProbingConfig)
    """Sparse probing of every SAE of the study on labelled datasets."""
    topic_ablation: TopicConfig = field(default_factory=TopicConfig)
    """The fixed-probe topic analysis: a topic probe read after ablating the scaffold, PCs or latents."""
    rank_selection: RankSelectionConfig = field(default_factory=RankSelectionConfig)
    """Evidence for choosing the scaffold rank from data (spectrum and sweep knees)."""


def shared_config(cfg: Any) -> SharedConfig:
    """What every analysis reads of a StudyConfig."""
    return SharedConfig(analysis_tokens=cfg.analyses.tokens, analysis_ce_tokens=cfg.analyses.ce_tokens,
                        ce_tokens=cfg.harvest.ce_tokens, analysis_rank=cfg.analyses.rank,
                        bootstrap_samples=cfg.analyses.bootstrap_samples, ctx_len=cfg.harvest.ctx_len,
                        sink_factor=cfg.harvest.sink_factor, seed=cfg.seed, harvest_batch_size=cfg.harvest.batch_size)


VERSION = 2
"""Layout of the analyses JSON. Version 1 (no "version" key, written before the analyses were a registry) kept the
structure results as a bare list, and its results.json stored the rendered analysis sections too."""


@dataclass
class AnalysisResults:
    """The typed result of each analysis that ran, with the settings and the seconds they took."""

    n_tokens: int
    """Held-out tokens behind the statistics."""
    results: dict[str, Any] = field(default_factory=dict)
    """analysis name -> its typed result, in registration order."""
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.results[name]

    def __contains__(self, name: str) -> bool:
        return name in self.results

    def to_json(self) -> dict[str, Any]:
        """{"n_tokens", one key per analysis, "settings", "timings"} (JSON-safe)."""
        return to_json({"version": VERSION, "n_tokens": self.n_tokens, **self.results, "settings": self.settings,
                        "timings": self.timings})

    @classmethod
    def from_json(cls, data: Mapping[str, Any], analyses: Mapping[str, Analysis] | None = None) -> "AnalysisResults":
        """Typed results again; an analysis that is not registered keeps its plain JSON value."""
        analyses = registered() if analyses is None else analyses
        if "version" not in data and isinstance(data.get("structure"), list):
            data = {**data, "structure": {"saes": data["structure"]}}
        results = {name: analyses[name].from_json(value) if name in analyses else value
                   for name, value in data.items() if name not in RESERVED}
        return cls(n_tokens=int(data.get("n_tokens") or 0), results=results, settings=dict(data.get("settings") or {}),
                   timings=dict(data.get("timings") or {}))

    def sections(self, analyses: Mapping[str, Analysis] | None = None) -> list[Section]:
        """Every analysis's report sections, then the settings and cost."""
        analyses = registered() if analyses is None else analyses
        out: list[Section] = []
        for name, result in self.results.items():
            if result is None:
                continue
            out += analyses[name].sections(result) if name in analyses else [plain_section(name, result)]
        if self.settings or self.timings:
            rows = [[k, v] for k, v in {**self.settings, **self.timings}.items()]
            out.append(Section("Analysis settings and cost", "The settings behind the analyses above and the seconds "
                               "each part took (held-out tokens only; nothing here used training tokens).",
                               tables=[Table(["setting", "value"], rows)]))
        return out


def sections_from_json(data: Mapping[str, Any]) -> list[Section]:
    """The analyses' report sections from the analyses JSON of a results.json (what `scaffold-sae report` draws);
    none for a version-1 results.json, which stores its analysis sections with the others."""
    return AnalysisResults.from_json(data).sections() if "version" in data else []


def plain_section(name: str, value: Any) -> Section:
    """Every value of an analysis this process has not registered, as a key/value table."""
    rows: list[list[Any]] = []

    def walk(item: Any, prefix: str) -> None:
        if isinstance(item, dict):
            for key, sub in item.items():
                walk(sub, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(item, list) and any(isinstance(v, (dict, list)) for v in item):
            for i, sub in enumerate(item):
                walk(sub, f"{prefix}[{i}]")
        else:
            rows.append([prefix, item])

    walk(to_json(value), "")
    return Section(f"Analysis: {name}", "Results of an analysis not registered in this process, as stored.",
                   tables=[Table(["field", "value"], rows)])


def sae_fingerprint(sae) -> str:
    """A short hash of an SAE's decoder, bias and scaffold (so retrained SAEs invalidate cached analyses)."""
    digest = hashlib.sha256()
    for tensor in (sae.W_dec, sae.b_dec, sae.U):
        flat = tensor.detach().reshape(-1).float().cpu()
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(flat[:4096].numpy().tobytes())
        digest.update(flat[-4096:].numpy().tobytes())
    return digest.hexdigest()[:16]


def contexts_digest(contexts: torch.Tensor) -> str:
    """Shape and a hash of every token id: cached results are reused only on exactly the same contexts."""
    ids = contexts.detach().to("cpu", torch.int64).contiguous()
    return f"{list(ids.shape)}:{hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:16]}"


def analysis_settings(cfg: Any, analyses: Mapping[str, Analysis] | None = None) -> dict[str, Any]:
    """The study settings the analyses depend on: the shared ones and each analysis config's fields (one flat
    mapping, as results.json's analyses "settings" has always held them)."""
    analyses = registered() if analyses is None else analyses
    settings = dataclasses.asdict(shared_config(cfg))
    for analysis in analyses.values():
        settings.update(dataclasses.asdict(analysis.config(cfg)))
    return settings


def run_analyses(lm, layer: int, saes: dict, baseline_name: str, cache, contexts: torch.Tensor, cfg,
                 out: str | Path | None = None, progress: bool = True,
                 analyses: Mapping[str, Analysis] | None = None,
                 controls: Mapping[str, Any] | None = None) -> tuple[AnalysisResults, list[Section]]:
    """Every registered analysis (or the given ones), in order, on held-out `contexts`, with the settings of `cfg` (a
    StudyConfig: its `analyses` section and what shared_config reads). With `out`, results are
    cached in out/analyses.json and reused when the SAEs, the analyses and their settings match. `cache` (the
    training ActivationCache) is not used for statistics: every number comes from held-out tokens. Returns the typed
    results (as stored: NaN -> None) and their report sections. `controls` (the PCA-deflation SAEs) are compared with
    the hybrids by the analyses that read AnalysisContext.controls."""
    analyses = registered() if analyses is None else dict(analyses)
    settings = analysis_settings(cfg, analyses)
    key = {"saes": {name: sae_fingerprint(sae) for name, sae in sorted(saes.items())}, "baseline": baseline_name,
           "layer": int(layer), "model": str(lm.spec), "contexts": contexts_digest(contexts),
           "analyses": list(analyses), "settings": settings,
           **({"controls": {name: sae_fingerprint(sae) for name, sae in sorted(controls.items())}} if controls else {})}
    path = Path(out) / "analyses.json" if out is not None else None
    if path is not None and path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            results = AnalysisResults.from_json(stored["results"], analyses)
            return results, results.sections(analyses)
    if baseline_name not in saes:
        raise AnalysisError(f"baseline {baseline_name!r} is not among the SAEs {sorted(saes)}")
    shared = shared_config(cfg)
    clock = time.perf_counter()
    _, fit = split_contexts(contexts, shared)
    x = heldout_activations(lm, layer, fit, shared.analysis_tokens, shared.harvest_batch_size,
                            shared.sink_factor, progress)
    context = AnalysisContext(lm=lm, layer=layer, saes=saes, baseline=baseline_name, contexts=contexts,
                              activations=x, pca=pca(x), shared=shared, cache=cache, study_cfg=cfg,
                              progress=progress, controls=dict(controls or {}))
    timings = {"activations_s": time.perf_counter() - clock}
    for name, analysis in analyses.items():
        clock = time.perf_counter()
        result = analysis.run(context, analysis.config(cfg))
        if result is not None:
            context.results[name] = result
        timings[f"{name}_s"] = time.perf_counter() - clock
    data = AnalysisResults(int(x.shape[0]), context.results, settings, timings).to_json()
    if path is not None:
        from scaffold_sae.fetch import atomic_write_text

        atomic_write_text(path, json.dumps({"key": key, "results": data}, allow_nan=False) + "\n")
    results = AnalysisResults.from_json(data, analyses)
    return results, results.sections(analyses)
