"""Readings over training seeds, as the Markdown tables of the lab notebook: one record (a study's results.json, a
table of analyses on saved SAEs, or a run kept in an experiment's summary.json) per seed, seed 0 first; each seed's
estimate with its interval (over contexts or documents), then mean ± sd and the 95% t-interval over seeds.

An experiment file's `series` decides such readings in RESULTS.md; these tables print them for a look, and
results/scripts/design_seeds.py (legacy experiment P) is a command line over one of them. A record is read with
`read_record`, which also finds a run that was folded into its experiment's summary.json
(results/<slug>/<run>/table.json -> summary.json's runs["<run>/table.json"]).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scaffold_sae.claims import t_interval

Estimate = dict[str, float]
"""{"value", "low", "high"} as the results JSON stores an interval."""


def read_record(path: str | Path) -> dict[str, Any]:
    """A results / table / analyses JSON by its path; a path under results/<slug>/ that is no longer a file is read
    from that folder's summary.json (an analyses.json as the analyses of the run's table.json)."""
    path = Path(path)
    if path.is_file():
        return json.loads(path.read_text())
    for folder in path.parents:
        summary = folder / "summary.json"
        if summary.is_file():
            runs = json.loads(summary.read_text())["runs"]
            key = path.relative_to(folder).as_posix()
            if key in runs:
                return runs[key]
            table = key[: -len("analyses.json")] + "table.json" if key.endswith("analyses.json") else None
            if table in runs:
                return {"results": runs[table]["analyses"]}
            raise FileNotFoundError(f"{path}: not a file, and {summary} has no run {key!r} (its runs: "
                                    f"{', '.join(sorted(runs))})")
    raise FileNotFoundError(f"{path}: no such file, and no summary.json in a folder above it")


def analyses_of(record: dict[str, Any]) -> dict[str, Any]:
    """The analyses of a record: a study's or table's "analyses", or an analyses cache's "results"."""
    return record.get("analyses") or record.get("results") or {}


def estimate_text(e: Estimate, digits: int = 3) -> str:
    return f"{e['value']:.{digits}f} [{e['low']:.{digits}f}, {e['high']:.{digits}f}]"


def seeds_table(first_column: str, rows: dict[str, list[Estimate]]) -> str:
    """One row per reading: each seed's estimate with its interval, then mean ± sd [95% t-interval over seeds]."""
    seeds = len(next(iter(rows.values())))
    lines = [f"| {first_column} | " + " | ".join(f"seed {i}" for i in range(seeds))
             + " | mean ± sd [95% t-interval over seeds] |", "|---|" + "---|" * (seeds + 1)]
    for label, estimates in rows.items():
        mean, sd, low, high = t_interval([e["value"] for e in estimates])
        cells = [estimate_text(e) for e in estimates]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean:.3f} ± {sd:.3f} [{low:.3f}, {high:.3f}] |")
    return "\n".join(lines)


def common_rows(per_seed: list[dict[str, Estimate]], skip: tuple[str, ...] = ()) -> dict[str, list[Estimate]]:
    """The readings every seed has, in seed 0's order: reading -> one estimate per seed."""
    keys = [k for k in per_seed[0] if k not in skip and all(k in seed for seed in per_seed)]
    return {k: [seed[k] for seed in per_seed] for k in keys}


# ---------------------------------------------------------------------------------------------- causal


def causal_ratios(record: dict[str, Any]) -> dict[str, Estimate]:
    """The scaffold / top-r PCs CE ratio of a causal ablation table under the same operator, by "operator,
    positions"."""
    out = {}
    for c in analyses_of(record)["ablation_table"]["comparisons"]:
        (subject, operator), (against, other) = c["numerator"].split(":"), c["denominator"].split(":")
        if subject == "scaffold" and against == "pca" and operator == other:
            out[f"{operator}, {c['positions']}"] = c["ce_ratio"]
    return out


def causal_seeds_table(records: list[dict[str, Any]]) -> str:
    """The scaffold / top-r PCs CE ratio over seeds, per (operator, positions)."""
    return seeds_table("operator, positions", common_rows([causal_ratios(r) for r in records]))


# ---------------------------------------------------------------------------------------------- topic


def topic_readings(record: dict[str, Any], condition: str, dataset: str = "bbc_topic") -> dict[str, Estimate]:
    """A fixed-probe topic analysis read at the last block for one condition (e.g. scaffold:zero:all): clean and
    ablated accuracy, and the paired differences against the other subjects removed the same way; "chance" too."""
    topic = analyses_of(record)["topic_ablation"]
    last = max(r["read_layer"] for r in topic["readouts"])
    out = {"chance": {"value": next(r["chance"] for r in topic["readouts"] if r["dataset"] == dataset)}}
    for r in topic["readouts"]:
        if r["dataset"] == dataset and r["read_layer"] == last and r["condition"] in ("clean", condition):
            out[r["condition"]] = r["accuracy"]
    for d in topic.get("differences") or []:
        if d["dataset"] == dataset and d["read_layer"] == last and d["condition"] == condition:
            out["minus " + d["against"]] = d["difference"]
    return out


