"""Experiments as data: `scaffold-sae experiment run experiments/<slug>.yaml | list | report`.

An experiment is one YAML file in experiments/: its slug (the folder name under results/, naming the question), the
question, the code it had in the lab notebook (A, H17, ...), the readings it declares before it runs (`primary`:
which claim, sample sizes, seeds), the experiments whose SAEs and activation cache it reuses (`depends_on`), and
a study config (`study`: the StudyConfig tree) and/or analyses on saved SAEs at sample sizes of their own
(`analyse`: scaffold_sae.saved_analyses), SAEs trained apart from a study as `scaffold-sae train` trains them
(`train`: e.g. further seeds with their own data order), or, for an experiment not yet expressed that way,
`legacy`: the shell script that produced its record.

`run` runs the study into the ignored runs/<slug>/ (each stage reuses what an earlier run finished; a finished
experiment whose study config is unchanged is not touched), after running its dependencies and linking the SAEs
they trained that this study would train identically; then it writes results/<slug>/summary.json (scaffold_sae.
summary: small, deterministic) and the report's figures. `list` shows every experiment and whether its summary
exists. `report` writes results/RESULTS.md from the committed summaries: one table per claim of the paper, each
row one experiment's reading with its interval and sample size, and the hand-written reading of each claim from
results/readings.md; and docs/experiments.md, the table of slugs, questions and old codes.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from scaffold_sae.config import ConfigError, build, field_docs, load_config_file
from scaffold_sae.fetch import atomic_write_text
from scaffold_sae.summary import check_size, dumps, slim_results

SLUG = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
ACTIONS = ("run", "list", "report")


@dataclass
class TrainStep:
    """SAEs trained apart from a study, exactly as `scaffold-sae train` trains them (e.g. further seeds, each with its
    own initialisation and data order), on the activation cache of an experiment."""

    name: str
    """Folder under runs/<slug>/; the SAEs land in runs/<slug>/<name>/saes/, and an analyse step names them
    <slug>/<name>/<SAE>."""
    cache_of: str
    """The experiment whose activation cache (runs/<cache_of>/cache) they train on: this one or one it depends on."""
    settings: dict[str, Any] = field(default_factory=dict)
    """`scaffold-sae train` keys: arch, width, k, ranks, encoder_input, scaffold_centred, tokens, batch_size, seed,
    ..."""


@dataclass
class AnalyseStep:
    """Analyses on SAEs an experiment saved (scaffold_sae.saved_analyses), at sample sizes of their own."""

    of: str
    """The experiment whose SAEs (runs/<of>/saes/) are analysed: this one's slug or one it depends on."""
    analyses: list[str]
    """Registered analyses to run, e.g. [ablation_table] or [probing]."""
    name: str = ""
    """The run's folder under runs/<slug>/ and its key in the summary (<name>/table.json); empty: table.json."""
    saes: list[str] = field(default_factory=list)
    """The SAEs (directory names in runs/<of>/saes/, <slug>/<name> for one that another experiment it depends on
    saved, or <slug>/<train step>/<name> for one a train step saved) to analyse, one of them the plain SAE; empty:
    all of `of`'s."""
    eval_tokens: int | None = None
    """Held-out tokens to pack (more CE contexts than the study had); None: the study's."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Keys of the config tree put on top of the study's (e.g. analyses.ce_tokens: 25600)."""


@dataclass
class Series:
    """A reading over training seeds assembled from runs already kept in summaries (seed 0 first), decided by the
    claims engine under a plan declared here: the first `seeds` runs are primary, any further runs (seeds added
    after a look at the data) form a replication row of their own."""

    name: str
    """The series' name in RESULTS.md."""
    runs: list[str]
    """Runs as <slug>/<run key in its summary.json>, e.g. causal-200ctx-grid-gemma3/c24/table.json; seed 0 first."""
    seeds: int
    """Seeds the experiment declared before its first look (claims.seeds)."""
    plan: dict[str, Any] = field(default_factory=dict)
    """Further claims-plan fields of the primary reading (e.g. causal_operator: zero, causal_positions: all)."""
    claims: list[str] = field(default_factory=list)
    """The claims this series reads (dense, structure, causal, redundancy, topic, probing); empty: every one it can."""
    saes: str = ""
    """Run (<slug>/<run key>) whose "saes" records go with the series (the probing claim names its SAEs by them)."""
    config: dict[str, Any] = field(default_factory=dict)
    """Study settings the runs were made under that the engine reads (e.g. sae: {scaffold_init: random})."""


