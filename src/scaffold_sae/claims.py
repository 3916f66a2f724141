"""The one-screen summary a study report opens with: one row per claim of the paper, our number with its interval,
what it is measured against, and a verdict.

A verdict is "reproduced" or "not reproduced" only where the interval excludes the other outcome; otherwise it is
"undecided", with the sample that would decide (from interval half-widths shrinking as 1/sqrt(n)). A claim with no
interval (one seed; statistics without resampling) is undecided. A claim whose analysis did not run says "not run".
When the analyses ran on several seeds (the study's analysis_seeds), each claim is decided over the seeds: a t-interval
of value - threshold over the seeds, and every seed's own interval (where it has one) must agree with it.
Pure functions of a study's results dict (the typed analysis results are rebuilt from it), so `scaffold-sae report`
redraws the summary from results.json alone.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, is_dataclass, replace
from typing import Any

from scaffold_sae.config import setting
from scaffold_sae.report import Section, Table, format_number
from scaffold_sae.stats import Estimate

REPRODUCED, NOT_REPRODUCED, UNDECIDED, NOT_RUN = "reproduced", "not reproduced", "undecided", "not run"


@dataclass
class ClaimRow:
    """One claim of the paper against our numbers."""

    claim: str
    ours: str
    """Our number with its interval (or ± sd), as shown."""
    against: str
    """The baseline or comparison it is measured against, and the paper's number."""
    verdict: str
    """reproduced | not reproduced | undecided | not run."""
    note: str
    """The rule behind the verdict; for an undecided claim, the sample that would decide it."""
    value: float | None = None
    """The number the verdict is about (shown in `ours`)."""
    low: float | None = None
    """Its 95% interval (None when there is none)."""
    high: float | None = None
    threshold: float | None = None
    """What `value` is decided against (None: no rule)."""
    claim_below: bool = False
    """The paper's claim holds when `value` lies below `threshold` (else at or above it)."""


def claim_rows(study: dict[str, Any]) -> list[ClaimRow]:
    """The summary rows of a study's results dict (config, saes, analyses), in the paper's order."""
    rank = primary_rank(study)
    init = setting(study.get("config", {}), "sae.scaffold_init", "pca")
    per_seed = [analysis_rows(_typed_analyses(data), rank, init) for data in seeds_analyses(study)]
    rows = [over_seeds(list(rows)) for rows in zip(*per_seed)] if len(per_seed) > 1 else per_seed[0]
    return [dense_row(study.get("saes", {}), rank), *rows]


def analysis_rows(typed: dict[str, Any], rank: int | None, init: str = "pca") -> list[ClaimRow]:
    """The claims the analyses of one seed decide, in the paper's order."""
    return [structure_row(typed.get("structure"), rank, init), causal_row(typed.get("ablation_table")),
            redundancy_row(typed.get("redundancy")),
            topic_row(typed.get("topic_ablation"), typed.get("probing"), rank), probing_row(typed.get("probing"), rank)]


def seeds_analyses(study: dict[str, Any]) -> list[Any]:
    """Each analysed seed's analyses JSON: seed 0's ("analyses"), then "seed_analyses" by seed."""
    more = study.get("seed_analyses") or {}
    return [study.get("analyses"), *(more[key] for key in sorted(more, key=int))]


def claims_section(rows: list[ClaimRow], analysis_seeds: int = 1) -> Section:
    table = Table(["claim", "ours", "against", "verdict", "why / what would decide"],
                  [[r.claim, r.ours, r.against, r.verdict, r.note] for r in rows],
                  caption="Intervals are 95%: paired bootstrap over contexts or documents, or a t-interval over "
                          "seeds. 'reproduced' / 'not reproduced' only where the interval excludes the other side.",
                  wrap=True)
    counts = {v: sum(r.verdict == v for r in rows) for v in (REPRODUCED, NOT_REPRODUCED, UNDECIDED, NOT_RUN)}
    text = ("Each claim of the paper, our number and the verdict (details in the sections below): "
            + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + ".")
    if analysis_seeds > 1:
        text += (f" The analyses ran on {analysis_seeds} seeds: their rows give mean ± sd over the seeds and are "
                 "decided by a t-interval over the seeds that every seed's own interval agrees with; the analysis "
                 "sections below are seed 0's (results.json holds every seed's under seed_analyses).")
    return Section("Summary: the paper's claims", text, tables=[table])


