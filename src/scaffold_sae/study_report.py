"""The study report: one self-contained report.html, its report.md twin and results.json, from one study dict.

A study is a JSON-serialisable dict:

    {"title": str (optional),
     "config": {...},                                   # whatever produced the numbers (nested dicts allowed)
     "saes": {name: CoreEval as dict, ...},              # each with at least rank, arch, inference and metrics
     "analyses": {name: analysis result as JSON, ...},   # optional (scaffold_sae.analyses)
     "training": {name: how its training ended + curves}, # optional (the study: train_log.jsonl, SAE summaries)
     "sections": [Section as dict, ...]}                 # optional extra sections

The report opens with the summary of the paper's claims (scaffold_sae.claims; also written to results.json as
"summary", a list of dicts, recomputed on every write). Built-in sections (rank sweep with plots, density
histograms, every core number) are derived from "saes"; then each analysis draws its own sections from its typed
result (rebuilt from "analyses"); extra sections are appended unchanged, so anything else adds a `Section` (title,
text, tables, figures) without touching the writer; the training curves and the configuration close the report.
Every figure is drawn from data kept in the JSON and is followed by its data table, so the JSON alone regenerates
the whole report (`scaffold-sae report`).

Every number of results.json appears, formatted by `format_number`, in report.md and report.html, except the
per-latent density arrays (`density`), which are shown through their histograms.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Iterable

from scaffold_sae.report import (Figure, ReportError, ReportPaths, Section, Series, Table, jsonable, render_html,
                                 render_markdown)


SWEEP_COLUMNS = (("arch", "arch"), ("rank", "rank"), ("inference", "inference"), ("L0", "l0"), ("FVU", "fvu"),
                 ("FVU sparse part", "fvu_sparse"), ("CE score (zero-abl)", "ce_score_zero"),
                 ("CE score (mean-abl)", "ce_score_mean"), ("KL score (zero-abl)", "kl_score_zero"),
                 ("dense >10%", "dense_10"), ("dense >1%", "dense_1"), ("dead", "dead"),
                 ("max density", "max_density"))


def normalise_study(study: Any) -> dict[str, Any]:
    """A plain JSON-safe dict (dataclasses expanded, NaN/inf -> None, numpy scalars -> Python)."""
    if is_dataclass(study):
        study = asdict(study)
    if not isinstance(study, dict):
        raise ReportError(f"a study result must be a dict or dataclass, got {type(study).__name__}")
    study = jsonable(study)
    if not isinstance(study.get("saes", {}), dict):
        raise ReportError("study['saes'] must map SAE names to their core-eval dicts")
    return study


def build_sections(study: dict[str, Any]) -> list[Section]:
    """The summary of the paper's claims (a study with a hybrid or analyses), the built-in sections from
    study['saes'], the analyses' sections from study['analyses'], study['sections'] in order, the training curves
    (study['training']), the snapshots' curves (study['curves']) and the configuration last."""
    saes: dict[str, dict[str, Any]] = study.get("saes", {})
    sections = []
    rows = summary_rows(study)
    if rows:
        from scaffold_sae.claims import claims_section
        from scaffold_sae.plan import plan_of

        sections.append(claims_section(rows, analysis_seeds=1 + len(study.get("seed_analyses") or {}),
                                       plan_line=plan_of(study)[1]))
    if saes:
        from scaffold_sae import roles  # mean +- sd over seeds and the claim against each baseline

        sections += [*roles.sections(saes), sweep_section(saes), density_section(saes), all_numbers_section(saes)]
    if study.get("analyses"):
        from scaffold_sae.analyses import sections_from_json  # the layer above: each analysis draws its sections

        sections += sections_from_json(study["analyses"])
    sections += [Section.from_dict(s) if isinstance(s, dict) else s for s in study.get("sections", [])]
    if study.get("training"):
        sections.append(training_section(study["training"]))
    if study.get("curves"):
        from scaffold_sae import curves

        sections.append(curves.section([curves.CurvePoint(**p) for p in study["curves"]]))
    sections.append(config_section(study.get("config", {})))
    return sections


def summary_rows(study: dict[str, Any]) -> list:
    """The paper's claims against the study's numbers (scaffold_sae.claims), or [] for results without a hybrid and
    without analyses (one eval)."""
    from scaffold_sae.roles import kind_of

    if not study.get("analyses") and not any(kind_of(r) == "hybrid" for r in study.get("saes", {}).values()):
        return []
    from scaffold_sae.claims import claim_rows

    return claim_rows(study)


def config_section(config: dict[str, Any]) -> Section:
    rows = [[key, value] for key, value in _flatten(config)]
    return Section("Configuration", "The settings that produced every number above.",
                   tables=[Table(["setting", "value"], rows)])


