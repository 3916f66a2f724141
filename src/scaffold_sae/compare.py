"""`scaffold-sae compare`: the scaffold across studies (e.g. two models), side by side, from their results.json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from scaffold_sae.analyses import AnalysisError, AnalysisResults
from scaffold_sae.config import setting
from scaffold_sae.report import ReportPaths, Section, Table
from scaffold_sae.roles import kind_of, seed_of


def compare_studies(studies: Mapping[str, dict]) -> Section:
    """One side-by-side section from several studies' results (each a results.json dict with 'analyses')."""
    rows = []
    for label, study in studies.items():
        analyses = AnalysisResults.from_json(study.get("analyses") or {})
        cfg = study.get("config", {})
        structure = analyses.results.get("structure")
        s: Any = structure.saes[-1] if structure is not None and structure.saes else None
        causality = analyses.results.get("causality")
        ratios = {o.condition: o.ratio for o in causality.outcomes} if causality is not None else {}
        dense = {v.get("rank"): v.get("dense_10") for v in study.get("saes", {}).values()
                 if kind_of(v) in ("baseline", "hybrid") and seed_of(v) == 0}  # seed 0's, as in the analyses
        red = analyses.results.get("redundancy")
        rank = s.rank if s is not None else None
        rows.append([label, setting(cfg, "harvest.model"), setting(cfg, "harvest.layer"), rank, dense.get(0), dense.get(rank),
                     s.mean_cos2 if s else None, s.variance_share_scaffold if s else None,
                     ",".join(map(str, s.outlier_dims)) if s else "",
                     s.outlier_energy_scaffold_uncentred if s else None, ratios.get("scaffold:remove"),
                     ratios.get("scaffold:mean"), ratios.get("pca:mean"), ratios.get("random:mean"),
                     red.ratio_aligned_ablated if red is not None else None])
    table = Table(["study", "model", "layer", "rank", "dense>10% r=0", "dense>10% hybrid", "mean cos^2 vs PCA",
                   "variance in span(U)", "outlier dims", "outlier energy in span(U)", "CE x scaffold removed",
                   "CE x scaffold mean-abl.", "CE x PCA mean-abl.", "CE x random mean-abl.",
                   "CE x aligned features abl."], rows, caption="The scaffold across models")
    return Section("Across models", "Is the scaffold found in each model, how large is it, how causal, and which "
                   "outlier dimensions does it hold?", tables=[table])


@dataclass
class CompareConfig:
    """`scaffold-sae compare`: one report comparing the scaffold across studies (dense latents, structure, causality
    and redundancy), read from each study's results.json."""

    results: list[str]
    """results.json of each study, optionally labelled LABEL=PATH (gemma=runs/demo/report/results.json)."""
    out: str
    """Output directory for the comparison report."""


def compare_results(cfg: CompareConfig) -> ReportPaths:
    """Write the side-by-side report of the studies in ``cfg.results`` into ``cfg.out``."""
    from scaffold_sae.study_report import load_results, write_report

    studies = {}
    for item in cfg.results:
        label, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        study = load_results(path)
        if not study.get("analyses"):
            raise AnalysisError(f"{path} has no analyses: rerun its study with --analyses.enabled true")
        config = study.get("config", {})
        studies[label or f"{setting(config, 'harvest.model')}-L{setting(config, 'harvest.layer')}"] = study
    return write_report({"title": "scaffold-sae: the scaffold across studies", "config": {
        label: {"model": setting(s.get("config", {}), "harvest.model"),
                "layer": setting(s.get("config", {}), "harvest.layer")}
        for label, s in studies.items()}, "saes": {}}, cfg.out, sections=[compare_studies(studies)])
