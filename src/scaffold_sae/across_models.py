"""One table across models: for each model, the reading of each claim that its experiments declared, with its interval
and verdict, beside the model's massive-dimension ratio (RESULTS.md, "Across models").

Which reading stands for a model is declared in results/across-models.yaml, row by row, chosen by the experiments'
design (the readings the README's findings cite), never by their numbers:

    models: [Gemma-3-270M layer 9, SmolLM2-135M layer 15]
    massive: [seeds-baselines-gemma3, seeds-baselines-smollm2]   # runs whose structure analysis gives the ratio
    rows:
    - claim: causal
      label: causal ratio, uncentred r = 24, zero, all positions
      readings: [causal-uncentred-r24-seeds-gemma3 @ uncentred r = 24, zero, all positions,
                 causal-seeds-smollm2 @ SmolLM2 u24, zero, all positions]

A reading is ``SLUG`` (the experiment's study), ``SLUG @ RUN`` (an analyse step, e.g. seed0), ``SLUG @ SERIES`` (a
series' primary row) or empty (no such experiment for that model). Each cell is drawn by the claims engine from the
committed summary; an experiment not yet run reads "not run". The massive-dimension ratio is the largest dimension's
mean |x| over the median dimension's (held-out tokens, ordinary positions: scaffold_sae.analyses.structure).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaffold_sae.config import ConfigError, load_config_file
from scaffold_sae.report import format_number

DECLARATION = "across-models.yaml"
"""The file in results/ that declares each model's readings."""
CLAIMS = ("dense", "structure", "causal", "redundancy", "topic", "probing")


@dataclass
class Row:
    """One row of the table: one claim's reading in each model."""

    claim: str
    """dense | structure | causal | redundancy | topic | probing."""
    label: str
    """What the row reads (operator, positions, rank), as the table shows it."""
    readings: list[str]
    """One reference per model, in the models' order: SLUG, SLUG @ RUN, SLUG @ SERIES, or empty."""
    against: str = ""
    """For a dense row: compare the hybrid with this baseline kind (e.g. pca_deflation) instead of the plain SAE;
    mean ± sd over seeds, reported and deciding nothing."""


@dataclass
class Declaration:
    """results/across-models.yaml."""

    models: list[str]
    """The models and layers, as a reader should see them (say so for a code-tuned or instruct model)."""
    massive: list[str] = field(default_factory=list)
    """Per model, the run whose structure analysis gives the massive-dimension ratio (empty: none)."""
    rows: list[Row] = field(default_factory=list)


def load_declaration(path: str | Path) -> Declaration | None:
    """results/across-models.yaml, checked (None when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return None
    data = load_config_file(path)
    models = [str(m) for m in data.get("models") or []]
    if not models:
        raise ConfigError(f"{path}: name the models (models: [...])")
    massive = [str(m or "") for m in data.get("massive") or [""] * len(models)]
    rows = []
    for i, item in enumerate(data.get("rows") or []):
        if not isinstance(item, dict) or item.get("claim") not in CLAIMS or not item.get("label"):
            raise ConfigError(f"{path}: row {i} needs a claim ({', '.join(CLAIMS)}), a label and readings")
        readings = [str(r or "") for r in item.get("readings") or []]
        if len(readings) != len(models):
            raise ConfigError(f"{path}: row {i} ({item['label']}) gives {len(readings)} readings for {len(models)} "
                              "models: give one per model, empty where there is none")
        rows.append(Row(item["claim"], str(item["label"]), readings, str(item.get("against") or "")))
    if len(massive) != len(models):
        raise ConfigError(f"{path}: massive gives {len(massive)} runs for {len(models)} models")
    return Declaration(models, massive, rows)


def _split(ref: str) -> tuple[str, str]:
    slug, _, run = ref.partition("@")
    return slug.strip(), run.strip()


def _run(summary: dict[str, Any], run: str) -> dict[str, Any] | None:
    runs = summary["runs"]
    key = "results.json" if not run else run if run in runs else f"{run}/table.json"
    return runs.get(key)


def claim_row(ref: str, key: str, results: str | Path, experiments: dict[str, Any]):
    """The claims engine's primary row for claim `key` of the reading `ref`, or None (not run, or no such row)."""
    from scaffold_sae.claims import claim_rows
    from scaffold_sae.experiments import load_summary, series_rows

    slug, run = _split(ref)
    if slug not in experiments:
        raise ConfigError(f"{DECLARATION}: {ref!r} names no experiment of experiments/")
    summary = load_summary(Path(results) / slug)
    if summary is None:
        return None
    series = next((s for s in experiments[slug].series if s.name == run), None)
    if series is not None:
        rows = series_rows(series, results)
    else:
        data = _run(summary, run)
        if data is None:
            raise ConfigError(f"{DECLARATION}: {ref!r}: results/{slug}/summary.json has no run or series {run!r}")
        rows = claim_rows(data)
    return next((r for r in rows if r.key == key and r.row == "primary"), None)