def training_section(training: dict[str, dict[str, Any]]) -> Section:
    """Training loss and held-out FVU against tokens per SAE, and how each run ended (study['training'], written by
    the study from train_log.jsonl and each saved SAE's summary)."""
    rows, loss, heldout = [], [], []
    for name, run in sorted(training.items()):
        if run.get("stop_reason") == "converged":
            ended = f"converged: stopped at step {run.get('steps')} of {run.get('max_steps')}"
        else:
            ended = f"stopped at the budget ({run.get('steps')} steps)"
        if run.get("converged_step") is not None:
            ended += f"; the rule held from step {run['converged_step']}"
        rows.append([name, ended, run.get("steps"), run.get("max_steps"), run.get("tokens"), run.get("heldout_fvu")])
        curve, held = run.get("curve") or {}, run.get("heldout") or {}
        if curve.get("tokens"):
            loss.append(Series(name, list(curve["tokens"]), list(curve["loss"])))
        if held.get("tokens"):
            heldout.append(Series(name, list(held["tokens"]), list(held["fvu"])))
    figures = [Figure("Training loss vs tokens", loss, xlabel="training tokens",
                      ylabel="loss (mean over the log window)")]
    if heldout:
        figures.append(Figure("Held-out FVU vs tokens", heldout, xlabel="training tokens", ylabel="held-out FVU"))
    text = ("How each SAE's training ended and its curves, from train_log.jsonl. Held-out FVU is measured on rows of "
            "the cache that training never reads (heldout_every > 0); with until_converged, all SAEs stop together "
            "at the first measurement where, for every one, held-out FVU improved by less than converge_tol over the "
            "last converge_frac of the steps." + ("" if heldout else " No held-out FVU was measured in this study."))
    table = Table(["SAE", "how training ended", "steps", "max steps", "tokens", "final held-out FVU"], rows)
    return Section("Training", text, tables=[table], figures=[f for f in figures if f.series])


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        out = []
        for key, item in value.items():
            out += _flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return out or [(prefix, "{}")]
    return [(prefix, value)]