@dataclass
class Experiment:
    """One experiment file (experiments/<slug>.yaml)."""

    slug: str
    """The experiment's name: lower-case words joined by hyphens, naming its question; also its results/ folder."""
    question: str
    """The question it answers, in one sentence."""
    code: str = "-"
    """Its code in the lab notebook (results/notebook.md), e.g. H17; '-' if it had none."""
    study: dict[str, Any] | None = None
    """The study it runs: a StudyConfig tree (harvest, sae, train, analyses, browse), as in a `scaffold-sae study
    --config` file; None when it runs no study of its own."""
    depends_on: list[str] = field(default_factory=list)
    """Slugs of experiments whose trained SAEs (and activation cache) this one reuses where its own study would
    train them identically; they run first."""
    primary: dict[str, Any] = field(default_factory=dict)
    """The readings declared before the run: claim, sample sizes, seeds (copied into the summary)."""
    train: list[TrainStep] = field(default_factory=list)
    """SAEs trained apart from the study (as `scaffold-sae train` trains them); after the study, before the analyses."""
    analyse: list[AnalyseStep] = field(default_factory=list)
    """Analyses on saved SAEs (this study's or a dependency's), each into its own run; after the study, if any."""
    series: list[Series] = field(default_factory=list)
    """Readings over seeds assembled from kept runs (this experiment's and others'), decided under their own plan."""
    legacy: str | None = None
    """For an experiment not yet runnable from this file: the script (relative to the repository) that ran it."""
    path: Path | None = None

    @property
    def runnable(self) -> bool:
        return self.legacy is None


@dataclass
class ExperimentCommand:
    """`scaffold-sae experiment ACTION [PATH]`."""

    action: str
    """run (one experiment file), list (every experiment and whether it is done) or report (results/RESULTS.md and
    docs/experiments.md from the summaries)."""
    path: str | None = None
    """The experiment file for `run` (experiments/<slug>.yaml)."""
    experiments: str = "experiments"
    """Folder of the experiment files."""
    results: str = "results"
    """Folder of the committed summaries (results/<slug>/summary.json), RESULTS.md and readings.md."""
    runs: str = "runs"
    """Folder the studies run into (runs/<slug>/; not committed)."""
    docs: str = "docs"
    """Folder that `report` writes experiments.md into."""
    progress: bool = True
    """Show progress bars."""


# ---------------------------------------------------------------------------------------------- experiment files