def massive_ratio(ref: str, results: str | Path) -> float | None:
    """The largest dimension's mean |x| over the median dimension's, from the structure analysis of `ref`'s run."""
    from scaffold_sae.experiments import load_summary

    slug, run = _split(ref)
    summary = load_summary(Path(results) / slug)
    data = _run(summary, run) if summary else None
    structure = ((data or {}).get("analyses") or {}).get("structure") or {}
    saes = structure.get("saes") or []
    if not saes or not saes[0].get("outlier_mean_abs") or not saes[0].get("median_mean_abs"):
        return None
    return float(saes[0]["outlier_mean_abs"][0]) / float(saes[0]["median_mean_abs"])


def dense_against(ref: str, against: str, results: str | Path) -> str:
    """The hybrid's dense-latent count against another baseline (e.g. pca_deflation) at the primary rank, mean ± sd
    over seeds: reported, deciding nothing."""
    from scaffold_sae.claims import primary_rank
    from scaffold_sae.experiments import load_summary
    from scaffold_sae.roles import dense_comparisons, format_mean_sd

    slug, run = _split(ref)
    summary = load_summary(Path(results) / slug)
    data = _run(summary, run) if summary else None
    if data is None:
        return "not run"
    rank = primary_rank(data)
    match = [c for c in dense_comparisons(data.get("saes") or {}) if c.against == against and c.hybrid_rank == rank]
    if not match:
        return f"no {against} SAE"
    c = match[0]
    change = "" if c.change is None else f", {100 * c.change:+.0f}%"
    return (f"hybrid {format_mean_sd(c.hybrid_mean, c.hybrid_sd)} vs {format_mean_sd(c.against_mean, c.against_sd)}"
            f" over {c.seeds} seeds{change} (no interval; decides nothing)")


def cell(row) -> str:
    if row is None:
        return "not run"
    if row.value is None:
        return f"{row.verdict} (no interval)"
    shown = format_number(row.value)
    if row.low is not None and row.high is not None:
        shown += f" [{format_number(row.low)}, {format_number(row.high)}]"
    units = f", n={row.units}" if row.units else ""
    return f"{shown}{units}: {row.verdict}"


def markdown(results: str | Path, experiments: dict[str, Any], declared: Declaration | None) -> list[str]:
    """The "Across models" section of RESULTS.md (no lines when nothing is declared)."""
    if declared is None:
        return []
    models = declared.models
    lines = ["## Across models", "",
             f"Each model's declared reading of each claim ([{DECLARATION}]({DECLARATION}), chosen by design), with its "
             "95% interval, the units behind it (n) and the claims engine's verdict. Massive-dimension ratio: the "
             "largest dimension's mean |x| over the median dimension's, held-out tokens, ordinary positions.", "",
             "| | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    ratios = [massive_ratio(ref, results) if ref else None for ref in declared.massive]
    lines.append("| massive-dimension ratio | " + " | ".join(
        "not run" if r is None else f"{r:.0f}x" for r in ratios) + " |")
    for row in declared.rows:
        cells = ["-" if not ref else dense_against(ref, row.against, results) if row.against else
                 cell(claim_row(ref, row.claim, results, experiments)) for ref in row.readings]
        lines.append(f"| {row.label} | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    measured = sum(r is not None for r in ratios)
    lines += ["", f"Whether the massive-dimension ratio predicts the causal effect: {measured} of {len(models)} models "
              "measured, too few to test; the table shows the pairs.", ""]
    return lines
