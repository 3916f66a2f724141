"""Probing sources beyond the three built-in datasets: the labelled tasks of sae-probes, and the mean over many tasks.

sae-probes 0.4.2 (MIT; the dataset family behind SAEBench's `sparse_probing_sae_probes`) ships about 155 tasks as
zstd-compressed CSVs of (prompt, target) under `sae_probes/data/cleaned_data/`; its `probing_datasets_MASTER` table
gives each task's kind: 113 binary, 20 multiclass, 22 continuous. The wheel is fetched at first use and
sha256-checked like every other asset (fetch.py) and read straight out of the zip; it is never installed or
committed (the data come from mixed sources).

Names a study's `probe_datasets` can use, next to bbc_topic, sentiment and language:
- ``sae_probes:TASK``: one task by its file name, e.g. ``sae_probes:92_glue_sst2``;
- ``sae_probes:KIND`` or ``sae_probes:KIND>=N``: a declared subset, every task of that kind (binary or multiclass)
  with at least N examples, in task-number order; ``sae_probes:binary>=1000`` is 111 tasks.
A subset name stands for its tasks: `expand` turns a list of names into the tasks to probe, each then loaded by
`scaffold_sae.probing.load_dataset` like a built-in dataset (balanced over its classes, deterministic per seed).

`breadth` aggregates a probing result over the tasks of a source: per SAE and k the mean accuracy over tasks with
a 95% bootstrap interval over tasks (the tasks are the sampled unit, so the interval speaks to the choice of tasks,
not to test-document noise within one), each SAE's paired difference from the plain SAE the same way, and the
per-task table.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from scaffold_sae import fetch

SAE_PROBES = "sae_probes"
"""The source prefix of sae-probes task names (``sae_probes:...``)."""
WHEEL = "sae-probes"
DATA = "sae_probes/data/cleaned_data/"
MASTER = "sae_probes/data/probing_datasets_MASTER.csv.zst"
KINDS = {"Binary Classification": "binary", "Multiclass Classification": "multiclass",
         "Continuous Data": "continuous"}
CLASSIFICATION = ("binary", "multiclass")
_SUBSET = re.compile(r"^(binary|multiclass)(?:>=(\d+))?$")


class SourceError(ValueError):
    """A probing-source name that does not resolve."""


@dataclass(frozen=True)
class Task:
    name: str
    """The task's file name without .csv.zst, e.g. 92_glue_sst2."""
    kind: str
    """binary | multiclass | continuous."""
    examples: int
    """Rows of (prompt, target)."""

    @property
    def number(self) -> int:
        head = self.name.split("_", 1)[0]
        return int(head) if head.isdigit() else 10 ** 6


def _decompress(data: bytes) -> str:
    import zstandard

    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
        return reader.read().decode("utf-8", "replace")


def _rows(text: str) -> list[dict[str, str]]:
    csv.field_size_limit(1 << 30)
    return list(csv.DictReader(io.StringIO(text)))


@functools.lru_cache(maxsize=4)
def _index(sha256: str) -> tuple[Task, ...]:
    """The tasks of the pinned wheel with this sha256 (once per process: it decompresses every file)."""
    import zipfile

    with zipfile.ZipFile(fetch.wheel(WHEEL)) as archive:
        kinds = {}
        for row in _rows(_decompress(archive.read(MASTER))):
            save = (row.get("Dataset save name") or "").rsplit("/", 1)[-1]
            if save.endswith(".csv") and row.get("Data type") in KINDS:
                kinds[save[:-4]] = KINDS[row["Data type"]]
        tasks = []
        for member in archive.namelist():
            if member.startswith(DATA) and member.endswith(".csv.zst"):
                name = member[len(DATA):-len(".csv.zst")]
                text = _decompress(archive.read(member))
                tasks.append(Task(name, kinds.get(name, "unknown"), len(_rows(text))))
    return tuple(sorted(tasks, key=lambda t: (t.number, t.name)))


def tasks() -> list[Task]:
    """Every sae-probes task with its kind and size, in task-number order (fetches the wheel at first use). Counting
    the rows decompresses all 155 files (~10 s), so the index is kept next to the wheel, once per pinned version."""
    pin = fetch.WHEELS[WHEEL]
    path = fetch.home() / "indexes" / f"{WHEEL}-{pin.version}-{pin.sha256[:12]}.json"
    if path.exists():
        try:
            return [Task(**t) for t in json.loads(path.read_text())]
        except (ValueError, TypeError):
            pass  # a damaged index is rebuilt
    found = list(_index(pin.sha256))
    fetch.atomic_write_text(path, json.dumps([asdict(t) for t in found]))
    return found