def load_experiment(path: str | Path) -> Experiment:
    """An experiment file, checked: known keys, a slug that matches the file name, a study or a legacy script."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiment file; `scaffold-sae experiment list` shows the experiments")
    data = load_config_file(path)
    known = [f.name for f in fields(Experiment) if f.name != "path"]
    for key in data:
        if key not in known:
            import difflib

            near = difflib.get_close_matches(key, known, n=1)
            raise ConfigError(f"{path}: unknown key {key!r}" + (f"; did you mean {near[0]!r}?" if near else
                                                                f"; valid keys: {', '.join(known)}"))
    for key in ("slug", "question"):
        if not data.get(key):
            raise ConfigError(f"{path}: {key} is missing; every experiment file names its slug and its question")
    steps = _entries(AnalyseStep, data.get("analyse"), path, "analyse step", "of and analyses")
    trains = _entries(TrainStep, data.get("train"), path, "train step", "name, cache_of and settings")
    series = _entries(Series, data.get("series"), path, "series", "name, runs and seeds")
    exp = Experiment(**{**data, "code": str(data.get("code", "-")), "depends_on": list(data.get("depends_on") or []),
                        "primary": dict(data.get("primary") or {}), "analyse": steps, "series": series, "train": trains,
                        "path": path})
    if not SLUG.match(exp.slug) or path.stem != exp.slug:
        raise ConfigError(f"{path}: slug {exp.slug!r} must be lower-case words joined by hyphens and equal the file "
                          f"name ({path.stem!r})")
    if (exp.study is None and not exp.analyse) == (exp.legacy is None):
        raise ConfigError(f"{path}: give either `study` and/or `analyse` (what it runs) or `legacy` (the script that "
                          "ran it)")
    for step in exp.analyse:
        if step.of not in (exp.slug, *exp.depends_on):
            raise ConfigError(f"{path}: analyse step of {step.of!r}: name this experiment or one in depends_on")
    for train in exp.train:
        if train.cache_of not in (exp.slug, *exp.depends_on):
            raise ConfigError(f"{path}: train step {train.name!r} trains on the cache of {train.cache_of!r}: name "
                              "this experiment or one in depends_on")
    if exp.train and not exp.analyse:
        raise ConfigError(f"{path}: train steps without an analyse step record nothing: add the analyses they are for")
    return exp


def _entries(cls, items, path: Path, what: str, needs: str) -> list:
    """The list under one key of an experiment file, each entry built as `cls` (errors name the entry)."""
    out = []
    for i, item in enumerate(items or []):
        try:
            out.append(build(cls, item, where=f" in {path} ({what} {i})"))
        except TypeError:
            raise ConfigError(f"{path}: {what} {i} must be a mapping with {needs}") from None
    return out


def all_experiments(folder: str | Path = "experiments") -> dict[str, Experiment]:
    """Every experiment file in `folder`, by slug."""
    return {exp.slug: exp for exp in (load_experiment(p) for p in sorted(Path(folder).glob("*.yaml")))}


def study_config(exp: Experiment):
    """The experiment's StudyConfig (validated)."""
    from scaffold_sae.study import StudyConfig

    if exp.legacy is not None:
        raise ConfigError(f"{exp.path}: a legacy experiment: run `bash {exp.legacy}` (see its comments for what it "
                          "needs first)")
    if exp.study is None:
        raise ConfigError(f"{exp.path}: has no study")
    return build(StudyConfig, exp.study, where=f" in {exp.path}").validate()


HARVEST_FIELDS = ("model", "layer", "corpus", "ctx_len", "train_tokens", "sink_factor")
"""The harvest settings an activation cache depends on (with the study's seed)."""


def _harvest_key(cfg) -> tuple:
    """The harvest settings of a study with an embedded model's default layer made explicit."""
    from scaffold_sae.models import EMBEDDED

    h = cfg.harvest
    layer = EMBEDDED[h.model].default_layer if h.layer is None and h.model in EMBEDDED else h.layer
    return (cfg.seed, layer, *(getattr(h, name) for name in HARVEST_FIELDS if name != "layer"))


def _same_harvest(a, b) -> bool:
    return _harvest_key(a) == _harvest_key(b)


SCAFFOLD_ONLY = ("scaffold_init", "scaffold_tied", "scaffold_centred", "scaffold_lr_mult", "encoder_input")
"""SAEConfig fields that only a scaffold (rank > 0) uses: without one, the residual the encoder would see is x."""


def _sae_keys(cfg) -> dict[str, str]:
    """Each SAE of a study by what determines its training (its SAEConfig with the seed made explicit and, for a
    plain SAE, the scaffold settings it does not use left out; and the training run's settings) -> its directory
    name."""
    from scaffold_sae.trainer import sae_names

    members = cfg.members()
    train = json.dumps(asdict(cfg.train_config()), sort_keys=True, default=str)
    keys = {}
    for member, name in zip(members, sae_names([m.cfg for m in members])):
        sae = asdict(member.cfg)
        sae["seed"] = cfg.seed if sae["seed"] is None else sae["seed"]
        if sae["rank"] == 0:
            for unused in SCAFFOLD_ONLY:
                sae.pop(unused, None)
        keys[json.dumps([sae, train], sort_keys=True, default=str)] = name
    return keys


