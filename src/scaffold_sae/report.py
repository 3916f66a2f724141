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

import base64
import html
import io
import json
import math
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote

import numpy as np

EXEMPT_KEYS = frozenset({"density"})
"""Per-latent arrays kept in results.json but summarised (histogram, counts) rather than printed."""


class ReportError(ValueError):
    """A study result that cannot be turned into a report."""


# ---------------------------------------------------------------------------------------------- building blocks


@dataclass
class Series:
    label: str
    x: list[float]
    y: list[float]


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""
    wrap: bool = False
    """Let cell text wrap in HTML (tables of sentences); numeric tables keep one line per cell."""


@dataclass
class Figure:
    """A plot drawn from data: kind 'line' (markers + lines), 'step' (histogram: x = left bin edges plus the
    last right edge, y = counts) or 'png' (a ready image, base64 in `png_base64`)."""

    title: str
    series: list[Series] = field(default_factory=list)
    kind: str = "line"
    xlabel: str = ""
    ylabel: str = ""
    logy: bool = False
    vlines: list[float] = field(default_factory=list)
    caption: str = ""
    png_base64: str = ""


@dataclass
class Section:
    title: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    links: list[list[str]] = field(default_factory=list)
    """[label, href] pairs, shown as a list of links after the text; hrefs are relative to the report's folder."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Section":
        figures = [Figure(**{**f, "series": [Series(**s) for s in f.get("series", [])]}) for f in data.get("figures", [])]
        return cls(title=data["title"], text=data.get("text", ""),
                   tables=[Table(**t) for t in data.get("tables", [])], figures=figures,
                   links=[list(link) for link in data.get("links", [])])


@dataclass
class ReportPaths:
    html: Path
    markdown: Path
    json: Path


# ---------------------------------------------------------------------------------------------- number formatting


def format_number(value: Any) -> str:
    """The one number format of the terminal table and the reports: ints exact, floats to 4 significant figures."""
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value) or math.isinf(value):
            return "n/a" if math.isnan(value) else str(value)
        return f"{value:.4g}"
    return str(value)


SUMMARY_COLUMNS = (("rank", "rank"), ("L0", "l0"), ("FVU", "fvu"), ("CE score", "ce_score_zero"),
                   ("CE score (mean-abl)", "ce_score_mean"), ("dense >10%", "dense_10"), ("dense >1%", "dense_1"),
                   ("dead", "dead"))


def format_summary_table(results: dict[str, Any] | Iterable[Any]) -> str:
    """Rank-sweep table for the terminal: one row per SAE, sorted by rank then name.

    `results`: {name: CoreEval or its dict} or an iterable of them.
    """
    items = list(results.items()) if isinstance(results, dict) else [(None, r) for r in results]
    rows = []
    for name, result in items:
        values = asdict(result) if is_dataclass(result) else dict(result)
        label = name if name is not None else f"{values.get('arch', 'sae')} r={values.get('rank', 0)}"
        rows.append((values.get("rank", 0), str(label), [format_number(values.get(key)) for _, key in SUMMARY_COLUMNS]))
    rows.sort(key=lambda row: (row[0], row[1]))
    header = ["sae"] + [title for title, _ in SUMMARY_COLUMNS]
    body = [[label, *cells] for _, label, cells in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
             for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- study -> sections


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


def jsonable(value: Any) -> Any:
    """A JSON-safe copy: dataclasses and numpy expanded, NaN/inf -> None (strict JSON)."""
    if is_dataclass(value) and not isinstance(value, type):
        return jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return None if math.isnan(value) or math.isinf(value) else value
    if value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    raise ReportError(f"cannot store {type(value).__name__} in results.json: convert it to numbers or text first")


def build_sections(study: dict[str, Any]) -> list[Section]:
    """The summary of the paper's claims (a study with a hybrid or analyses), the built-in sections from
    study['saes'], the analyses' sections from study['analyses'], study['sections'] in order, the training curves
    (study['training']) and the configuration last."""
    saes: dict[str, dict[str, Any]] = study.get("saes", {})
    sections = []
    rows = summary_rows(study)
    if rows:
        from scaffold_sae.claims import claims_section

        sections.append(claims_section(rows, analysis_seeds=1 + len(study.get("seed_analyses") or {})))
    if saes:
        from scaffold_sae import roles  # mean +- sd over seeds and the claim against each baseline

        sections += [*roles.sections(saes), sweep_section(saes), density_section(saes), all_numbers_section(saes)]
    if study.get("analyses"):
        from scaffold_sae.analyses import sections_from_json  # the layer above: each analysis draws its sections

        sections += sections_from_json(study["analyses"])
    sections += [Section.from_dict(s) if isinstance(s, dict) else s for s in study.get("sections", [])]
    if study.get("training"):
        sections.append(training_section(study["training"]))
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


# ---------------------------------------------------------------------------------------------- rendering


def figure_table(figure: Figure) -> Table | None:
    """The data behind a figure, as a table (x, then one column per series)."""
    if figure.kind == "png" or not figure.series:
        return None
    xs = sorted({x for s in figure.series for x in s.x})
    by_series = [dict(zip(s.x, s.y)) for s in figure.series]
    if figure.kind == "step":
        xs = xs[:-1] if len(xs) > 1 else xs
        rows = [[x, *[lookup.get(x) for lookup in by_series]] for x in xs]
        last_edges = sorted({s.x[-1] for s in figure.series if s.x})
        caption = f"bin left edges; last right edge {', '.join(format_number(e) for e in last_edges)}"
        return Table([figure.xlabel or "x", *[s.label for s in figure.series]], rows, caption)
    rows = [[x, *[lookup.get(x) for lookup in by_series]] for x in xs]
    return Table([figure.xlabel or "x", *[s.label for s in figure.series]], rows)


def render_png(figure: Figure) -> bytes:
    """Draw a data figure with matplotlib's Agg canvas (no pyplot, no global state)."""
    if figure.kind == "png":
        return base64.b64decode(figure.png_base64)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(6.4, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for series in figure.series:
        if figure.kind == "step":
            if len(series.x) == len(series.y) + 1:
                ax.stairs(series.y, series.x, label=series.label)
        else:
            ax.plot(series.x, series.y, marker="o", label=series.label)
    for x in figure.vlines:
        ax.axvline(x, color="grey", linestyle="--", linewidth=1)
    if figure.logy:
        ax.set_yscale("symlog", linthresh=1)
    ax.set_title(figure.title)
    ax.set_xlabel(figure.xlabel)
    ax.set_ylabel(figure.ylabel)
    ax.grid(alpha=0.3)
    if figure.series:
        ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _cell(value: Any) -> str:
    return format_number(value) if not isinstance(value, (list, dict)) else json.dumps(value)


def markdown_table(table: Table) -> str:
    escape = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(escape(c) for c in table.columns) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(escape(_cell(v)) for v in row) + " |" for row in table.rows]
    if table.caption:
        lines.append(f"\n_{table.caption}_")
    return "\n".join(lines)


