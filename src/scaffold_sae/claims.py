"""The one-screen summary a study report opens with: one row per claim of the paper, decided from the primary reading
its plan declared before training (scaffold_sae.plan), by two questions.

1. Is there an effect? The (Holm-adjusted) interval of the primary reading excludes "no effect" on the paper's side.
2. Does it reach the paper's size (-84% dense latents, a causal ratio of 2.7, topic down to chance)? Not when the
   interval lies wholly short of it.

Verdicts: "reproduced" (an effect, and the interval reaches the paper's size), "effect present but smaller than the
paper's", "not reproduced" (the effect is reversed, or none is shown and the interval excludes the paper's size),
"undecided" (with the reason and the sample that would decide), "not tested" (structure under a PCA-initialised
scaffold, close by construction), "not run", and for redundancy "depends on the operator" (zero and mean ablation
disagree). An interval decides only when it rests on at least `min_units` independent units (contexts, documents,
or seeds crossed with contexts). Over seeds, a claim is decided from one interval over seeds and contexts together
(stats.over_groups); seeds beyond the plan's count form a replication row that never enters the primary verdict.
Controls gate verdicts: the topic drop must beat r random directions and the top-r PCs (paired, same documents);
the causal row says whether the scaffold matters beyond removing the mean. The primary readings of the plan's family
are Holm-corrected together; rows show raw and adjusted intervals and p-values.

Pure functions of a study's results dict (the typed analysis results are rebuilt from it), so `scaffold-sae report`
redraws the summary from results.json alone; results written before plans, with a flat config or without the newer
controls, still get verdicts (a missing control leaves the claim undecided and says which).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, is_dataclass, replace
from typing import Any, Callable

from scaffold_sae.config import setting
from scaffold_sae.plan import ClaimsPlan, plan_of
from scaffold_sae.report import Section, Table, format_number
from scaffold_sae.stats import Estimate, Reading, holm, holm_levels, over_groups, t_interval

REPRODUCED, NOT_REPRODUCED, UNDECIDED, NOT_RUN = "reproduced", "not reproduced", "undecided", "not run"
SMALLER = "effect present but smaller than the paper's"
NOT_TESTED = "not tested"
DEPENDS = "depends on the operator"
VERDICTS = (REPRODUCED, SMALLER, NOT_REPRODUCED, DEPENDS, UNDECIDED, NOT_TESTED, NOT_RUN)
EFFECT_VERDICTS = (REPRODUCED, SMALLER)
"""Verdicts that assert an effect: under no effect, at most alpha of studies may reach one (tests/test_calibration)."""


@dataclass
class Rule:
    """What a reading is decided against."""

    null: float
    """The value of no effect."""
    paper: float | None
    """The paper's size (None: the paper states a direction only)."""
    below: bool
    """The paper's effect lies below `null` (e.g. fewer dense latents), else above it."""


@dataclass
class Decision:
    verdict: str
    note: str
    p: float | None = None
    p_adjusted: float | None = None
    low_adjusted: float | None = None
    high_adjusted: float | None = None


@dataclass
class ClaimRow:
    """One claim of the paper against our numbers."""

    claim: str
    ours: str
    against: str
    verdict: str
    """reproduced | effect present but smaller than the paper's | not reproduced | depends on the operator |
    undecided | not tested | not run."""
    note: str
    """The rule behind the verdict; for an undecided claim, the reason and the sample that would decide it."""
    value: float | None = None
    """The primary reading (shown in `ours`)."""
    low: float | None = None
    """Its raw 95% interval (None when there is none)."""
    high: float | None = None
    low_adjusted: float | None = None
    """The interval at the Holm-adjusted level the verdict used."""
    high_adjusted: float | None = None
    p: float | None = None
    """Raw two-sided p-value of no effect."""
    p_adjusted: float | None = None
    """Holm-adjusted across the plan's family."""
    null: float | None = None
    paper: float | None = None
    claim_below: bool = False
    units: int | None = None
    """Independent units behind the interval."""
    key: str = ""
    """dense | structure | causal | redundancy | topic | probing."""
    row: str = "primary"
    """primary (the plan's reading) or replication (seeds beyond the plan's count; never merged)."""


# ---------------------------------------------------------------------------------------------- deciding a reading


def decide(reading: Reading | None, rule: Rule, min_units: int = 30, alpha: float = 0.05,
           p_adjusted: float | None = None, level: float | None = None) -> Decision:
    """The verdict of one reading under `rule`: effect present when the (adjusted) p-value of no effect is below
    alpha on the paper's side; reproduced unless the interval at `level` (default 1 - alpha) lies wholly short of the
    paper's size. Fewer than `min_units` units, or no interval, decide nothing."""
    if reading is None or not reading.has_interval:
        return Decision(UNDECIDED, "no interval")
    if reading.units < min_units:
        return Decision(UNDECIDED, f"{reading.units} {reading.unit}, at least {min_units} needed")
    p = reading.p_value(rule.null)
    p_adj = p if p_adjusted is None else p_adjusted
    low, high = reading.at_level(level or 1.0 - alpha)
    out = Decision(UNDECIDED, "", p, p_adj, low, high)
    toward = reading.value < rule.null if rule.below else reading.value > rule.null
    short = rule.paper is not None and (low > rule.paper if rule.below else high < rule.paper)
    shown = f"[{format_number(low)}, {format_number(high)}]"
    if p_adj < alpha and toward:
        if short:
            out.verdict, out.note = SMALLER, (f"effect present ({shown} excludes {format_number(rule.null)}), but "
                                              f"short of the paper's {format_number(rule.paper)}")
        else:
            out.verdict = REPRODUCED
            out.note = f"effect present ({shown} excludes {format_number(rule.null)})" + (
                f" and reaches the paper's {format_number(rule.paper)}" if rule.paper is not None else "")
    elif p_adj < alpha:
        out.verdict, out.note = NOT_REPRODUCED, f"the effect is reversed: {shown} lies on the other side of " \
                                                f"{format_number(rule.null)}"
    elif short:
        out.verdict, out.note = NOT_REPRODUCED, (f"no effect shown ({shown} contains {format_number(rule.null)}) and "
                                                 f"the paper's {format_number(rule.paper)} lies outside it")
    else:
        out.note = f"{shown} contains {format_number(rule.null)}" + (
            f" and reaches the paper's {format_number(rule.paper)}" if rule.paper is not None else "") + \
            ": " + sample_to_decide(reading, rule, low, high)
    return out