def link_dependencies(exp: Experiment, cfg, experiments: dict[str, Experiment], runs: Path):
    """Link into runs/<slug>/saes/ every SAE a dependency saved that this study would train identically (same
    config, seed, training settings and cache), and point the study at the dependency's cache when it would harvest
    the same one; returns the (possibly updated) config. A dependency's SAE trained in lockstep with others is the
    one trained alone (tests/test_trainer.py), so a linked SAE is the SAE this study would have trained."""
    from dataclasses import replace

    out = runs / exp.slug / "saes"
    mine = _sae_keys(cfg)
    for slug in exp.depends_on:
        dep = experiments[slug]
        if dep.study is None:
            continue
        dep_cfg = study_config(dep)
        if not _same_harvest(cfg, dep_cfg):
            continue
        dep_dir = runs / slug
        if cfg.harvest.cache_dir is None and (dep_dir / "cache").is_dir() and dep_cfg.harvest.cache_dir is None:
            cfg = replace(cfg, harvest=replace(cfg.harvest, cache_dir=(dep_dir / "cache").as_posix()))
        for key, dep_name in _sae_keys(dep_cfg).items():
            source = dep_dir / "saes" / dep_name
            if key in mine and (source / "scaffold_sae.json").is_file():
                target = out / mine[key]
                if not target.exists():
                    out.mkdir(parents=True, exist_ok=True)
                    target.symlink_to(source.resolve(), target_is_directory=True)
    return cfg


# ---------------------------------------------------------------------------------------------- run


def finished(exp: Experiment, runs: Path) -> bool:
    """Whether an experiment's run in runs/<slug>/ finished (its study's results and every analyse step's table)."""
    out = runs / exp.slug
    return ((exp.study is None or (out / "report" / "results.json").is_file())
            and all((out / (step.name or ".") / "table.json").is_file() for step in exp.analyse)
            and all((out / step.name / "step.json").is_file() for step in exp.train))


def run_experiment(path: str | Path, experiments_dir: str | Path = "experiments", results: str | Path = "results",
                   runs: str | Path = "runs", progress: bool = True, _seen: tuple[str, ...] = ()) -> Path:
    """Run one experiment (its dependencies first) and write results/<slug>/summary.json; returns that path.
    A finished study or analyse step whose settings are unchanged is not rerun, only summarised again."""
    exp = load_experiment(path)
    if exp.legacy is not None:
        study_config(exp)  # raises: how to run it
    experiments = all_experiments(experiments_dir)
    runs, results = Path(runs), Path(results)
    for slug in exp.depends_on:
        if slug not in experiments:
            raise ConfigError(f"{exp.path}: depends_on {slug!r}, which has no file in {experiments_dir}/")
        if slug in _seen:
            raise ConfigError(f"{exp.path}: depends_on forms a cycle: {' -> '.join((*_seen, slug))}")
        dep = experiments[slug]
        if not finished(dep, runs):
            if not dep.runnable:
                raise ConfigError(f"{exp.path}: depends on the legacy experiment {slug}: run `bash {dep.legacy}` "
                                  "first")
            run_experiment(dep.path, experiments_dir, results, runs, progress, (*_seen, exp.slug))
    records = {}
    if exp.study is not None:
        records["results.json"] = run_study_of(exp, experiments, runs, progress)
    for train in exp.train:
        run_train_step(exp, train, runs, progress)
    for step in exp.analyse:
        key = f"{step.name}/table.json" if step.name else "table.json"
        records[key] = run_step(exp, step, runs, progress)
    figures = runs / exp.slug / "report" if exp.study is not None else None
    return write_summary(exp, records, results / exp.slug, figures=figures)