def _ordered(saes: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return sorted(saes.items(), key=lambda item: (str(item[1].get("arch", "")), str(item[1].get("inference", "")),
                                                  item[1].get("rank", 0), item[0]))


def _groups(saes: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """One line per arch and inference; extra baselines and seeds after the first get lines of their own."""
    from scaffold_sae.roles import kind_of, seed_of

    groups: dict[str, list[dict[str, Any]]] = {}
    for _, result in _ordered(saes):
        label = f"{result.get('arch', 'sae')}, {result.get('inference', 'threshold')} inference"
        if kind_of(result) not in ("baseline", "hybrid"):
            label += f", {kind_of(result)}"
        if seed_of(result):
            label += f", seed {seed_of(result)}"
        groups.setdefault(label, []).append(result)
    return groups


def _sweep_figure(saes, title: str, keys: list[tuple[str, str]], ylabel: str, logy: bool = False) -> Figure:
    from scaffold_sae.roles import for_rank

    series = []
    for group, results in _groups(saes).items():
        for label, key in keys:
            points = [(for_rank(r), r[key]) for r in results if r.get(key) is not None]
            name = group if len(keys) == 1 else f"{group}: {label}"
            series.append(Series(name, [p[0] for p in points], [p[1] for p in points]))
    return Figure(title, series, kind="line", xlabel="scaffold rank r", ylabel=ylabel, logy=logy)


def sweep_section(saes: dict[str, dict[str, Any]]) -> Section:
    from scaffold_sae.roles import kind_of, seed_of

    rows = [[name, kind_of(result), seed_of(result), *[result.get(key) for _, key in SWEEP_COLUMNS]]
            for name, result in _ordered(saes)]
    text = ("Held-out tokens, position 0 (BOS) excluded; one row per SAE and seed. L0, dead and dense "
            "counts come from the sparse latents only; FVU and CE use the full reconstruction (scaffold + "
            "sparse). CE score = (CE_abl - CE_sae) / (CE_abl - CE_clean).")
    figures = [
        _sweep_figure(saes, "Dense latents vs scaffold rank", [(">10%", "dense_10"), (">1%", "dense_1")],
                      "latents firing on > x% of tokens", logy=True),
        _sweep_figure(saes, "FVU vs scaffold rank", [("FVU", "fvu")], "fraction of variance unexplained"),
        _sweep_figure(saes, "CE loss score vs scaffold rank",
                      [("zero-abl", "ce_score_zero"), ("mean-abl", "ce_score_mean")], "CE loss score"),
    ]
    return Section("Rank sweep", text, tables=[Table(["sae", "kind", "seed", *[t for t, _ in SWEEP_COLUMNS]], rows)], figures=figures)


def density_section(saes: dict[str, dict[str, Any]]) -> Section:
    series = []
    for name, result in _ordered(saes):
        counts, edges = result.get("density_hist_counts"), result.get("density_hist_edges")
        if counts and edges:
            series.append(Series(f"{name} (r={result.get('rank', 0)})", list(edges), list(counts)))
    text = ("Per-latent firing density on held-out tokens, log10 scale (dead latents are not in the histogram; "
            "see the dead count). Dashed lines: 1% and 10%.")
    figure = Figure("Per-latent firing density, baseline vs hybrid", series, kind="step",
                    xlabel="log10(firing density)", ylabel="latents", logy=True, vlines=[-2.0, -1.0])
    return Section("Latent density", text, figures=[figure] if series else [])


def all_numbers_section(saes: dict[str, dict[str, Any]]) -> Section:
    ordered = _ordered(saes)
    keys: list[str] = []
    for _, result in ordered:
        keys += [k for k, v in result.items() if not isinstance(v, (list, dict)) and k not in keys]
    rows = [[key, *[result.get(key) for _, result in ordered]] for key in keys]
    return Section("Every core number", "One column per SAE, every scalar of its core evaluation.",
                   tables=[Table(["metric", *[name for name, _ in ordered]], rows)])


def write_report(study: Any, out_dir: str | Path, sections: Iterable[Section] = ()) -> ReportPaths:
    """Write results.json, report.md and report.html into out_dir (each atomically); extra `sections` are
    appended after the study's own and stored in results.json so `scaffold-sae report` can redraw them."""
    from scaffold_sae.fetch import atomic_write_text

    study = normalise_study(study)
    extra = [jsonable(asdict(s)) for s in sections]
    if extra:
        study = {**study, "sections": [*study.get("sections", []), *extra]}
    study = {k: v for k, v in study.items() if k != "summary"}
    summary = jsonable(summary_rows(study))
    if summary:
        study["summary"] = summary
    title = str(study.get("title") or "scaffold-sae study")
    built = build_sections(study)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = ReportPaths(html=out / "report.html", markdown=out / "report.md", json=out / "results.json")
    atomic_write_text(paths.json, json.dumps(study, indent=1, allow_nan=False) + "\n")
    atomic_write_text(paths.markdown, render_markdown(title, built))
    atomic_write_text(paths.html, render_html(title, built))
    return paths


def load_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"results file {path} does not exist: pass the results.json a study or eval wrote")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ReportError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}): regenerate it") from None
    if isinstance(data, dict) and "eval" in data and "saes" not in data:  # one `scaffold-sae eval` output
        name = Path(str(data.get("sae", "sae"))).name
        data = {"title": f"core evaluation of {name}", "config": {k: v for k, v in data.items() if k != "eval"},
                "saes": {name: data["eval"]}}
    if not isinstance(data, dict) or not isinstance(data.get("saes"), dict):
        raise ReportError(f"{path} is not a study's results.json (no \"saes\" mapping): pass the results.json a "
                          "study or eval wrote")
    return data


@dataclass
class ReportConfig:
    """`scaffold-sae report`: regenerate the self-contained HTML report, its Markdown twin and results.json from a
    study's results.json (or one `scaffold-sae eval` JSON)."""

    results: str
    """results.json of a study, or an eval JSON."""
    out: str
    """Output directory."""


def report_from_results(cfg: ReportConfig) -> ReportPaths:
    """(Re)write the report of ``cfg.results`` into ``cfg.out``; the stored sections' relative links (e.g. the
    study's feature-browser sites) are rewritten to reach the same files from ``cfg.out``."""
    return write_report(rebase_links(load_results(cfg.results), Path(cfg.results).parent, cfg.out), cfg.out)


def rebase_links(study: dict[str, Any], from_dir: str | Path, to_dir: str | Path) -> dict[str, Any]:
    """The study with every relative href of its stored sections, written for a report in ``from_dir`` (the folder
    of its results.json), rewritten for a report in ``to_dir``; absolute URLs, absolute paths and #anchors stay."""
    import os
    from urllib.parse import urlsplit

    source, target = Path(from_dir).resolve(), Path(to_dir).resolve()

    def rebased(href: str) -> str:
        parts = urlsplit(href)
        if parts.scheme or parts.netloc or not parts.path or parts.path.startswith("/"):
            return href
        path = Path(os.path.relpath(source / parts.path, target)).as_posix()
        return path + (f"#{parts.fragment}" if parts.fragment else "")

    if source == target or not study.get("sections"):
        return study
    sections = [{**s, "links": [[label, rebased(href)] for label, href in s["links"]]}
                if isinstance(s, dict) and s.get("links") else s for s in study["sections"]]
    return {**study, "sections": sections}