def over_seeds(rows: list[ClaimRow]) -> ClaimRow:
    """One claim decided over seeds from each seed's row: the t-interval of value - threshold over the seeds decides,
    and a seed whose own interval says otherwise (or is undecided) leaves the claim undecided."""
    first = rows[0]
    if all(r.value is None for r in rows):
        return first
    if any(r.value is None or r.threshold is None for r in rows):
        missing = [i for i, r in enumerate(rows) if r.value is None or r.threshold is None]
        return replace(first, note=f"{first.note}; seed 0 only: seeds {missing} have no number for this claim")
    n = len(rows)
    values = [r.value for r in rows]
    margins = [r.value - r.threshold for r in rows]
    mean_v, sd_v, low_v, high_v = t_interval(values)
    mean_m, sd_m, low_m, high_m = t_interval(margins)
    across = side_of(low_m, high_m, 0.0, first.claim_below)
    own = [(i, r.verdict) for i, r in enumerate(rows) if r.low is not None and r.high is not None]
    thresholds = {r.threshold for r in rows}
    limit = format_number(first.threshold) if len(thresholds) == 1 else "each seed's threshold"
    side = "below" if (across == REPRODUCED) == first.claim_below else "above"
    if across != UNDECIDED and all(v == across for _, v in own):
        verdict = across
        note = (f"the t-interval over {n} seeds lies {side} {limit}"
                + (", and so does every seed's own interval" if own else ""))
    elif across != UNDECIDED:
        verdict = UNDECIDED
        note = (f"the t-interval over {n} seeds lies {side} {limit}, but not every seed's own interval does ("
                + ", ".join(f"seed {i}: {v}" for i, v in own) + "): more contexts or documents per seed would decide")
    else:
        verdict = UNDECIDED
        note = _seeds_to_decide(mean_m, sd_m, n, limit)
    note += f"; seed 0: {first.note}"
    per_seed = ", ".join(format_number(v) for v in values)
    ours = (f"{format_number(mean_v)} ± {format_number(sd_v)} over {n} seeds (95% t-interval "
            f"[{format_number(low_v)}, {format_number(high_v)}]; per seed {per_seed}); "
            f"seed 0: {first.ours}")
    against = first.against if len(thresholds) == 1 else (
        f"{first.against}; decided on value - threshold per seed: {interval_text(mean_m, low_m, high_m)}")
    return replace(first, ours=ours, against=against, verdict=verdict, note=note, value=mean_v,
                   low=low_v, high=high_v, threshold=first.threshold if len(thresholds) == 1
                   else None)


def primary_rank(study: dict[str, Any]) -> int | None:
    """The hybrid rank the analyses use: the config's analysis_rank, else the largest hybrid rank."""
    from scaffold_sae.roles import for_rank, kind_of

    chosen = setting(study.get("config", {}), "analyses.rank")
    if chosen is not None:
        return int(chosen)
    ranks = [for_rank(r) for r in study.get("saes", {}).values() if kind_of(r) == "hybrid"]
    return max(ranks) if ranks else None