def run_study_of(exp: Experiment, experiments: dict[str, Experiment], runs: Path, progress: bool) -> dict[str, Any]:
    """The experiment's study in runs/<slug>/ (its report in report/), reusing its dependencies' SAEs and cache."""
    from scaffold_sae.study_report import write_report
    from scaffold_sae.study import browse_section, run_study, threshold_section

    cfg = link_dependencies(exp, study_config(exp), experiments, runs)
    out = runs / exp.slug
    report_dir = out / "report"
    stamp = out / "experiment.json"
    settings = json.dumps({"study": asdict(cfg)}, sort_keys=True, default=str)
    if (report_dir / "results.json").is_file() and stamp.is_file() and stamp.read_text() == settings:
        return json.loads((report_dir / "results.json").read_text())
    study = run_study(cfg, out, progress=progress)
    extra = [threshold_section(study), browse_section(study, out, report_dir)]
    write_report(study, report_dir, sections=[s for s in extra if s is not None])
    atomic_write_text(stamp, settings)
    return study


def run_step(exp: Experiment, step: AnalyseStep, runs: Path, progress: bool) -> dict[str, Any]:
    """One analyse step: runs/<slug>/<name>/ gets study_config.json and links to the chosen SAEs of runs/<of>/,
    then scaffold_sae.saved_analyses writes its table.json there."""
    from scaffold_sae.saved_analyses import analyse_saved

    source, out = runs / step.of, runs / exp.slug / (step.name or ".")
    saved = sorted(p.name for p in (source / "saes").iterdir() if (p / "scaffold_sae.json").is_file()) \
        if (source / "saes").is_dir() else []
    chosen = {}
    for entry in step.saes or saved:
        slug, _, name = entry.rpartition("/")
        if slug and slug.split("/")[0] not in (exp.slug, *exp.depends_on):
            raise ConfigError(f"{exp.path}: analyse step {step.name or '(table.json)'}: {entry} names {slug}, which "
                              "is not in depends_on")
        chosen[name] = runs / (slug or step.of) / "saes" / name
    missing = [str(path) for path in chosen.values() if not (path / "scaffold_sae.json").is_file()]
    if missing:
        raise ConfigError(f"{exp.path}: analyse step {step.name or '(table.json)'}: no saved SAE {', '.join(missing)}"
                          ": run the experiment that trains it first")
    stamp = out / "step.json"
    settings = json.dumps(asdict(step), sort_keys=True, default=str)
    if (out / "table.json").is_file() and stamp.is_file() and stamp.read_text() == settings:
        return json.loads((out / "table.json").read_text())
    (out / "saes").mkdir(parents=True, exist_ok=True)
    for name, path in chosen.items():
        link = out / "saes" / name
        if not link.exists():
            link.symlink_to(path.resolve(), target_is_directory=True)
    if (source / "study_config.json").resolve() != (out / "study_config.json").resolve():  # an unnamed step of its own study
        shutil.copyfile(source / "study_config.json", out / "study_config.json")
    table = analyse_saved(out, out, step.analyses, step.settings, step.eval_tokens, progress=progress,
                          command={k: v for k, v in asdict(step).items() if v not in (None, [], {}, "")},
                          title=exp.question)
    atomic_write_text(stamp, settings)
    return table


def run_train_step(exp: Experiment, step: TrainStep, runs: Path, progress: bool) -> list[Path]:
    """One train step: `scaffold-sae train` with the step's settings on runs/<cache_of>/cache into
    runs/<slug>/<name>/saes/ (resuming from its checkpoints); a finished step whose settings are unchanged is kept."""
    from scaffold_sae.trainer import train_from_config

    out = runs / exp.slug / step.name
    cache = runs / step.cache_of / "cache"
    if not cache.is_dir():
        raise ConfigError(f"{exp.path}: train step {step.name}: no activation cache {cache}: run {step.cache_of} "
                          "first")
    stamp = out / "step.json"
    settings = json.dumps(asdict(step), sort_keys=True, default=str)
    if stamp.is_file() and stamp.read_text() == settings:
        return sorted(p for p in (out / "saes").iterdir() if (p / "scaffold_sae.json").is_file())
    for key in ("cache", "out"):
        if key in step.settings:
            raise ConfigError(f"{exp.path}: train step {step.name}: {key} is the step's own (runs/<cache_of>/cache, "
                              "runs/<slug>/<name>/saes): leave it out of settings")
    paths = train_from_config({**step.settings, "cache": cache.as_posix(), "out": (out / "saes").as_posix(),
                               "progress": progress})
    atomic_write_text(stamp, settings)
    return paths