def subset(spec: str) -> list[Task]:
    """The tasks of a declared subset ``KIND`` or ``KIND>=N`` (KIND binary or multiclass), in task-number order."""
    match = _SUBSET.match(spec.replace(" ", ""))
    if match is None:
        raise SourceError(f"{SAE_PROBES}:{spec} is not a task or subset: name a task (e.g. {SAE_PROBES}:92_glue_sst2) "
                          f"or a subset KIND>=N with KIND binary or multiclass (e.g. {SAE_PROBES}:binary>=1000)")
    kind, least = match.group(1), int(match.group(2) or 0)
    return [t for t in tasks() if t.kind == kind and t.examples >= least]


def is_source_name(name: str) -> bool:
    return name.startswith(f"{SAE_PROBES}:")


def expand(names: list[str]) -> list[str]:
    """Probing dataset names with every subset name replaced by its tasks' names (order kept, duplicates dropped);
    built-in names and single tasks pass through."""
    out: list[str] = []
    for name in names:
        rest = name[len(SAE_PROBES) + 1:] if is_source_name(name) else None
        if rest is not None and _SUBSET.match(rest.replace(" ", "")):
            chosen = subset(rest)
            if not chosen:
                raise SourceError(f"{name} selects no task: lower the minimum number of examples")
            out += [f"{SAE_PROBES}:{t.name}" for t in chosen]
        else:
            out.append(name)
    return list(dict.fromkeys(out))


def load(name: str, n_docs: int = 250, seed: int = 0):
    """The sae-probes task ``sae_probes:TASK`` as a LabelledDataset: up to n_docs prompts balanced over its targets
    (classes in sorted order of the target text), deterministic per seed."""
    from scaffold_sae.probing import _balanced

    task_name = name[len(SAE_PROBES) + 1:] if is_source_name(name) else name
    if _SUBSET.match(task_name.replace(" ", "")):
        raise SourceError(f"{name} is a subset of tasks, not one task: pass the names from "
                          f"scaffold_sae.probing_sources.expand([{name!r}])")
    task = next((t for t in tasks() if t.name == task_name), None)
    if task is None:
        raise SourceError(f"unknown sae-probes task {task_name!r}: see scaffold_sae.probing_sources.tasks() for the "
                          f"{len(tasks())} names, or use a subset such as {SAE_PROBES}:binary>=1000")
    if task.kind not in CLASSIFICATION:
        raise SourceError(f"sae-probes task {task_name!r} is {task.kind}, not a classification task: probing needs "
                          f"binary or multiclass labels")
    by_class: dict[str, list[str]] = {}
    for row in _rows(_decompress(fetch.read_member(WHEEL, f"{DATA}{task_name}.csv.zst"))):
        by_class.setdefault(row["target"], []).append(row["prompt"])
    return _balanced(name, by_class, n_docs, seed)


# ----------------------------------------------------------------------------------------------------------
# The mean over tasks
# ----------------------------------------------------------------------------------------------------------


@dataclass
class TaskMean:
    """Mean over tasks of one feature set's sparse-probing accuracy at one k."""

    features: str
    rank: int | None
    k: int
    tasks: int
    mean: float
    low: float
    """95% percentile bootstrap interval over tasks."""
    high: float


@dataclass
class TaskMeanDifference:
    """Mean over tasks of an SAE's accuracy minus the baseline's (the same tasks and test documents)."""

    sae: str
    baseline: str
    k: int
    tasks: int
    mean: float
    low: float
    """95% percentile bootstrap interval over tasks."""
    high: float
    better: int
    """Tasks whose own paired interval lies above 0."""
    worse: int
    """Tasks whose own paired interval lies below 0."""
    verdict: str
    """better / worse when the interval over tasks lies above / below 0, else undecided."""


@dataclass
class Breadth:
    """Sparse probing over the tasks of one source."""

    source: str
    tasks: list[str]
    means: list[TaskMean] = field(default_factory=list)
    differences: list[TaskMeanDifference] = field(default_factory=list)
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    """task -> 'FEATURES@k' -> accuracy (mean over splits)."""


def mean_interval(values: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of `values` and its 95% percentile bootstrap interval (values resampled with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        raise SourceError("no task to average")
    draws = np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))
    low, high = np.percentile(values[draws].mean(1), [2.5, 97.5])
    return float(values.mean()), float(low), float(high)