def render_markdown(title: str, sections: list[Section]) -> str:
    parts = [f"# {title}", "", "Plots are in report.html next to this file; each plot's data is tabled here."]
    for section in sections:
        parts += ["", f"## {section.title}", ""]
        if section.text:
            parts += [section.text, ""]
        if section.links:
            parts += [*(f"- [{label}]({quote(href)})" for label, href in section.links), ""]
        for table in section.tables:
            parts += [markdown_table(table), ""]
        for figure in section.figures:
            parts += [f"### Figure: {figure.title}", ""]
            if figure.caption:
                parts += [figure.caption, ""]
            data = figure_table(figure)
            if data is not None:
                parts += [markdown_table(data), ""]
    return "\n".join(parts).rstrip() + "\n"


CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5em 0; } figcaption { font-size: 0.9em; color: #555; }
img { max-width: 100%; } details { margin: 0.5em 0 1.5em; } summary { cursor: pointer; color: #335; }
.caption { font-size: 0.85em; color: #555; }
table.wrap td, table.wrap th { white-space: normal; min-width: 6em; vertical-align: top; text-align: left; }
"""


def html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in table.rows)
    caption = f'<p class="caption">{html.escape(table.caption)}</p>' if table.caption else ""
    opening = '<table class="wrap">' if table.wrap else "<table>"
    return f"{opening}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{caption}"


def render_html(title: str, sections: list[Section]) -> str:
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts.append("<nav><ul>" + "".join(f'<li><a href="#s{i}">{html.escape(s.title)}</a></li>'
                                       for i, s in enumerate(sections)) + "</ul></nav>")
    for i, section in enumerate(sections):
        parts.append(f'<section id="s{i}"><h2>{html.escape(section.title)}</h2>')
        for paragraph in filter(None, (p.strip() for p in section.text.split("\n\n"))):
            parts.append(f"<p>{html.escape(paragraph)}</p>")
        if section.links:
            parts.append("<ul>" + "".join(f'<li><a href="{html.escape(quote(href))}">{html.escape(label)}</a></li>'
                                          for label, href in section.links) + "</ul>")
        parts += [html_table(table) for table in section.tables]
        for figure in section.figures:
            png = base64.b64encode(render_png(figure)).decode("ascii")
            caption = html.escape(figure.caption or figure.title)
            parts.append(f'<figure><img alt="{html.escape(figure.title)}" src="data:image/png;base64,{png}">'
                         f"<figcaption>{caption}</figcaption></figure>")
            data = figure_table(figure)
            if data is not None:
                parts.append(f"<details><summary>data: {html.escape(figure.title)}</summary>{html_table(data)}</details>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- writing


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