def topic_seeds_table(records: list[dict[str, Any]], condition: str, dataset: str = "bbc_topic") -> str:
    per_seed = [topic_readings(r, condition, dataset) for r in records]
    return (f"\n{dataset}, {condition}, read at the last block (chance {per_seed[0]['chance']['value']:.2f})\n\n"
            + seeds_table("reading", common_rows(per_seed, skip=("chance",))))


# ---------------------------------------------------------------------------------------------- redundancy


def bounds_difference(a: Estimate, b: Estimate) -> Estimate:
    """a - b with the bounds of two unpaired intervals: low_a - high_b and high_a - low_b."""
    return {"value": a["value"] - b["value"], "low": a["low"] - b["high"], "high": a["high"] - b["low"]}


def redundancy_readings(record: dict[str, Any]) -> tuple[dict[str, Estimate], str]:
    """At the paper's share of the dictionary, per operator: the plain SAE's most span(U)-aligned latents ablated,
    as many density-matched random latents, the scaffold removed, and the two differences (x clean CE); and a line
    of the sample sizes."""
    result = analyses_of(record)["redundancy"]
    paper = {p["operator"]: p for p in result["curve"] if p["paper_share"]}
    rows, n = {}, None
    for op, point in paper.items():
        n = point["n"]
        scaffold = result["scaffold_removed"][op]
        rows[f"{op}: aligned"] = point["aligned"]
        rows[f"{op}: random (density-matched)"] = point["random"]
        rows[f"{op}: scaffold removed"] = scaffold
        rows[f"{op}: aligned - scaffold"] = bounds_difference(point["aligned"], scaffold)
        rows[f"{op}: aligned - random"] = bounds_difference(point["aligned"], point["random"])
    return rows, (f"N = {n} (the paper's share), {result['n_aligned']} above the alignment "
                  f"threshold ({result['dense_aligned']} of {result['dense_latents']} dense), "
                  f"{result['curve_contexts']} contexts")


def redundancy_seeds_table(records: list[dict[str, Any]], label: str = "redundancy") -> str:
    per_seed = [redundancy_readings(r) for r in records]
    lines = [f"## {label}", ""] + [f"- seed {i}: {sizes}" for i, (_, sizes) in enumerate(per_seed)] + [""]
    table = seeds_table("operator: latents ablated (x clean CE)", common_rows([rows for rows, _ in per_seed]))
    return "\n".join(lines) + "\n" + table + "\n"


# ---------------------------------------------------------------------------------------------- probing


def over_seeds_text(values: list[float]) -> str:
    """mean ± sd [95% t-interval] with signs, or the one value."""
    if len(values) < 2:
        return f"{values[0]:+.3f} (one seed)"
    mean, sd, low, high = t_interval(values)
    return f"{mean:+.3f} ± {sd:.3f} [{low:+.3f}, {high:+.3f}]"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def probing_seeds_table(records: list[dict[str, Any]], labels: list[str] | None = None) -> str:
    """Each hybrid's paired probing difference from the plain SAE of its own seed (per seed with its bootstrap
    interval over test documents, then over seeds), the accuracy at k = 5 per feature set, and TPP."""
    tables = [analyses_of(r)["probing"] for r in records]
    keys = sorted({(row["rank"], row["k"], row["dataset"]) for row in tables[0]["paired"]})
    lines = [f"{len(tables)} seeds" + (f" ({', '.join(labels)})" if labels else "") + "\n",
             "Hybrid minus plain SAE (k-sparse probing accuracy), mean ± sd over seeds [95% t-interval]; per seed: "
             "the difference [paired bootstrap 95% over test documents]\n",
             "| r | k | dataset | over seeds | per seed |\n|---|---|---|---|---|"]
    for rank, k, dataset in keys:
        rows = [next(r for r in tab["paired"] if (r["rank"], r["k"], r["dataset"]) == (rank, k, dataset))
                for tab in tables]
        per_seed = ", ".join(f"{r['difference']['value']:+.3f} [{r['difference']['low']:+.3f}, "
                             f"{r['difference']['high']:+.3f}]" for r in rows)
        lines.append(f"| {rank} | {k} | {dataset} | {over_seeds_text([r['difference']['value'] for r in rows])} "
                     f"| {per_seed} |")
    lines += ["\nAccuracy at k = 5 (mean of the datasets' split means), per seed and mean ± sd over seeds\n",
              "| features | per seed | mean ± sd |\n|---|---|---|"]
    ranks = sorted({row["rank"] for row in tables[0]["sparse"]}, key=lambda r: -1 if r is None else r)
    for rank in ranks:
        accs = [_mean([r["accuracy"]["value"] for r in tab["sparse"] if r["rank"] == rank and r["k"] == 5])
                for tab in tables]
        name = "residual dims" if rank is None else "plain SAE" if rank == 0 else f"hybrid r = {rank}"
        sd = t_interval(accs)[1] if len(accs) > 1 else 0.0
        lines.append(f"| {name} | {', '.join(f'{a:.3f}' for a in accs)} | {_mean(accs):.3f} ± {sd:.3f} |")
    return "\n".join(lines) + "\n" + tpp_seeds_table(tables)