def summary_of(exp: Experiment, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The summary.json of an experiment from its runs' results (name -> results dict)."""
    return {"experiment": {"slug": exp.slug, "code": exp.code, "question": exp.question, "primary": exp.primary,
                           "depends_on": exp.depends_on},
            "runs": {name: slim_results(data) for name, data in runs.items()}}


def write_summary(exp: Experiment, runs: dict[str, dict[str, Any]], folder: Path, figures: Path | None = None) -> Path:
    """results/<slug>/summary.json of an experiment's runs (name -> results), plus the report's figure files (SVG,
    PNG)."""
    text = dumps(summary_of(exp, runs))
    check_size(text, str(folder / "summary.json"))
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "summary.json", text)
    if figures is not None and figures.is_dir():
        for figure in sorted(figures.rglob("*")):
            if figure.suffix in (".svg", ".png"):
                target = folder / "figures" / figure.relative_to(figures)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(figure, target)
    return folder / "summary.json"


def load_summary(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


# ---------------------------------------------------------------------------------------------- list


def experiment_rows(experiments_dir: str | Path = "experiments", results: str | Path = "results",
                    runs: str | Path = "runs") -> list[list[str]]:
    """[slug, code, status, how it runs] for every experiment: done (its summary is in results/), ran (its run
    finished in runs/ but the summary is not written) or not run; a YAML study or `legacy: <script>`."""
    rows = []
    for slug, exp in all_experiments(experiments_dir).items():
        if (Path(results) / slug / "summary.json").is_file():
            status = "done"
        elif exp.runnable and finished(exp, Path(runs)):
            status = "ran (no summary)"
        else:
            status = "not run"
        how = f"scaffold-sae experiment run {exp.path.as_posix()}" if exp.runnable else f"legacy: {exp.legacy}"
        rows.append([slug, exp.code, status, how])
    return rows


def format_rows(columns: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(columns, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [columns, *rows]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- report

CLAIMS = (("dense", "Dense latents"), ("structure", "Structure: the scaffold is the top PCs and massive dimensions"),
          ("causal", "Causal necessity"), ("redundancy", "Redundancy"), ("topic", "Topic probe"),
          ("probing", "Sparse probing"))
"""The paper's claims in the paper's order: (key in readings.md and in a claim's text, section title)."""


def claim_key(claim_text: str) -> str | None:
    text = claim_text.lower()
    return next((key for key, _ in CLAIMS if key in text), None)


def readings(path: str | Path) -> dict[str, str]:
    """results/readings.md: '## <claim key>' sections of hand-written reading, by key."""
    path = Path(path)
    if not path.is_file():
        return {}
    out: dict[str, list[str]] = {}
    key = None
    for line in path.read_text().splitlines():
        match = re.match(r"^## (\w+)\s*$", line)
        if match:
            key = match.group(1)
            out[key] = []
        elif key is not None:
            out[key].append(line)
    return {k: "\n".join(v).strip() for k, v in out.items()}


def claim_table_rows(results: str | Path, experiments: dict[str, Experiment]) -> dict[str, list[list[str]]]:
    """Per claim key: one row per experiment run that decides or reads it (not 'not run'): the experiment (linked),
    run, our number (interval and sample size included), what it is measured against, the verdict."""
    from scaffold_sae.claims import NOT_RUN, claim_rows

    table: dict[str, list[list[str]]] = {key: [] for key, _ in CLAIMS}
    for slug, exp in experiments.items():
        summary = load_summary(Path(results) / slug)
        if summary is None:
            continue
        for name, run in summary["runs"].items():
            if not isinstance(run, dict) or not ("analyses" in run or "saes" in run):
                continue
            for row in claim_rows(run):
                key = row.key or claim_key(row.claim)
                if key is None or row.verdict == NOT_RUN or row.ours == "-" or (key == "dense" and not run.get("saes")):
                    continue  # "-": the run did not measure the plan's reading (a series below may assemble it)
                where = "" if name == "results.json" else name.removesuffix("/table.json").removesuffix(".json")
                table[key].append([f"[{slug}]({slug}/) ({exp.code})", where or "-", _cell(row.ours),
                                   _cell(row.against), row.verdict])
        for series in exp.series:
            for row in series_rows(series, results):
                label = series.name + (" (replication)" if row.row == "replication" else "")
                table[row.key].append([f"[{slug}]({slug}/) ({exp.code})", _cell(label), _cell(row.ours),
                                       _cell(row.against), row.verdict])
    return table


def series_study(series: Series, results: str | Path) -> dict[str, Any]:
    """The results dict of a series: each run's analyses as one seed's (seed 0 first)."""
    def run(ref: str) -> dict[str, Any]:
        slug, _, key = ref.partition("/")
        summary = load_summary(Path(results) / slug)
        if summary is None or key not in summary["runs"]:
            raise ConfigError(f"series {series.name!r}: no run {key!r} in results/{slug}/summary.json")
        return summary["runs"][key]

    seeds = [run(ref).get("analyses", {}) for ref in series.runs]
    config = {**series.config, "sae": {**series.config.get("sae", {}), "seeds": len(seeds)}}
    return {"config": config, "saes": run(series.saes).get("saes", {}) if series.saes else {},
            "analyses": seeds[0], "seed_analyses": {str(i): a for i, a in enumerate(seeds) if i}}


def series_rows(series: Series, results: str | Path) -> list:
    """The claims engine's rows of a series (primary and replication) for the claims it reads."""
    from scaffold_sae.claims import NOT_RUN, claim_rows
    from scaffold_sae.plan import ClaimsPlan

    plan = build(ClaimsPlan, {**series.plan, "seeds": series.seeds}, where=f" in series {series.name!r}")
    rows = claim_rows(series_study(series, results), plan)
    return [r for r in rows if r.verdict != NOT_RUN and r.key != "dense" and (not series.claims or r.key in
                                                                                series.claims)]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def results_markdown(results: str | Path, experiments: dict[str, Experiment]) -> str:
    """results/RESULTS.md: per claim, the reading (results/readings.md) and the table of every experiment's row."""
    from scaffold_sae import across_models

    notes = readings(Path(results) / "readings.md")
    lines = ["# Results", "",
             "Generated by `scaffold-sae experiment report` from results/<slug>/summary.json and the hand-written "
             "readings in results/readings.md; do not edit by hand. Each row is one experiment's reading: its number "
             "with the 95% interval and the sample it rests on, what it is measured against, and the claims "
             "engine's verdict (`scaffold_sae.claims`). The experiments, their questions and their old codes: "
             "[docs/experiments.md](../docs/experiments.md); the full lab notebook: [notebook.md](notebook.md).", ""]
    rows = claim_table_rows(results, experiments)
    for key, title in CLAIMS:
        lines += [f"## {title}", ""]
        if notes.get(key):
            lines += [notes[key], ""]
        if rows[key]:
            lines += ["| experiment | run | ours (95% interval, n) | against | verdict |", "|---|---|---|---|---|"]
            lines += ["| " + " | ".join(r) + " |" for r in rows[key]]
        else:
            lines.append("No experiment reads this claim.")
        lines.append("")
    lines += across_models.markdown(results, experiments,
                                    across_models.load_declaration(Path(results) / across_models.DECLARATION))
    return "\n".join(lines)


def experiments_markdown(experiments: dict[str, Experiment]) -> str:
    """docs/experiments.md: every experiment's slug, old code, question and how it runs."""
    lines = ["# Experiments", "",
             "Generated by `scaffold-sae experiment report` from experiments/*.yaml. An experiment's slug names its "
             "question and its folder under results/; the code is its name in the lab notebook "
             "([results/notebook.md](../results/notebook.md)). Runnable: `scaffold-sae experiment run "
             "experiments/<slug>.yaml`; legacy: the script that ran it (not yet one study config).", "",
             "| slug | old code | question | runs with |", "|---|---|---|---|"]
    for slug, exp in sorted(experiments.items(), key=lambda item: _code_order(item[1].code)):
        how = "experiment run" if exp.runnable else f"legacy: `{exp.legacy}`"
        lines.append(f"| [{slug}](../results/{slug}/) | {exp.code} | {_cell(exp.question)} | {how} |")
    docs = field_docs(Experiment)
    lines += ["", "## An experiment file", "",
              "experiments/<slug>.yaml holds these keys (`scaffold-sae experiment run` checks them):", "",
              "| key | meaning |", "|---|---|"]
    lines += [f"| `{f.name}` | {_cell(docs.get(f.name, ''))} |" for f in fields(Experiment) if f.name != "path"]
    lines += ["", "`run` writes the study into runs/<slug>/ (not committed) and results/<slug>/summary.json "
              "(committed; `scaffold_sae.summary` says what it keeps); `report` regenerates results/RESULTS.md and "
              "this page. An `analyse` step holds these keys:", "", "| key | meaning |", "|---|---|"]
    steps = field_docs(AnalyseStep)
    lines += [f"| `{f.name}` | {_cell(steps.get(f.name, ''))} |" for f in fields(AnalyseStep)]
    trains = field_docs(TrainStep)
    lines += ["", "A `train` step holds these keys:", "", "| key | meaning |", "|---|---|"]
    lines += [f"| `{f.name}` | {_cell(trains.get(f.name, ''))} |" for f in fields(TrainStep)]
    return "\n".join(lines) + "\n"


def _code_order(code: str) -> tuple:
    match = re.match(r"^([A-Z]+)(\d*)", code)
    if not match:
        return ("~", 0, code)
    return (match.group(1), int(match.group(2) or 0), code)


def write_reports(experiments_dir: str | Path = "experiments", results: str | Path = "results",
                  docs: str | Path = "docs") -> list[Path]:
    """Write results/RESULTS.md and docs/experiments.md; returns their paths."""
    experiments = all_experiments(experiments_dir)
    paths = [Path(results) / "RESULTS.md", Path(docs) / "experiments.md"]
    atomic_write_text(paths[0], results_markdown(results, experiments))
    atomic_write_text(paths[1], experiments_markdown(experiments))
    return paths


# ---------------------------------------------------------------------------------------------- the command


def experiment_command(cmd: ExperimentCommand) -> None:
    """What `scaffold-sae experiment` does."""
    if cmd.action not in ACTIONS:
        raise ConfigError(f"experiment action {cmd.action!r} is unknown: choose run, list or report")
    if cmd.action == "run":
        if not cmd.path:
            raise ConfigError("experiment run needs the experiment file, e.g. scaffold-sae experiment run "
                              "experiments/demo.yaml")
        print(f"wrote {run_experiment(cmd.path, cmd.experiments, cmd.results, cmd.runs, cmd.progress)}")
    elif cmd.action == "list":
        print(format_rows(["slug", "code", "status", "runs with"],
                          experiment_rows(cmd.experiments, cmd.results, cmd.runs)))
    else:
        for path in write_reports(cmd.experiments, cmd.results, cmd.docs):
            print(f"wrote {path}")


def cli_run(command, values: dict, args) -> None:
    """The `experiment` entry of cli.COMMANDS."""
    experiment_command(build(ExperimentCommand, values))


__all__ = ["ACTIONS", "CLAIMS", "AnalyseStep", "TrainStep", "Series", "Experiment", "ExperimentCommand", "all_experiments",
           "claim_table_rows", "experiment_command", "experiment_rows", "experiments_markdown", "finished",
           "link_dependencies", "load_experiment", "load_summary", "readings", "results_markdown", "run_experiment",
           "run_step", "run_train_step", "run_study_of", "study_config", "summary_of", "write_reports", "write_summary"]