def breadth(result, source: str = SAE_PROBES, n_boot: int = 2000, seed: int = 0) -> Breadth:
    """Aggregate a probing result (scaffold_sae.analyses.probing.ProbingResult, or its JSON dict) over the datasets
    whose name starts with ``source:``: the mean over tasks with an interval over tasks, and the per-task table."""
    sparse = [_as_dict(s) for s in _field(result, "sparse")]
    paired = [_as_dict(p) for p in _field(result, "paired")]
    prefix = f"{source}:"
    names = list(dict.fromkeys(s["dataset"] for s in sparse if s["dataset"].startswith(prefix)))
    out = Breadth(source, names)
    if not names:
        return out
    by_key: dict[tuple[str, int], dict[str, float]] = {}
    ranks: dict[str, int | None] = {}
    for s in sparse:
        if s["dataset"] in names:
            by_key.setdefault((s["features"], int(s["k"])), {})[s["dataset"]] = float(s["accuracy"]["value"])
            ranks[s["features"]] = s["rank"]
            out.per_task.setdefault(s["dataset"], {})[f"{s['features']}@{int(s['k'])}"] = float(s["accuracy"]["value"])
    for (feat, k), accs in by_key.items():
        values = np.array([accs[n] for n in names if n in accs])
        out.means.append(TaskMean(feat, ranks[feat], k, len(values), *mean_interval(values, n_boot, seed)))
    diffs: dict[tuple[str, str, int], list[dict]] = {}
    for p in paired:
        if p["dataset"] in names:
            diffs.setdefault((p["sae"], p["baseline"], int(p["k"])), []).append(p)
    for (sae, base, k), items in diffs.items():
        values = np.array([float(p["difference"]["value"]) for p in items])
        mean, low, high = mean_interval(values, n_boot, seed)
        verdict = "better" if low > 0 else "worse" if high < 0 else "undecided"
        out.differences.append(TaskMeanDifference(
            sae, base, k, len(values), mean, low, high,
            sum(float(p["difference"]["low"]) > 0 for p in items),
            sum(float(p["difference"]["high"]) < 0 for p in items), verdict))
    return out


def _field(result, name: str) -> list:
    return result[name] if isinstance(result, dict) else getattr(result, name)


def _as_dict(item) -> dict:
    from dataclasses import is_dataclass

    return asdict(item) if is_dataclass(item) else item


def breadth_sections(summary: Breadth, ks: list[int] | None = None):
    """Report sections: the means over tasks, the paired differences, and the per-task table (at `ks`, default all)."""
    from scaffold_sae.report import Section, Table, format_number

    if not summary.tasks:
        return []
    chosen = sorted({m.k for m in summary.means} if ks is None else set(ks))

    def cell(mean, low, high):
        return f"{format_number(mean)} [{format_number(low)}, {format_number(high)}]"

    means = Table(["features", "rank", "k", "tasks", "mean accuracy [95% interval over tasks]"],
                  [[m.features, format_number(m.rank), m.k, m.tasks, cell(m.mean, m.low, m.high)]
                   for m in summary.means if m.k in chosen])
    diffs = Table(["SAE", "minus", "k", "tasks", "mean difference [95% interval over tasks]", "tasks better",
                   "tasks worse", "verdict"],
                  [[d.sae, d.baseline, d.k, d.tasks, cell(d.mean, d.low, d.high), d.better, d.worse, d.verdict]
                   for d in summary.differences if d.k in chosen])
    columns = sorted({c for row in summary.per_task.values() for c in row if int(c.rsplit("@", 1)[1]) in chosen})
    per_task = Table(["task", *columns], [[t, *(format_number(summary.per_task[t].get(c)) for c in columns)]
                                          for t in summary.tasks])
    text = (f"k-sparse probing on {len(summary.tasks)} {summary.source} tasks. The interval is a percentile bootstrap "
            f"over tasks (the tasks resampled): it covers the choice of tasks, not test-document noise within one; "
            f"'tasks better / worse' count the tasks whose own paired interval over test documents excludes 0.")
    return [Section(f"Probing breadth: {summary.source}", text, [means, diffs]),
            Section(f"Probing breadth: {summary.source}, per task", "", [per_task])]


def breadth_markdown(path: str, ks: list[int] | None = None) -> str:
    """The breadth sections (at `ks`) of every probing result in a results.json, a table.json or an experiment's
    summary.json, as Markdown: ``python -m scaffold_sae.probing_sources results/<slug>/summary.json 5``."""
    from pathlib import Path

    from scaffold_sae.report import render_markdown

    data = json.loads(Path(path).read_text())
    runs = data["runs"] if "runs" in data else {Path(path).name: data}
    sections = []
    for name, run in runs.items():
        probing = ((run or {}).get("analyses") or {}).get("probing")
        if probing:
            sections += breadth_sections(breadth(probing), ks)
    text = render_markdown(f"Probing breadth of {path}", sections)
    return "\n".join(line for line in text.splitlines() if not line.startswith("Plots are in report.html")) + "\n"


if __name__ == "__main__":
    import sys

    print(breadth_markdown(sys.argv[1], [int(k) for k in sys.argv[2:]] or None))