def sample_to_decide(reading: Reading, rule: Rule, low: float, high: float) -> str:
    """About how many units (or seeds, for an interval over seeds) would make the interval exclude no effect or,
    where the estimate falls short of it, the paper's size: half-widths shrink as 1/sqrt(n)."""
    seeds = reading.groups is not None
    n = reading.groups if seeds else reading.units
    what = "seeds" if seeds else reading.unit
    targets = [rule.null]
    if rule.paper is not None and (reading.value > rule.paper if rule.below else reading.value < rule.paper):
        targets.append(rule.paper)
    needed = []
    for target in targets:
        gap = abs(reading.value - target)
        half = (reading.value - low) if target < reading.value else (high - reading.value)
        if gap > 0 and half > 0:
            needed.append(max(n + 1, math.ceil(n * (half / gap) ** 2 - 1e-9)))
    if not needed:
        return "the estimate sits on the boundary: no sample size decides it"
    return f"about {min(needed)} {what} (now {n}) would decide, if the estimate and its spread stay"


# ---------------------------------------------------------------------------------------------- one claim's reading


@dataclass
class Part:
    """One reading a claim is decided on: the primary, or a control it must also beat."""

    label: str
    reading: Reading | None
    rule: Rule
    why: str = ""
    """Why there is no reading (a missing control, a reading the plan names but the results lack)."""


@dataclass
class Primary:
    """A claim's readings from one seed (or several, combined) before deciding."""

    key: str
    claim: str
    ours: str
    against: str
    parts: list[Part] = field(default_factory=list)
    """The primary reading first; then the operators it must agree under (redundancy) or the controls it must beat
    (topic)."""
    combine: str = "all"
    """all: every part must show the effect (controls); agree: the parts' verdicts must agree (operators)."""
    secondary: str = ""
    """Other readings, reported and deciding nothing."""
    fixed: str | None = None
    """A verdict without deciding (not run, not tested, undecided for want of an interval)."""
    why: str = ""
    values_by_seed: list[float] = field(default_factory=list)


def _reading(e: Estimate | None, units: int, unit: str, method: str) -> Reading | None:
    if e is None or e.low is None or e.high is None:
        return None
    return Reading.from_estimate(e, units, unit, method)


def iv(e: Estimate | Reading | None) -> str:
    if e is None:
        return "n/a"
    return interval_text(e.value, e.low, e.high)


def interval_text(value: float | None, low: float | None, high: float | None) -> str:
    if low is None or high is None:
        return format_number(value)
    return f"{format_number(value)} [{format_number(low)}, {format_number(high)}]"


def dense_primary(study: dict[str, Any], plan: ClaimsPlan, rank: int | None, seeds: list[int]) -> Primary:
    """Hybrid vs plain SAE, dense-latent count relative change per seed (same batches, same seed); a t-interval over
    the seeds (units: seeds x held-out contexts)."""
    from scaffold_sae.roles import dense_comparisons, role_groups

    claim = f"dense latents removed by the scaffold (hybrid r={rank} vs plain SAE)"
    saes = study.get("saes", {})
    groups = role_groups(saes)
    hybrid = next((g for g in groups if g.kind == "hybrid" and g.for_rank == rank), None)
    plain = next((g for g in groups if g.kind == "baseline" and hybrid is not None and g.arch == hybrid.arch
                  and g.inference == hybrid.inference), None)
    if hybrid is None or plain is None:
        return Primary("dense", "dense latents removed by the scaffold", "-", "-", fixed=NOT_RUN,
                       why="no hybrid and plain SAE pair was evaluated")
    key = plan.dense_key
    changes, hs, bs = [], [], []
    for s in seeds:
        h, b = (hybrid.by_seed.get(s) or {}).get(key), (plain.by_seed.get(s) or {}).get(key)
        if h is None or b is None or not b:
            continue
        changes.append((h - b) / b)
        hs.append(h)
        bs.append(b)
    rule = Rule(0.0, plan.dense_paper, below=True)
    contexts = _contexts(study, "harvest.eval_tokens")
    against = (f"plain SAE: {format_number(sum(bs) / len(bs)) if bs else 'n/a'} latents firing on >10% of held-out "
               f"tokens at matched L0; paper: {100 * plan.dense_paper:+.0f}% (Gemma-2-2B L12, r = 24)")
    others = [c for c in dense_comparisons(saes, key) if c.hybrid_rank == rank and c.against != "baseline"
              and c.change is not None]
    secondary = "; ".join(f"against {c.against}: {100 * c.change:+.0f}% over {c.seeds} seeds" for c in others)
    seeds_text = ", ".join(str(s) for s in seeds)
    if not changes:
        return Primary("dense", claim, "-", against, fixed=NOT_RUN, why=f"no seed in {seeds_text} has both SAEs")
    per = ", ".join(f"{100 * c:+.0f}%" for c in changes)
    if len(changes) < 2:
        return Primary("dense", claim, f"hybrid {format_number(hs[0])} vs {format_number(bs[0])}: {per} (1 seed)",
                       against, fixed=UNDECIDED, secondary=secondary, values_by_seed=changes,
                       why="one seed gives no interval: the plan's seeds (claims.seeds, at least 2) would decide")
    mean, sd, low, high = t_interval(changes)
    reading = Reading(mean, low, high, len(changes) * contexts, f"seeds x {contexts} held-out contexts",
                      f"t-interval over {len(changes)} seeds", df=len(changes) - 1, groups=len(changes))
    ours = (f"relative change {interval_text(mean, low, high)} ({100 * mean:+.0f}%; mean ± sd "
            f"{format_number(mean)} ± {format_number(sd)} over {len(changes)} seeds, 95% t-interval; per seed {per})")
    return Primary("dense", claim, ours, against, [Part("relative change", reading, rule)], secondary=secondary,
                   values_by_seed=changes)