def _typed_analyses(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or not data:
        return {}
    from scaffold_sae.analyses import AnalysisResults

    # an analysis not registered in this process stays plain JSON: its claim reads as not run
    return {name: value for name, value in AnalysisResults.from_json(data).results.items() if is_dataclass(value)}


# ---------------------------------------------------------------------------------------------- the rules


def interval_text(value: float | None, low: float | None, high: float | None) -> str:
    if low is None or high is None:
        return format_number(value)
    return f"{format_number(value)} [{format_number(low)}, {format_number(high)}]"


def iv(e: Estimate) -> str:
    return interval_text(e.value, e.low, e.high)


def side_of(low: float, high: float, threshold: float, claim_below: bool) -> str:
    """The verdict of an interval against a threshold, for a claim that the value lies below it (claim_below) or at
    or above it."""
    if high < threshold:
        return REPRODUCED if claim_below else NOT_REPRODUCED
    if low >= threshold:
        return NOT_REPRODUCED if claim_below else REPRODUCED
    return UNDECIDED


def sample_to_decide(value: float, low: float, high: float, threshold: float, n: int) -> int | None:
    """About how many units (contexts, documents, seeds) would make the interval exclude `threshold`: the half-width
    on the threshold's side shrinks as 1/sqrt(n). None when the estimate sits on the threshold."""
    half = high - value if threshold > value else value - low
    gap = abs(value - threshold)
    if gap == 0 or half <= 0:
        return None
    return max(n + 1, math.ceil(n * (half / gap) ** 2))


def _decide(what: str, value: float, low: float, high: float, threshold: float, n: int) -> str:
    needed = sample_to_decide(value, low, high, threshold, n)
    if needed is None:
        return f"the estimate sits on the threshold {format_number(threshold)}: no sample size decides it"
    return (f"the interval straddles {format_number(threshold)}: about {needed} {what} (now {n}) would decide, if "
            "the estimate stays where it is")


def t_quantile(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def t_interval(values: list[float]) -> tuple[float, float, float, float]:
    """Mean, sample sd and the 95% t-interval (df = n - 1) of at least two values, e.g. one number per seed."""
    n = len(values)
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


# ---------------------------------------------------------------------------------------------- one row per claim


def not_run(claim: str, why: str) -> ClaimRow:
    return ClaimRow(claim, "-", "-", NOT_RUN, why)


def dense_row(saes: dict[str, dict[str, Any]], rank: int | None) -> ClaimRow:
    """Fewer dense (>10%) latents than the plain SAE at matched L0: a t-interval of the paired difference over
    seeds (hybrid - plain, same batches and seed)."""
    from scaffold_sae.roles import dense_comparisons

    claim = f"dense latents removed by the scaffold (hybrid r={rank} vs plain SAE)"
    match = [c for c in dense_comparisons(saes) if c.against == "baseline" and c.hybrid_rank == rank]
    if not match or match[0].diff_mean is None:
        return not_run("dense latents removed by the scaffold", "no hybrid and plain SAE pair was evaluated")
    c = match[0]
    against = (f"plain SAE: {format_number(c.against_mean)} dense latents (>10% of tokens) at matched L0; "
               "paper: -84% (Gemma-2-2B L12, r = 24)")
    change = "" if c.change is None else f", {100 * c.change:+.0f}%"
    if c.seeds < 2 or c.diff_sd is None:
        ours = f"hybrid {format_number(c.hybrid_mean)}: difference {format_number(c.diff_mean)}{change}"
        return ClaimRow(claim, ours + " (1 seed, no interval)", against, UNDECIDED,
                        "one seed gives no interval: train 3 or more seeds (the study's seeds field) to decide",
                        c.diff_mean, threshold=0.0, claim_below=True)
    half = t_quantile(c.seeds - 1) * c.diff_sd / math.sqrt(c.seeds)
    low, high = c.diff_mean - half, c.diff_mean + half
    ours = (f"hybrid {format_number(c.hybrid_mean)}: difference "
            f"{interval_text(c.diff_mean, low, high)}{change} (95% t-interval over {c.seeds} seeds)")
    verdict = side_of(low, high, 0.0, claim_below=True)
    note = "fewer when the interval of the difference lies below 0"
    if verdict == UNDECIDED:
        note = _seeds_to_decide(c.diff_mean, c.diff_sd, c.seeds)
    return ClaimRow(claim, ours, against, verdict, note, c.diff_mean, low, high, threshold=0.0, claim_below=True)


def _seeds_to_decide(mean: float, sd: float, seeds: int, threshold: str = "0") -> str:
    """How many seeds would make a t-interval of a margin (mean, sd over `seeds`) exclude 0, the margin being the
    value minus `threshold` (as shown)."""
    if mean == 0:
        return f"the mean sits on {threshold}: no number of seeds decides"
    for n in range(seeds + 1, 1001):
        if t_quantile(n - 1) * sd / math.sqrt(n) < abs(mean):
            return f"the interval straddles {threshold}: about {n} seeds (now {seeds}) would decide, if mean and sd stay"
    return f"the interval straddles {threshold}: more than 1000 seeds would be needed"


STRUCTURE_COS2 = 0.5
"""The structure claim holds when the mean cos^2 of the principal angles between span(U) and the top-r PCs is at least
this: span(U) lies closer to the top-r PCs than to their orthogonal complement, on average over its r directions."""


def structure_row(result: Any, rank: int | None, init: str = "pca") -> ClaimRow:
    """span(U) against the top-r PCs and the outlier dimensions; the analysis has no resampling, so one seed gives no
    interval (several analysed seeds decide against STRUCTURE_COS2)."""
    claim = "scaffold = top principal components and massive dimensions (structure)"
    if result is None or not result.saes:
        return not_run(claim, "the structure analysis did not run")
    s = next((s for s in result.saes if s.rank == rank), result.saes[-1])
    ours = (f"r={s.rank}: mean cos^2 of the principal angles to the top-{s.rank} PCs {format_number(s.mean_cos2)} "
            f"(angles {format_number(min(s.principal_angles_deg))}-{format_number(max(s.principal_angles_deg))} "
            "deg); " + (f"outlier-dim energy in span(U) {format_number(s.outlier_energy_scaffold_centred)}"
                        if s.outlier_dims else "no outlier dims"))
    against = (f"the top-r PCs (mean cos^2 1 = the same subspace, r/d for a random one), decided against "
               f"{format_number(STRUCTURE_COS2)}; paper: the scaffold aligns with the top PCs and the massive-activation "
               "dimensions" + ("; the scaffold was initialised at the top PCs (scaffold_init: pca), so closeness is "
                               "by construction: scaffold_init random tests it" if init == "pca" else
                               f"; scaffold_init: {init}"))
    return ClaimRow(claim, ours, against, UNDECIDED,
                    f"no interval: one SAE on {s.n_tokens} held-out tokens without resampling; the analyses over "
                    "several seeds (analysis_seeds) decide", s.mean_cos2, threshold=STRUCTURE_COS2)


def causal_row(result: Any) -> ClaimRow:
    """Removing the scaffold vs the top-r PCs, same operator, ordinary positions: CE ratio >= 2 (paper 7.5 / 2.8)."""
    claim = "causal necessity: scaffold removal costs >= 2x the CE of removing the top-r PCs"
    if result is None:
        return not_run(claim, "the causal ablation table did not run")
    same = [c for c in result.comparisons if c.numerator.startswith("scaffold:") and c.denominator.startswith("pca:")
            and c.numerator.split(":")[1] == c.denominator.split(":")[1] and c.positions == "ordinary"]
    if not same:
        return not_run(claim, "the ablation table has no same-operator scaffold vs PCA reading at ordinary positions")
    head = next((c for c in same if c.numerator == "scaffold:zero"), same[0])
    op = head.numerator.split(":")[1]
    scaffold, pcs = result.cell("scaffold", op, "ordinary"), result.cell("pca", op, "ordinary")
    ours = (f"CE ratio {iv(head.ce_ratio)} (r={result.rank}, {op}: scaffold {iv(scaffold.ratio)} vs top PCs "
            f"{iv(pcs.ratio)} x clean CE; {result.n_contexts} contexts)")
    against = f"top-{result.rank} PCs removed by the same operator; threshold 2 (paper: 7.5 / 2.8 = 2.7)"
    verdict = {"yes": REPRODUCED, "no": NOT_REPRODUCED}.get(head.reaches_2, UNDECIDED)
    others = "; ".join(f"{c.numerator.split(':')[1]}: {c.reaches_2}" for c in same if c is not head)
    e = head.ce_ratio
    note = {REPRODUCED: "ratio >= 2 over the whole interval", NOT_REPRODUCED: "ratio < 2 over the whole interval",
            UNDECIDED: _decide("CE contexts", e.value, e.low, e.high, 2.0, result.n_contexts)}[verdict]
    note += f"; other operators reach 2: {others}" if others else ""
    return ClaimRow(claim, ours, against, verdict, note, head.ce_ratio.value, head.ce_ratio.low, head.ce_ratio.high,
                    threshold=2.0)


def redundancy_row(result: Any) -> ClaimRow:
    """The plain SAE's latents most aligned with span(U), zero-ablated (paper's share of the dictionary), cost less
    CE than zeroing the scaffold."""
    claim = "redundancy: ablating the plain SAE's scaffold-aligned latents costs less CE than removing the scaffold"
    if result is None:
        return not_run(claim, "the redundancy analysis did not run")
    against_paper = "paper: 787 latents x2.9 vs scaffold x7.5 clean CE"
    point = next((p for p in result.curve or [] if p.paper_share and p.operator == "zero"), None)
    scaffold = (result.scaffold_removed or {}).get("zero")
    if point is None or scaffold is None:
        ours = f"{result.n_aligned} aligned latents ablated: x{format_number(result.ratio_aligned_ablated)} clean CE"
        against = f"scaffold removed: x{format_number(result.ratio_scaffold_removed)}; {against_paper}"
        return ClaimRow(claim, ours, against, UNDECIDED, "no interval: rerun the study with the causal ablation "
                        "table's scaffold subject, zero operator and ordinary positions (ablation_subjects, "
                        "ablation_operators, ablation_positions), which the redundancy curve is compared with",
                        result.ratio_aligned_ablated)
    ours = (f"{point.n} most aligned latents zeroed: {iv(point.aligned)} x clean CE "
            f"({result.curve_contexts} contexts)")
    against = f"scaffold zeroed: {iv(scaffold)} x clean CE; {against_paper}"
    a = point.aligned
    if a.high < scaffold.low:
        verdict, note = REPRODUCED, "the latents' interval lies below the scaffold's"
    elif a.low > scaffold.high:
        verdict, note = NOT_REPRODUCED, "the latents' interval lies above the scaffold's"
    else:
        verdict = UNDECIDED
        gap, half = abs(scaffold.value - a.value), (a.high - a.low + scaffold.high - scaffold.low) / 2
        n = result.curve_contexts or 0
        note = ("the two intervals overlap: " + (f"about {max(n + 1, math.ceil(n * (half / gap) ** 2))} CE contexts "
                f"(now {n}) would separate them, if the estimates stay" if gap > 0 and n else
                "the estimates coincide: no sample size separates them"))
    return ClaimRow(claim, ours, against, verdict, note, a.value, a.low, a.high, threshold=scaffold.value,
                    claim_below=True)


def topic_row(topic: Any, probing: Any, rank: int | None) -> ClaimRow:
    """A probe trained on clean activations and held fixed, read after zeroing the scaffold at layer L: does its
    accuracy fall to chance? Decided against the point halfway from chance to the clean accuracy."""
    claim = "topic probe: removing the scaffold drops topic accuracy to chance"
    if topic is None or not topic.readouts:
        if probing is not None and probing.topic:
            rows = [t for t in probing.topic if t.features == "scaffold_removed" and t.rank == rank] or \
                [t for t in probing.topic if t.features == "scaffold_removed"]
            if rows:
                t = rows[0]
                return ClaimRow(claim, f"retrained probe, scaffold removed: {format_number(t.accuracy)} ({t.dataset})",
                                f"chance {format_number(t.chance)}; paper: 98.7% -> chance", UNDECIDED,
                                "no interval, and a retrained probe reads the topic from the other dimensions: run "
                                "the fixed-probe topic analysis (topic_datasets) to decide", t.accuracy)
        return not_run(claim, "the fixed-probe topic analysis did not run")
    dataset = next((o.dataset for o in topic.readouts if o.dataset == "bbc_topic"), topic.readouts[0].dataset)
    at = {(o.condition, o.read_layer): o for o in topic.readouts if o.dataset == dataset}
    removed = at.get(("scaffold:zero:ordinary", topic.layer)) or next(
        (o for (c, j), o in at.items() if c.startswith("scaffold:") and j == topic.layer), None)
    clean = at.get(("clean", topic.layer))
    if removed is None or clean is None:
        return not_run(claim, "the topic analysis has no scaffold ablation read at the ablated layer")
    halfway = removed.chance + (clean.accuracy.value - removed.chance) / 2
    a, n = removed.accuracy, topic.test_docs.get(dataset, 0)
    ours = (f"fixed probe after {removed.condition}: {iv(a)} accuracy ({dataset}, layer {topic.layer}, {n} test "
            "documents)")
    against = (f"clean {iv(clean.accuracy)}, chance {format_number(removed.chance)}; decided against halfway "
               f"{format_number(halfway)}; paper: 98.7% -> chance")
    verdict = side_of(a.low, a.high, halfway, claim_below=True)
    note = "accuracy below halfway from chance to clean over the whole interval"
    if verdict == NOT_REPRODUCED:
        note = "the interval lies above halfway from chance to clean: the topic survives"
    elif verdict == UNDECIDED:
        note = _decide("test documents", a.value, a.low, a.high, halfway, n)
    control = at.get(("random" + removed.condition[len("scaffold"):], topic.layer))
    if control is not None:
        same = side_of(control.accuracy.low, control.accuracy.high, halfway, claim_below=True)
        note += (f"; control: r random directions removed the same way give {iv(control.accuracy)}"
                 + (", so the drop is not specific to the scaffold" if same == verdict == REPRODUCED else ""))
    paired = next((d for d in getattr(topic, "differences", []) if d.dataset == dataset and d.read_layer == topic.layer
                   and d.condition == removed.condition and d.against.startswith("pca:")), None)
    if paired is not None:
        e = paired.difference
        note += (f"; scaffold minus the top-r PCs removed the same way, paired: {iv(e)}"
                 + (" (the scaffold leaves less topic)" if e.high < 0 else
                    " (the scaffold leaves more topic)" if e.low > 0 else " (undecided)"))
    return ClaimRow(claim, ours, against, verdict, note, a.value, a.low, a.high, threshold=halfway, claim_below=True)


def probing_row(result: Any, rank: int | None) -> ClaimRow:
    """Sparse-probing accuracy of the hybrid minus the plain SAE at k = 5 (else the largest k), mean over datasets:
    the paired bootstrap interval over test documents decides (results written before the paired test have none)."""
    from scaffold_sae.analyses.probing import MEAN

    claim = "sparse probing improves with the scaffold at matched sparsity"
    if result is None or not result.sparse:
        return not_run(claim, "the probing analysis did not run")
    ks = sorted({s.k for s in result.sparse})
    k = 5 if 5 in ks else ks[-1]
    scores = [s for s in result.sparse if s.k == k and s.dataset != MEAN]

    def mean_accuracy(r: int) -> float | None:
        accs = [s.accuracy.value for s in scores if s.rank == r]
        return sum(accs) / len(accs) if accs else None

    hybrid, plain = mean_accuracy(rank) if rank is not None else None, mean_accuracy(0)
    if hybrid is None or plain is None:
        return not_run(claim, "probing has no plain SAE and hybrid pair")
    datasets = len({s.dataset for s in scores if s.rank == 0})
    paired = [d for d in result.paired if d.k == k and d.rank == rank]
    paired = [d for d in paired if d.dataset == MEAN] or paired
    against = f"plain SAE: {format_number(plain)}; paper: improves"
    if len(paired) != 1:
        return ClaimRow(claim, f"hybrid r={rank}: {format_number(hybrid)} mean accuracy at k={k} over {datasets} "
                        f"datasets (difference {format_number(hybrid - plain)})", against, UNDECIDED,
                        "no interval: these results predate the paired test over test documents; rerun the study",
                        hybrid - plain)
    d = paired[0].difference
    n = sum(v.documents for v in result.datasets.values() if not v.skipped)
    ours = (f"hybrid r={rank} minus plain SAE: {iv(d)} accuracy at k={k}, mean over {datasets} datasets "
            f"({result.config.n_splits} splits, {n} documents)")
    verdict = {"better": REPRODUCED, "worse": NOT_REPRODUCED}.get(paired[0].verdict, UNDECIDED)
    note = {REPRODUCED: "the paired interval over test documents lies above 0",
            NOT_REPRODUCED: "the paired interval over test documents lies below 0: the hybrid probes worse"}.get(
        verdict) or _decide("documents", d.value, d.low, d.high, 0.0, n)
    return ClaimRow(claim, ours, against, verdict, note, d.value, d.low, d.high, threshold=0.0)


__all__ = ["ClaimRow", "claim_rows", "claims_section", "over_seeds", "primary_rank", "sample_to_decide", "side_of"]
