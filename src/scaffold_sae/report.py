"""The report's building blocks: Section, Table, Figure and Series, the one number format, the JSON-safe copy of a
result, and the Markdown and self-contained HTML writers.

Every analysis and tool draws its part of a report from these; the study report that assembles them
(scaffold_sae.study_report) lives above, so this module imports nothing from the rest of the package.
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


# ---------------------------------------------------------------------------------------------- JSON


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