def _contexts(study: dict[str, Any], tokens_setting: str) -> int:
    tokens, ctx = setting(study.get("config", {}), tokens_setting), setting(study.get("config", {}), "harvest.ctx_len")
    return max(1, int(tokens) // int(ctx)) if tokens and ctx else 1


def structure_primary(typed: dict[str, Any], plan: ClaimsPlan, rank: int | None, init: str,
                      study: dict[str, Any]) -> Primary:
    """span(U) against the top-r PCs: mean cos^2 of the principal angles (no effect: r / d; the paper's size:
    claims.structure_cos2). No resampling within a seed: several seeds give the interval."""
    claim = "scaffold = top principal components and massive dimensions (structure)"
    result = typed.get("structure")
    if result is None or not result.saes:
        return Primary("structure", claim, "-", "-", fixed=NOT_RUN, why="the structure analysis did not run")
    s = next((s for s in result.saes if s.rank == rank), result.saes[-1])
    redundancy = typed.get("redundancy")
    d = getattr(redundancy, "d_model", None)
    null = s.rank / d if d else 0.0
    ours = (f"r={s.rank}: mean cos^2 of the principal angles to the top-{s.rank} PCs {format_number(s.mean_cos2)} "
            f"(angles {format_number(min(s.principal_angles_deg))}-{format_number(max(s.principal_angles_deg))} "
            "deg); " + (f"outlier-dim energy in span(U) {format_number(s.outlier_energy_scaffold_centred)}"
                        if s.outlier_dims else "no outlier dims"))
    against = (f"a random subspace ({'r/d = ' + format_number(null) if d else 'about r/d'}); the paper's size: mean "
               f"cos^2 >= {format_number(plan.structure_cos2)}; paper: the scaffold aligns with the top PCs and the "
               "massive-activation dimensions")
    contexts = max(1, s.n_tokens // int(setting(study.get("config", {}), "harvest.ctx_len") or 128))
    reading = Reading(s.mean_cos2, None, None, contexts, "held-out contexts", "one SAE, no resampling")
    part = Part("mean cos^2", reading, Rule(null, plan.structure_cos2, below=False),
                f"no interval: one SAE on {s.n_tokens} held-out tokens without resampling; the analyses over several "
                "seeds (analyses.seeds) decide")
    primary = Primary("structure", claim, ours, against, [part], values_by_seed=[s.mean_cos2])
    same = [x.mean_cos2 for x in result.saes if x.rank == s.rank][:plan.seeds]
    if plan.seeds > 1 and len(same) == plan.seeds:  # one table holding several seeds' SAEs at this rank
        mean, sd, low, high = t_interval(same)
        part.reading = Reading(mean, low, high, len(same) * contexts, f"seeds x {contexts} held-out contexts",
                               f"t-interval over {len(same)} seeds", df=len(same) - 1, groups=len(same))
        primary.ours = (f"r={s.rank}: mean cos^2 of the principal angles to the top-{s.rank} PCs "
                        f"{interval_text(mean, low, high)} (mean ± sd {format_number(mean)} ± {format_number(sd)} over "
                        f"{len(same)} seeds, 95% t-interval; per seed {', '.join(format_number(v) for v in same)})")
    if init == "pca":
        primary.fixed = NOT_TESTED
        primary.why = ("the scaffold was initialised at the top PCs (scaffold_init: pca), so closeness holds by "
                       "construction: a study with scaffold_init random tests it")
    return primary


def causal_primary(typed: dict[str, Any], plan: ClaimsPlan) -> Primary:
    """The plan's subject removed by its operator at its positions, CE over the CE of the top-r PCs removed the same
    way (no effect: 1; the paper: 7.5 / 2.8 = 2.7); secondary: other readings, the random control, and whether the
    scaffold matters beyond removing the mean (subjects pca_mean = span[top-r PCs, mean] and mean)."""
    result = typed.get("ablation_table")
    subject, op, pos = plan.causal_subject, plan.causal_operator, plan.causal_positions
    claim = f"causal necessity: removing the scaffold costs {format_number(plan.causal_paper)}x the CE of removing " \
            "the top-r PCs"
    if result is None:
        return Primary("causal", claim, "-", "-", fixed=NOT_RUN, why="the causal ablation table did not run")
    rule = Rule(1.0, plan.causal_paper, below=False)
    unit = "CE contexts"
    n = int(result.n_contexts)

    def comparison(num: str, den: str, positions: str):
        return next((c for c in result.comparisons if c.numerator == num and c.denominator == den
                     and c.positions == positions), None)

    head = comparison(f"{subject}:{op}", f"pca:{op}", pos)
    same = [c for c in result.comparisons if c.denominator.startswith("pca:") and c is not head
            and c.numerator.split(":")[0] == subject and c.numerator.split(":")[1] == c.denominator.split(":")[1]]
    secondary = ["other readings (decide nothing): " + "; ".join(
        f"{c.numerator.split(':')[1]}, {c.positions}: {iv(c.ce_ratio)}" for c in same)] if same else []
    random = comparison(f"{subject}:{op}", f"random:{op}", pos)
    if random is not None:
        secondary.append(f"against r random directions removed the same way: {iv(random.ce_ratio)}")
    secondary.append(beyond_the_mean(result, subject, op, pos))
    against = (f"top-{result.rank} PCs removed the same way ({op}, {pos} positions); no effect 1; paper: 7.5 / 2.8 = "
               f"{format_number(plan.causal_paper)}")
    if head is None:
        measured = ", ".join(sorted({f"{c.numerator} vs {c.denominator} ({c.positions})" for c in result.comparisons}))
        return Primary("causal", claim, "-", against, fixed=UNDECIDED, secondary="; ".join(secondary),
                       why=f"the plan's reading ({subject}:{op} vs pca:{op} at {pos} positions) was not measured; "
                           f"measured: {measured or 'nothing comparable'}")
    try:
        cells = f" ({subject} {iv(result.cell(subject, op, pos).ratio)} vs top PCs {iv(result.cell('pca', op, pos).ratio)}" \
                " x clean CE)"
    except StopIteration:
        cells = ""
    ours = f"CE ratio {iv(head.ce_ratio)} (r={result.rank}, {op}, {pos} positions{cells}; {n} contexts)"
    reading = _reading(head.ce_ratio, n, unit, f"paired bootstrap over {n} CE contexts")
    return Primary("causal", claim, ours, against, [Part("CE ratio", reading, rule)], secondary="; ".join(secondary),
                   values_by_seed=[head.ce_ratio.value])


def beyond_the_mean(result: Any, subject: str, op: str, pos: str) -> str:
    """Whether removing the subject costs more than removing span[top-r PCs, mean] (subject pca_mean) the same way,
    and what the mean direction alone costs (subject mean)."""
    paired = next((c for c in result.comparisons if c.numerator == f"{subject}:{op}"
                   and c.denominator == f"pca_mean:{op}" and c.positions == pos), None)
    cells = {c.subject: c for c in result.cells if c.operator == op and c.positions == pos}
    if paired is None and "pca_mean" not in cells:
        return ("beyond the mean: not measured (the table has no pca_mean = span[top-r PCs, mean] or mean subjects), "
                "so whether the scaffold matters beyond removing the mean is open")
    if paired is not None:
        e = paired.ce_ratio
        side = ("the scaffold matters beyond removing the mean and the top PCs" if e.low > 1 else
                "the scaffold costs no more than span[top-r PCs, mean]" if e.high <= 1 else "undecided")
        text = f"beyond the mean: {subject} over span[top-r PCs, mean] {iv(e)} ({side})"
    else:
        s, m = cells.get(subject), cells["pca_mean"]
        side = ("the scaffold costs more" if s and s.ratio.low > m.ratio.high else
                "the scaffold costs no more" if s and s.ratio.high < m.ratio.low else "the intervals overlap")
        text = (f"beyond the mean: {subject} {iv(s.ratio if s else None)} vs span[top-r PCs, mean] {iv(m.ratio)} x "
                f"clean CE, unpaired ({side})")
    if "mean" in cells:
        text += f"; the mean direction alone {iv(cells['mean'].ratio)} x clean CE"
    return text


def redundancy_primary(typed: dict[str, Any], plan: ClaimsPlan) -> Primary:
    """The plain SAE's latents most aligned with span(U) (the paper's share of the dictionary) ablated, over the
    scaffold removed, by each plan operator: CE ratio over CE ratio (no effect 1; the paper 2.9 / 7.5). Decided only
    where the operators agree."""
    claim = "redundancy: ablating the plain SAE's scaffold-aligned latents costs less CE than removing the scaffold"
    result = typed.get("redundancy")
    if result is None:
        return Primary("redundancy", claim, "-", "-", fixed=NOT_RUN, why="the redundancy analysis did not run")
    against = (f"the scaffold removed by the same operator; no effect 1; paper: 787 latents x2.9 vs scaffold x7.5 "
               f"clean CE = {format_number(plan.redundancy_paper)}")
    rule = Rule(1.0, plan.redundancy_paper, below=True)
    n = int(result.curve_contexts or 0)
    parts, shown = [], []
    for op in plan.redundancy_operator_list:
        point = next((p for p in result.curve or [] if p.paper_share and p.operator == op), None)
        scaffold = (result.scaffold_removed or {}).get(op)
        if point is None or scaffold is None:
            parts.append(Part(op, None, rule, f"{op} ablation was not measured against the scaffold"))
            continue
        reading = ratio_reading(point.aligned, scaffold, n, f"{point.n} latents / scaffold, {op}")
        parts.append(Part(op, reading, rule))
        shown.append(f"{op}: {point.n} latents {iv(point.aligned)} vs scaffold {iv(scaffold)} x clean CE, ratio "
                     f"{iv(reading)}")
    if not shown:
        ours = f"{result.n_aligned} aligned latents ablated: x{format_number(result.ratio_aligned_ablated)} clean CE"
        return Primary("redundancy", claim, ours, against, fixed=UNDECIDED,
                       why="no interval: rerun with the causal ablation table's scaffold subject under zero and mean "
                           "at ordinary positions, which the redundancy curve is compared with")
    ours = "; ".join(shown) + f" ({n} contexts)"
    first = next((p.reading.value for p in parts if p.reading is not None), None)
    return Primary("redundancy", claim, ours, against, parts, combine="agree", values_by_seed=[first])


def ratio_reading(a: Estimate, b: Estimate, units: int, what: str) -> Reading:
    """a / b with an interval from the two intervals as if independent (log scale, spreads added in quadrature): wider
    than the paired interval when the two are positively correlated over contexts."""
    from scipy.special import ndtri

    z = float(ndtri(0.975))
    se = math.hypot(math.log(a.high / a.low), math.log(b.high / b.low)) / (2 * z)
    value = a.value / b.value
    return Reading(value, value * math.exp(-z * se), value * math.exp(z * se), units, "CE contexts",
                   f"{what}: ratio of two bootstrap intervals over {units} contexts, combined as independent")


def topic_primary(typed: dict[str, Any], plan: ClaimsPlan, rank: int | None) -> Primary:
    """A probe trained on clean activations and held fixed, read after the plan's removal of the scaffold at layer L:
    accuracy against clean (no effect) and chance (the paper's size); gated by the paired differences against r random
    directions and the top-r PCs removed the same way (same documents)."""
    claim = "topic probe: removing the scaffold drops topic accuracy to chance"
    topic, probing = typed.get("topic_ablation"), typed.get("probing")
    if topic is None or not topic.readouts:
        rows = [t for t in getattr(probing, "topic", None) or [] if t.features == "scaffold_removed"]
        rows = [t for t in rows if t.rank == rank] or rows
        if rows:
            t = rows[0]
            return Primary("topic", claim, f"retrained probe, scaffold removed: {format_number(t.accuracy)} "
                           f"({t.dataset})", f"chance {format_number(t.chance)}; paper: 98.7% -> chance",
                           fixed=UNDECIDED, why="no interval, and a retrained probe reads the topic from the other "
                           "dimensions: run the fixed-probe topic analysis (topic_datasets) to decide")
        return Primary("topic", claim, "-", "-", fixed=NOT_RUN, why="the fixed-probe topic analysis did not run")
    datasets = {o.dataset for o in topic.readouts}
    dataset = plan.topic_dataset if plan.topic_dataset in datasets else sorted(datasets)[0]
    condition = f"scaffold:{plan.topic_operator}:{plan.topic_positions}"
    at = {(o.condition, o.read_layer): o for o in topic.readouts if o.dataset == dataset}
    removed, clean = at.get((condition, topic.layer)), at.get(("clean", topic.layer))
    if removed is None or clean is None:
        measured = sorted({c for c, j in at if j == topic.layer})
        return Primary("topic", claim, "-", "-", fixed=UNDECIDED,
                       why=f"the plan's reading ({condition} on {dataset} at layer {topic.layer}) was not measured; "
                           f"measured: {', '.join(measured)}")
    n = int(topic.test_docs.get(dataset, 0))
    unit = "test documents"
    a = removed.accuracy
    ours = f"fixed probe after {condition}: {iv(a)} accuracy ({dataset}, layer {topic.layer}, {n} test documents)"
    against = (f"clean {iv(clean.accuracy)} (no effect), chance {format_number(removed.chance)} (the paper's size: "
               "98.7% -> chance); gated by r random directions and the top-r PCs removed the same way, paired")
    parts = [Part("accuracy", _reading(a, n, unit, f"bootstrap over {n} test documents"),
                  Rule(clean.accuracy.value, removed.chance, below=True))]
    secondary = []
    for control, name in (("random", "r random directions"), ("pca", "the top-r PCs")):
        difference = next((d for d in getattr(topic, "differences", None) or [] if d.dataset == dataset
                           and d.read_layer == topic.layer and d.condition == condition
                           and d.against.split(":")[0] == control), None)
        readout = at.get((f"{control}{condition[len('scaffold'):]}", topic.layer))
        if readout is not None:
            secondary.append(f"{name} removed the same way: {iv(readout.accuracy)}")
        if difference is None:
            parts.append(Part(f"against {name}", None, Rule(0.0, None, below=True),
                              f"the paired difference against {name} was not measured"))
            continue
        parts.append(Part(f"against {name}", _reading(difference.difference, n, unit, "paired bootstrap over "
                                                      f"{n} test documents"), Rule(0.0, None, below=True)))
        secondary.append(f"scaffold minus {name}, paired: {iv(difference.difference)}")
    return Primary("topic", claim, ours, against, parts, secondary="; ".join(secondary), values_by_seed=[a.value])


def probing_primary(typed: dict[str, Any], plan: ClaimsPlan, rank: int | None, saes: dict[str, Any]) -> Primary:
    """Sparse-probing accuracy of the hybrid minus the plain SAE at the plan's k, mean over datasets (paired over test
    documents; no effect 0). Credit: against the PCA-deflation SAEs where they were probed, and the top raw residual
    dimensions."""
    from scaffold_sae.analyses.probing import MEAN
    from scaffold_sae.probing_sources import is_source_name
    from scaffold_sae.roles import kind_of

    claim = "sparse probing improves with the scaffold at matched sparsity"
    result = typed.get("probing")
    if result is None or not result.sparse:
        return Primary("probing", claim, "-", "-", fixed=NOT_RUN, why="the probing analysis did not run")
    k = plan.probing_k
    kinds = {name: kind_of(r) for name, r in saes.items()}

    def kind(name: str, r: int | None) -> str:
        return kinds.get(name) or ("baseline" if not r else "hybrid")

    scores = [s for s in result.sparse if s.k == k and s.dataset != MEAN]
    n = sum(v.test_documents or v.documents for v in result.datasets.values() if not v.skipped)
    if not scores:
        ks = sorted({s.k for s in result.sparse})
        return Primary("probing", claim, "-", "-", fixed=UNDECIDED, why=f"the plan's k={k} was not probed (ks: {ks})")
    if all(is_source_name(s.dataset) for s in scores):
        return probing_breadth_primary(result, k, rank, kind, claim)

    def mean_accuracy(match: Callable[[Any], bool]) -> float | None:
        accs = [s.accuracy.value for s in scores if match(s)]
        return sum(accs) / len(accs) if accs else None

    hybrid = mean_accuracy(lambda s: s.rank == rank and kind(s.features, s.rank) == "hybrid")
    plain = mean_accuracy(lambda s: kind(s.features, s.rank) == "baseline" and s.features != "residual")
    residual = mean_accuracy(lambda s: s.features == "residual")
    deflation = mean_accuracy(lambda s: kind(s.features, s.rank) == "pca_deflation" and s.rank == rank)
    datasets = len({s.dataset for s in scores})
    against = f"plain SAE: {format_number(plain)} mean accuracy; no effect 0; paper: improves (no size)"
    paired = [d for d in result.paired if d.k == k]
    paired_mean = [d for d in paired if d.dataset == MEAN] or paired
    head = [d for d in paired_mean if d.rank == rank and kind(d.sae, d.rank) == "hybrid"
            and kind(d.baseline, 0) == "baseline"]
    credit, control = [], None
    for d in paired_mean:
        pair = {kind(d.sae, d.rank), kind(d.baseline, 0)}
        if "pca_deflation" in pair and d.rank == rank:
            better = d.sae if d.difference.low > 0 else d.baseline if d.difference.high < 0 else None
            credit.append(f"{kind(d.sae, d.rank)} minus {kind(d.baseline, 0)}, paired: {iv(d.difference)} ("
                          + (f"{kind(better, d.rank)} probes better" if better else "neither beats the other") + ")")
            if pair == {"pca_deflation", "hybrid"} and d.difference.low is not None:
                e = d.difference  # the hybrid minus the PCA-deflation SAE, whichever way round it was paired
                control = e if kind(d.sae, d.rank) == "hybrid" else Estimate(-e.value, -e.high, -e.low)
    if not credit:
        credit.append(f"PCA-deflation SAE r={rank}: {format_number(deflation)} mean accuracy (unpaired)"
                      if deflation is not None else "the PCA-deflation SAEs were not probed, so the gain is not "
                      "credited to the scaffold over removing the top-r PCs")
    if residual is not None:
        credit.append(f"top-{k} raw residual dimensions: {format_number(residual)}")
    secondary = "; ".join(credit)
    if hybrid is None or plain is None:
        return Primary("probing", claim, "-", against, fixed=NOT_RUN, secondary=secondary,
                       why="probing has no plain SAE and hybrid pair")
    if len(head) != 1:
        return Primary("probing", claim, f"hybrid r={rank}: {format_number(hybrid)} mean accuracy at k={k} over "
                       f"{datasets} datasets (difference {format_number(hybrid - plain)})", against, fixed=UNDECIDED,
                       secondary=secondary, why="no interval: these results predate the paired test over test "
                       "documents; rerun the study")
    d = head[0].difference
    ours = (f"hybrid r={rank} minus plain SAE: {iv(d)} accuracy at k={k}, mean over {datasets} datasets "
            f"({result.config.n_splits} splits, {n} documents)")
    reading = _reading(d, n, "documents", f"paired bootstrap over {n} documents")
    gate = Part("against the PCA-deflation SAE", _reading(control, n, "documents", "paired bootstrap over "
                f"{n} documents"), Rule(0.0, None, False), "the PCA-deflation SAEs were not probed (add "
                "pca_deflation to sae.baselines), so the gain is not shown to be the scaffold's")
    return Primary("probing", claim, ours, against, [Part("accuracy difference", reading, Rule(0.0, None, False)),
                                                     gate], secondary=secondary, values_by_seed=[d.value])


def probing_breadth_primary(result: Any, k: int, rank: int | None, kind: Callable[[str, int | None], str],
                            claim: str) -> Primary:
    """The probing claim of a study that probed only the tasks of a probing source (e.g. the 111 of
    sae_probes:binary>=1000): the hybrid minus the plain SAE at k, mean over tasks with a bootstrap interval over
    tasks (the tasks are the units: the interval covers the choice of tasks, not documents within one), gated by the
    hybrid minus the PCA-deflation SAE of its rank read the same way."""
    from scaffold_sae.probing_sources import breadth

    summary = breadth(result)
    ranks = {s.features: s.rank for s in result.sparse}
    tasks = len(summary.tasks)

    def role(name: str) -> str:
        controls = getattr(result, "controls", None) or {}
        return "pca_deflation" if name in controls else kind(name, ranks.get(name))

    if rank is None:  # no plan rank and no SAE records (an analyse step's table): the largest hybrid rank probed
        rank = max((r for name, r in ranks.items() if r and role(name) == "hybrid"), default=None)

    def difference(a: str, b: str) -> tuple[Any, Estimate | None]:
        """The mean over tasks of role a minus role b at k (whichever way round it was paired), or (None, None)."""
        for d in summary.differences:
            if d.k != k or rank not in (ranks.get(d.sae), ranks.get(d.baseline)):
                continue
            pair = (role(d.sae), role(d.baseline))
            if pair == (a, b):
                return d, Estimate(d.mean, d.low, d.high)
            if pair == (b, a):
                return d, Estimate(-d.mean, -d.high, -d.low)
        return None, None

    head, head_e = difference("hybrid", "baseline")
    control, control_e = difference("hybrid", "pca_deflation")
    deflation, deflation_e = difference("pca_deflation", "baseline")
    method = f"bootstrap over {tasks} {summary.source} tasks"
    against = "plain SAE; no effect 0; paper: improves (no size)"
    secondary = "; ".join(
        [f"{what}: {iv(e)} mean over tasks" for what, e in (("hybrid minus pca_deflation", control_e),
                                                              ("pca_deflation minus plain", deflation_e)) if e]
        or ["the PCA-deflation SAEs were not probed, so the gain is not credited to the scaffold over removing the "
            "top-r PCs"])
    if head is None:
        return Primary("probing", claim, "-", against, fixed=NOT_RUN, secondary=secondary,
                       why=f"probing on {tasks} {summary.source} tasks has no plain SAE and hybrid r={rank} pair")
    ours = (f"hybrid r={rank} minus plain SAE: {iv(head_e)} accuracy at k={k}, mean over {tasks} {summary.source} "
            f"tasks ({head.better} tasks better, {head.worse} worse on their own test documents)")
    gate = Part("against the PCA-deflation SAE", _reading(control_e, tasks, "tasks", method), Rule(0.0, None, False),
                "the PCA-deflation SAEs were not probed (add pca_deflation to sae.baselines), so the gain is not "
                "shown to be the scaffold's")
    return Primary("probing", claim, ours, against, [Part("accuracy difference", _reading(head_e, tasks, "tasks",
                                                                                            method),
                                                          Rule(0.0, None, False)), gate],
                   secondary=secondary, values_by_seed=[head_e.value])


# ---------------------------------------------------------------------------------------------- over seeds


def combine_seeds(primaries: list[Primary], seeds: list[int]) -> Primary:
    """One claim's readings over several seeds: each part's readings combined by stats.over_groups (the seeds share
    their contexts or documents); a part missing in some seed leaves it without a reading."""
    first = primaries[0]
    if len(primaries) == 1 or first.fixed == NOT_RUN:
        return first
    parts = []
    for i, part in enumerate(first.parts):
        readings = [p.parts[i].reading if i < len(p.parts) else None for p in primaries]
        if all(r is not None for r in readings):
            parts.append(replace(part, reading=over_groups(readings, f"seeds x {readings[0].unit}")))
        else:
            missing = [s for s, r in zip(seeds, readings) if r is None]
            parts.append(replace(part, reading=None, why=f"seeds {missing} have no {part.label} reading"
                                 + (f" ({part.why})" if part.why else "")))
    values = [p.values_by_seed[0] if p.values_by_seed else None for p in primaries]
    head = parts[0].reading if parts else None
    n = len(primaries)
    if head is not None and None not in values:
        mean, sd, _, _ = t_interval(values)
        ours = (f"{format_number(mean)} ± {format_number(sd)} over {n} seeds (95% t-interval "
                f"[{format_number(head.low)}, {format_number(head.high)}]; per seed "
                f"{', '.join(format_number(v) for v in values)}); seed {seeds[0]}: {first.ours}")
    else:
        ours = f"seed {seeds[0]}: {first.ours}"
    fixed, why = first.fixed, first.why
    if fixed is None:
        other = next(((s, p) for s, p in zip(seeds, primaries) if p.fixed is not None), None)
        if other is not None:   # a claim measured in some seeds only is undecided, not "not run"
            fixed, why = UNDECIDED if other[1].fixed == NOT_RUN else other[1].fixed, f"seed {other[0]}: {other[1].why}"
    return replace(first, ours=ours, parts=parts, fixed=fixed, why=why,
                   values_by_seed=[v for v in values if v is not None])


# ---------------------------------------------------------------------------------------------- the summary


def claim_rows(study: dict[str, Any], plan: ClaimsPlan | None = None) -> list[ClaimRow]:
    """The summary rows of a study's results dict (config, saes, analyses), in the paper's order, decided under the
    study's stored plan (or `plan`), Holm-corrected across the plan's family; replication rows follow their claim."""
    stored, status = plan_of(study)
    declared = plan is not None or isinstance(study.get("plan"), dict)
    plan = plan or stored
    rank = primary_rank(study, plan)
    init = str(setting(study.get("config", {}), "sae.scaffold_init", "pca") or "pca")
    analysed = seeds_analyses(study)
    typed = [(seed, _typed_analyses(data)) for seed, data in analysed]
    primary_seeds = [s for s, _ in typed][:plan.seeds]
    extra_seeds = [s for s, _ in typed][plan.seeds:]
    trained = sorted({int(r.get("seed") or 0) for r in study.get("saes", {}).values()}) or [0]

    def analysis_claims(chosen: list[tuple[int, dict[str, Any]]]) -> list[Primary]:
        per_seed = [[structure_primary(t, plan, rank, init, study), causal_primary(t, plan),
                     redundancy_primary(t, plan), topic_primary(t, plan, rank),
                     probing_primary(t, plan, rank, study.get("saes", {}))] for _, t in chosen]
        return [combine_seeds(list(column), [s for s, _ in chosen]) for column in zip(*per_seed)]

    primaries = [dense_primary(study, plan, rank, trained[:plan.seeds]),
                 *analysis_claims([(s, t) for s, t in typed if s in primary_seeds])]
    replications: dict[str, Primary] = {}
    if len(trained) > plan.seeds:
        replications["dense"] = dense_primary(study, plan, rank, trained[plan.seeds:])
    if extra_seeds:
        for p in analysis_claims([(s, t) for s, t in typed if s in extra_seeds]):
            replications[p.key] = p
    short = [] if len(primary_seeds) >= plan.seeds or not declared else primary_seeds
    rows = decide_family(primaries, plan, short)
    out = []
    for row in rows:
        out.append(row)
        if row.key in replications and replications[row.key].fixed != NOT_RUN:
            rep_seeds = trained[plan.seeds:] if row.key == "dense" else extra_seeds
            (rep,) = decide_family([replications[row.key]], replace(plan, family=""))
            out.append(replace(rep, claim=f"{row.claim}: replication on seeds {', '.join(map(str, rep_seeds))}",
                               row="replication", note=rep.note + "; added after the plan's "
                               f"{plan.seeds} seeds, never merged into the primary verdict"))
    return out


def decide_family(primaries: list[Primary], plan: ClaimsPlan, short_seeds: list[int] = ()) -> list[ClaimRow]:
    """Decide each claim's parts, Holm-adjusting across the plan's family: a claim's p-value is the largest of its
    parts' (every part must show its effect); each part is decided at its claim's adjusted level."""
    family = set(plan.family_claims) if plan.correction == "holm" else set()
    def measured(part: Part) -> bool:
        return part.reading is not None and part.reading.has_interval and part.reading.units >= plan.min_units

    # a claim enters the family when its primary reading can decide; a control not measured leaves it undecided, but
    # still counted, so that the correction never shrinks because a control is missing
    decidable = [p for p in primaries if p.fixed is None and p.parts and measured(p.parts[0])]
    p_claim = {p.key: max(part.reading.p_value(part.rule.null) for part in p.parts if measured(part))
               for p in decidable}
    in_family = [k for k in p_claim if k in family]
    adjusted = dict(zip(in_family, holm([p_claim[k] for k in in_family])))
    levels = dict(zip(in_family, holm_levels([p_claim[k] for k in in_family], plan.alpha)))
    rows = []
    for p in primaries:
        rows.append(decide_claim(p, plan, adjusted.get(p.key), levels.get(p.key, 1 - plan.alpha),
                                 p_claim.get(p.key), len(in_family)))
        head = p.parts[0].reading if p.parts else None
        spans_plan = head is not None and (getattr(head, "groups", None) or 1) >= plan.seeds  # seeds in one table
        if short_seeds and p.key != "dense" and not spans_plan and rows[-1].verdict not in (NOT_RUN, NOT_TESTED):
            rows[-1].verdict = UNDECIDED
            rows[-1].note = (f"{len(short_seeds)} seed(s) analysed, the plan declares {plan.seeds}: "
                             f"{rows[-1].note}")
    return rows


def decide_claim(p: Primary, plan: ClaimsPlan, p_adjusted: float | None, level: float, p_claim: float | None,
                 family: int) -> ClaimRow:
    head = p.parts[0].reading if p.parts else None
    base = ClaimRow(p.claim, p.ours, p.against, UNDECIDED, "", key=p.key)
    if head is not None:
        base.value, base.low, base.high, base.units = head.value, head.low, head.high, head.units
        rule = p.parts[0].rule
        base.null, base.paper, base.claim_below = rule.null, rule.paper, rule.below
    secondary = f"; {p.secondary}" if p.secondary else ""
    if p.fixed is not None:
        base.verdict, base.note = p.fixed, p.why + secondary
        return base
    multiplier = (p_adjusted / p_claim) if p_adjusted is not None and p_claim else 1.0
    decisions = []
    for part in p.parts:
        if part.reading is None or not part.reading.has_interval:
            decisions.append(Decision(UNDECIDED, part.why or "no interval"))
            continue
        raw = part.reading.p_value(part.rule.null) if part.reading.has_interval else None
        decisions.append(decide(part.reading, part.rule, plan.min_units, plan.alpha,
                                None if raw is None else min(1.0, raw * multiplier), level))
    head_decision = decisions[0]
    base.p, base.p_adjusted = head_decision.p, head_decision.p_adjusted
    base.low_adjusted, base.high_adjusted = head_decision.low_adjusted, head_decision.high_adjusted
    method = f" ({head.method})" if head is not None else ""
    holm_text = (f"; Holm across {family} claims: p {format_number(p_claim)} -> {format_number(p_adjusted)}, interval "
                 f"at {100 * level:.2f}%" if p_adjusted is not None and family > 1 else "")
    labelled = [f"{part.label}: {d.verdict} ({d.note})" for part, d in zip(p.parts, decisions)]
    if p.combine == "agree":
        verdicts = {d.verdict for d in decisions}
        if len(verdicts) == 1:
            base.verdict = decisions[0].verdict
        elif UNDECIDED in verdicts:
            base.verdict = UNDECIDED
        else:
            base.verdict = DEPENDS
        base.note = "; ".join(labelled) + method + holm_text + secondary
        return base
    base.verdict, note = head_decision.verdict, head_decision.note + method
    controls = list(zip(p.parts[1:], decisions[1:]))
    if base.verdict in EFFECT_VERDICTS and controls:
        failed = [(part, d) for part, d in controls if d.verdict != REPRODUCED]
        if failed:
            reversed_ = [part for part, d in failed if d.verdict == NOT_REPRODUCED]
            base.verdict = NOT_REPRODUCED if reversed_ else UNDECIDED
            note += "; but " + "; ".join(
                f"{part.label}: {'the control goes further' if d.verdict == NOT_REPRODUCED else d.note}"
                for part, d in failed) + (": the effect is not specific to the scaffold" if reversed_ else
                                          ": a control may go as far, so the effect is not shown specific to it")
        else:
            note += "; beats " + " and ".join(part.label.replace("against ", "") for part, _ in controls)
    elif controls:
        note += "; controls: " + "; ".join(f"{part.label}: {d.verdict} ({d.note})" for part, d in controls)
    base.note = note + holm_text + secondary
    return base


def primary_rank(study: dict[str, Any], plan: ClaimsPlan | None = None) -> int | None:
    """The hybrid rank of the primary readings: the plan's rank, else the config's analysis rank, else the largest
    hybrid rank."""
    from scaffold_sae.roles import for_rank, kind_of

    chosen = plan.rank if plan is not None and plan.rank is not None else \
        setting(study.get("config", {}), "analyses.rank")
    if chosen is not None:
        return int(chosen)
    ranks = [for_rank(r) for r in study.get("saes", {}).values() if kind_of(r) == "hybrid"]
    return max(ranks) if ranks else None


def seeds_analyses(study: dict[str, Any]) -> list[tuple[int, Any]]:
    """Each analysed seed and its analyses JSON: seed 0's ("analyses"), then "seed_analyses" by seed."""
    more = study.get("seed_analyses") or {}
    return [(0, study.get("analyses")), *((int(key), more[key]) for key in sorted(more, key=int))]


def _typed_analyses(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict) or not data:
        return {}
    from scaffold_sae.analyses import AnalysisResults

    # an analysis not registered in this process stays plain JSON: its claim reads as not run
    return {name: value for name, value in AnalysisResults.from_json(data).results.items() if is_dataclass(value)}


def claims_section(rows: list[ClaimRow], analysis_seeds: int = 1, plan_line: str = "") -> Section:
    table = Table(["claim", "ours", "against", "verdict", "raw / Holm-adjusted", "why / what would decide"],
                  [[r.claim, r.ours, r.against, r.verdict, adjusted_text(r), r.note] for r in rows],
                  caption="Each claim is decided from the primary reading its plan declared before training, by two "
                          "questions: is there an effect (the interval excludes no effect) and does it reach the "
                          "paper's size. Intervals are 95% (paired bootstrap over contexts or documents, or over "
                          "seeds and contexts together); Holm's correction runs across the plan's family of primary "
                          "readings. An interval on fewer than the plan's minimum units decides nothing.", wrap=True)
    counts = {v: sum(r.verdict == v for r in rows if r.row == "primary") for v in VERDICTS}
    text = ("Each claim of the paper, our number and the verdict (details in the sections below): "
            + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + ".")
    if plan_line:
        text += f" Plan: {plan_line}."
    if any(r.row == "replication" for r in rows):
        text += " Replication rows (seeds added after the plan's count) are shown apart and decide nothing."
    if analysis_seeds > 1:
        text += (f" The analyses ran on {analysis_seeds} seeds: each claim is decided from one interval over seeds and "
                 "contexts (or documents) together; the analysis sections below are seed 0's (results.json holds "
                 "every seed's under seed_analyses).")
    return Section("Summary: the paper's claims", text, tables=[table])


def adjusted_text(row: ClaimRow) -> str:
    if row.p is None:
        return "-"
    raw = f"{interval_text(row.value, row.low, row.high)}, p {format_number(row.p)}"
    if row.p_adjusted is None or row.low_adjusted is None:
        return raw
    return (f"{raw} / {interval_text(row.value, row.low_adjusted, row.high_adjusted)}, "
            f"p {format_number(row.p_adjusted)}")


__all__ = ["ClaimRow", "Decision", "Rule", "Primary", "Part", "claim_rows", "claims_section", "decide",
           "decide_family", "combine_seeds", "primary_rank", "sample_to_decide", "seeds_analyses", "t_interval",
           "REPRODUCED", "SMALLER", "NOT_REPRODUCED", "UNDECIDED", "NOT_TESTED", "NOT_RUN", "DEPENDS"]
