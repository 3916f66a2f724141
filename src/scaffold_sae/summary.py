"""An experiment's committed record: `summary.json`, the small, deterministic extract of its runs' results.

A study's results.json carries every latent's firing density (one float per latent per SAE, twice: at matched L0 and
at the JumpReLU threshold), training curves at every log window and wall-clock timings. The summary keeps what the
tables and the claims engine read (the config, each SAE's evaluation at matched L0, the analyses' typed results) and
drops the rest, so `claims.claim_rows(summary["runs"][name])` reads as `claim_rows(results)` does (the same text;
numbers to DIGITS significant digits) while the file stays far
under SUMMARY_LIMIT bytes. No timing survives: a rerun writes the summary byte for byte.
"""

from __future__ import annotations

import json
import math
from typing import Any

SUMMARY_LIMIT = 200_000
"""The most bytes a committed summary.json may hold."""
DROPPED = frozenset({"density", "density_hist_counts", "density_hist_edges", "bos_policy", "timings", "browse",
                     "sections", "summary"})
"""Keys removed wherever they occur: per-latent densities and their histograms, the evaluation's
BOS-policy sentence (the same text in every record), timings, links to generated sites,
and the report's rendered sections and claims table (regenerated from what remains)."""
EMPTIED = frozenset({"per_split", "top_features", "top_scores"})
"""Lists kept empty (their dataclass requires the field): per-split raw numbers (the sd and the interval summarise
them) and per-latent lists."""
TIMED = frozenset({"wall_s"})
"""Timing fields of typed results (required by their dataclass): kept as null."""
DIGITS = 7
"""Significant digits a float keeps (intervals are shown with 3-4)."""
CURVE_POINTS = 32
"""Training curves (loss / held-out FVU against tokens) keep at most this many evenly spaced points."""


def sample(values: list[Any], most: int = CURVE_POINTS) -> list[Any]:
    """At most `most` evenly spaced items of `values`, the first and the last always among them."""
    n = len(values)
    if n <= most:
        return list(values)
    return [values[round(i * (n - 1) / (most - 1))] for i in range(most)]


def slim(value: Any) -> Any:
    """A results value without DROPPED keys, with TIMED fields nulled, training curves sampled down and floats rounded
    to DIGITS significant digits."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in DROPPED:
                continue
            if key in TIMED:
                out[key] = None
            elif key in EMPTIED:
                out[key] = []
            elif key in ("curve", "heldout") and isinstance(item, dict) and all(isinstance(v, list)
                                                                                for v in item.values()):
                out[key] = {k: sample(v) for k, v in item.items()}
            else:
                out[key] = slim(item)
        return out
    if isinstance(value, list):
        return [slim(item) for item in value]
    if isinstance(value, float):
        return round_float(value)
    return value


def round_float(value: float) -> float | None:
    """`value` to DIGITS significant digits; NaN and infinities (which JSON cannot hold) become None."""
    if math.isnan(value) or math.isinf(value):
        return None
    return float(f"{value:.{DIGITS}g}")


EVAL_KEPT = ("kind", "seed", "rank", "for_rank", "l0", "fvu", "dense_10", "ce_score_zero", "ce_score_mean")
"""What a summary keeps of each SAE's evaluation at its exported JumpReLU threshold (threshold_evals)."""
CLAIM_ANALYSES = frozenset({"structure", "ablation_table", "redundancy", "topic_ablation", "probing", "version",
                            "n_tokens"})
"""What the analysed seeds after the first keep: the analyses the claims read (their settings are the first seed's)."""
PRIMARY_K = 5
"""The sparse-probing k the claims read; the analysed seeds after the first keep probing at this k only."""


def slim_results(results: dict[str, Any]) -> dict[str, Any]:
    """A study's results.json (or a table.json of analyses) as a summary keeps it: `slim`, the JumpReLU evaluations
    cut to EVAL_KEPT, and the extra analysed seeds (seed_analyses) cut to the readings their claims use
    (CLAIM_ANALYSES): probing at PRIMARY_K without TPP and feature-set probes, the topic analysis read at the ablated
    layer only; in every seed, a probing source's many tasks are cut the same way (slim_source_tasks)."""
    out = slim(results)
    if isinstance(out.get("threshold_evals"), dict):
        out["threshold_evals"] = {name: {k: e[k] for k in EVAL_KEPT if k in e}
                                  for name, e in out["threshold_evals"].items()}
    for analyses in [out.get("analyses"), *(out.get("seed_analyses") or {}).values()]:
        if isinstance(analyses, dict) and isinstance(analyses.get("probing"), dict):
            slim_source_tasks(analyses["probing"])
    extra = out.get("seed_analyses") or {}
    for seed, analyses in list(extra.items()):
        extra[seed] = analyses = {k: v for k, v in analyses.items() if k in CLAIM_ANALYSES}
        probing = analyses.get("probing")
        if isinstance(probing, dict):
            probing.update(sparse=[s for s in probing.get("sparse") or [] if s.get("k") == PRIMARY_K],
                           paired=[s for s in probing.get("paired") or [] if s.get("k") == PRIMARY_K],
                           tpp=[], topic=[])
        topic = analyses.get("topic_ablation")
        if isinstance(topic, dict):
            for key in ("readouts", "differences"):
                topic[key] = [r for r in topic.get(key) or [] if r.get("read_layer") == topic.get("layer")]
    return out


def slim_source_tasks(probing: dict[str, Any]) -> None:
    """A probing result's entries for the tasks of a probing source (e.g. the 111 of sae_probes:binary>=1000), cut
    to what the claims engine reads over tasks: PRIMARY_K only, no raw-residual-dimension rows and no per-task L0.
    The built-in datasets keep every k."""
    from scaffold_sae.probing_sources import is_source_name

    def kept(entry: dict[str, Any]) -> bool:
        return not is_source_name(str(entry.get("dataset", ""))) or (
            entry.get("k") == PRIMARY_K and entry.get("features") != "residual")

    for key in ("sparse", "paired"):
        if isinstance(probing.get(key), list):
            probing[key] = [s for s in probing[key] if kept(s)]
    if isinstance(probing.get("l0"), dict):
        probing["l0"] = {d: v for d, v in probing["l0"].items() if not is_source_name(str(d))}


def dumps(summary: dict[str, Any]) -> str:
    """The summary as committed: sorted keys, compact, one trailing newline (the same bytes on every rerun)."""
    return json.dumps(summary, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n"


def check_size(text: str, where: str) -> None:
    if len(text.encode()) > SUMMARY_LIMIT:
        raise ValueError(f"{where}: summary is {len(text.encode())} bytes, over the {SUMMARY_LIMIT} limit; drop bulky "
                         "arrays from the runs it keeps (scaffold_sae.summary.DROPPED)")


__all__ = ["CLAIM_ANALYSES", "CURVE_POINTS", "DIGITS", "DROPPED", "EMPTIED", "EVAL_KEPT", "PRIMARY_K",
           "SUMMARY_LIMIT", "TIMED", "check_size", "slim_source_tasks", "dumps", "round_float", "sample", "slim", "slim_results"]