def tpp_seeds_table(tables: list[dict[str, Any]]) -> str:
    """TPP (secondary; datasets with >= 3 classes): each SAE's score per seed, and each hybrid's score minus the
    plain SAE's of the same seed over seeds; empty without TPP scores."""
    keys = sorted({(row["dataset"], row["n_ablated"]) for row in tables[0]["tpp"]})
    if not keys:
        return ""
    ranks = sorted({row["rank"] for row in tables[0]["tpp"]})
    lines = ["\nTPP (secondary metric): score = target-class accuracy drop - mean drop of the other classes, N "
             "latents zeroed, mean over splits; per seed, then hybrid - plain SAE over seeds\n",
             "| dataset | N | " + " | ".join("plain SAE" if r == 0 else f"r = {r}" for r in ranks)
             + " | " + " | ".join(f"r = {r} - plain" for r in ranks if r) + " |",
             "|---|---|" + "---|" * (2 * len(ranks) - 1)]
    for dataset, n in keys:
        score = {r: [next(row["score"] for row in tab["tpp"] if (row["dataset"], row["n_ablated"], row["rank"])
                          == (dataset, n, r)) for tab in tables] for r in ranks}
        cells = [", ".join(f"{v:.3f}" for v in score[r]) for r in ranks]
        diffs = [over_seeds_text([a - b for a, b in zip(score[r], score[0])]) for r in ranks if r]
        lines.append(f"| {dataset} | {n} | " + " | ".join(cells + diffs) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- design


DESIGN_METRICS = {"dense >10%": "dense_10", "FVU": "fvu", "CE score (zero)": "ce_score_zero", "dead": "dead"}
"""The evaluation numbers `design_seeds_table` compares."""


def design_seeds_table(values: dict[str, dict[str, list[float]]], pairs: list[tuple[str, str]] = ()) -> str:
    """Per SAE label, each metric per seed with mean ± sd [95% t-interval]; then each pair (a, b) as a - b paired
    by seed. `values`: label -> metric name (DESIGN_METRICS) -> one value per seed."""
    def cell(v: list[float]) -> str:
        mean, sd, low, high = t_interval(v)
        return f"{mean:.4g} ± {sd:.2g} [{low:.4g}, {high:.4g}]"

    def column(v: list[float]) -> str:
        return ", ".join(f"{x:.4g}" for x in v) + "; " + cell(v)

    metrics = list(DESIGN_METRICS)
    lines = ["| SAE | " + " | ".join(f"{m}: per seed; mean ± sd [95% t-interval]" for m in metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    for label, per in values.items():
        lines.append(f"| {label} | " + " | ".join(column(per[m]) for m in metrics) + " |")
    for a, b in pairs:
        lines.append(f"| {a} - {b} (paired by seed) | " + " | ".join(
            column([x - y for x, y in zip(values[a][m], values[b][m])]) for m in metrics) + " |")
    return "\n".join(lines)


def design_values(record: dict[str, Any], name_pattern: str, seeds: int) -> dict[str, list[float]]:
    """DESIGN_METRICS of the SAEs name_pattern.format(s=seed) of a study record, per seed."""
    saes = record["saes"]
    return {m: [float(saes[name_pattern.format(s=s)][key]) for s in range(seeds)] for m, key in DESIGN_METRICS.items()}


__all__ = ["DESIGN_METRICS", "analyses_of", "bounds_difference", "causal_ratios", "causal_seeds_table",
           "common_rows", "design_seeds_table", "design_values", "over_seeds_text", "probing_seeds_table",
           "read_record", "redundancy_readings", "redundancy_seeds_table", "seeds_table", "topic_readings",
           "topic_seeds_table", "tpp_seeds_table"]
