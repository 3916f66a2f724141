"""`scaffold-sae` command line: the config is the CLI.

Every command is a few config dataclasses plus one Python call.  Its flags are generated from the dataclasses'
fields (help = the field's docstring and its default); a config tree (the study's) gives one flag per leaf, its
dotted path (``--train.lr``, ``--analyses.ablation_table.ablation_operators``), and a flat one ``--field-name``.
Flag values arrive as text and, like the values of a ``--config`` YAML/JSON file, become typed through
``config.build`` / ``config.coerce_field``.  This is the only module that uses argparse.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import time
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, NamedTuple

from . import distributed
from .browse import BrowseConfig, BrowseRun, browse_from_config, serve_site
from .cache import CacheInfoConfig, HarvestConfig, HarvestRun, cache_info, harvest_ranked, harvest_with
from .compare import CompareConfig, compare_results
from .diagnose import DiagnoseConfig, DiagnoseRun, diagnose_from_config
from .config import (LEGACY, ConfigError, annotation, build, coerce_field, default_value, field_docs, has_default,
                     load_config_file, lookup, merge, nearest_key, nest, node_type, reference, sequence_type,
                     show_value, tree_fields, tree_keys, tree_nodes)
from .distributed import end_rank_process, launched_by_torchrun
from .evals import CoreEvalConfig, run_core_eval
from .experiments import ExperimentCommand, cli_run as experiment_cli
from .faults import Interrupted, handle_signals
from .study_report import ReportConfig, report_from_results
from .sae import SAEConfig
from .saved_analyses import AnalyseRun, analyse_command
from .study import DEMO, StudyConfig, StudyRun, study_and_report, training_results, training_table
from .trainer import TrainConfig, TrainRun, train_from_config


@dataclass
class ConfigFile:
    """A YAML or JSON file of the command's config fields."""

    config: str | None = None
    """YAML or JSON file of this command's config fields (flags override it)."""


@dataclass
class Processes:
    """How many local processes run the command."""

    nproc: int | None = None
    """Run as N local processes through torch.distributed.run (for several nodes start
    `torchrun ... -m scaffold_sae COMMAND` yourself)."""


class FlagField(NamedTuple):
    """A field with a flag: the command's config class it is under, the dataclass declaring it, the field and its
    key (the field's name, or its dotted path in a config tree)."""

    config: type
    owner: type
    field: Field
    path: str


@dataclass
class Command:
    """One subcommand: the dataclasses its flags come from and the function that runs it."""

    name: str
    help: str
    configs: tuple[type, ...]
    run: Callable[["Command", dict, argparse.Namespace], object]
    description: str | None = None
    switches: dict[str, str] = field(default_factory=dict)
    """Bool field -> a flag without a value that sets it to the opposite of its default (progress: --no-progress).
    A field of a config tree keeps its dotted flag beside the switch."""
    aliases: dict[str, str] = field(default_factory=dict)
    """Field (its dotted path in a tree) -> a second flag name for it (n_tokens: --tokens)."""
    positional: tuple[str, ...] = ()
    """Fields given as positional arguments."""
    exclude: tuple[str, ...] = ()
    """Fields with no flag (internal, or config files only)."""
    defaults: dict[type, Any] = field(default_factory=dict)
    """Config class -> the instance whose values are this command's defaults (demo: DEMO); default: the class's."""

    def flag_fields(self) -> list[FlagField]:
        """Every field that has a flag or positional argument. A name two dataclasses share (train: SAEConfig.seed
        and TrainConfig.seed) takes its flag and help from the later one."""
        later = {}
        for cls in self.configs:
            for path, _, _ in tree_fields(cls):
                later[path] = cls
        return [FlagField(cls, owner, f, path) for cls in self.configs for path, owner, f in tree_fields(cls)
                if path not in self.exclude and later[path] is cls]

    def flags(self) -> list[str]:
        """Every flag of the command (for "did you mean")."""
        out = ["--help"]
        for flag in self.flag_fields():
            if flag.path not in self.positional:
                out += [_flag(flag.path), self.switches.get(flag.path, ""), self.aliases.get(flag.path, "")]
        return [f for f in dict.fromkeys(out) if f]

    def keys(self) -> list[str]:
        """Every key a --config file of this command may hold: leaves and sections of its config trees."""
        return list(dict.fromkeys(key for cls in self.configs for key in tree_keys(cls)))

    def default(self, flag: FlagField) -> Any:
        """The value a field takes when neither a flag nor the config file gives it (MISSING: required)."""
        base = self.defaults.get(flag.config)
        if base is None and any(node_type(flag.config, g) for g in fields(flag.config)):
            base = flag.config()
        if base is not None:
            return lookup(base, flag.path)
        return default_value(flag.field) if has_default(flag.field) else MISSING

    def check_file(self, data: dict, where: str) -> None:
        """One line naming the file and the fix for an unknown key or a value of the wrong type in a --config file."""
        owners = {}
        for cls in self.configs:
            for f in fields(cls):
                owners[f.name] = (cls, f)
        trees: dict[type, dict] = {}
        for key, value in data.items():
            if key not in owners:
                raise ConfigError(f"unknown config key {key!r}{where}: {nearest_key(self.keys(), key)}")
            cls, f = owners[key]
            if any(node_type(cls, g) for g in fields(cls)):
                trees.setdefault(cls, {})[key] = value
            else:
                coerce_field(key, value, annotation(f), where)
        for cls, values in trees.items():
            build(cls, values, where, base=self.defaults.get(cls))

    def values(self, args: argparse.Namespace) -> dict:
        """Key -> value: the --config file's values, then every flag given (as text) on top; config trees nested."""
        values: dict = {}
        if getattr(args, "config", None):
            values = nest(load_config_file(args.config))
            self.check_file(values, f" in {args.config}")
        flags = {flag.path: getattr(args, flag.path) for flag in self.flag_fields()
                 if flag.path != "config" and getattr(args, flag.path, None) is not None}
        return merge(values, nest(flags))

    def argv(self, args: argparse.Namespace) -> list[str]:
        """The flags of ``args`` again, for relaunching this command as several processes."""
        negations = {name: flag for name, flag in self.switches.items() if flag != _flag(name)}
        return distributed.cli_argv(args, negations=negations)


def _flag(path: str) -> str:
    """--train.lr for a leaf of a config tree (its key as written in a config file), --field-name for a flat field."""
    return "--" + path if "." in path else "--" + path.replace("_", "-")


def _metavar(annotation: str) -> str:
    sequence = sequence_type(annotation)
    if sequence:
        return "N,N,..." if sequence[1] == "int" else "VALUE"
    if "bool" in annotation:
        return "true|false"
    for kind, metavar in (("int", "N"), ("float", "X")):
        if annotation.startswith(kind):
            return metavar
    return "TEXT"


def add_flags(parser: argparse.ArgumentParser, command: Command) -> None:
    """One flag per field of the command's dataclasses (value None when not given), help = its docstring and
    default."""
    has_config_file = ConfigFile in command.configs
    groups: dict[str, argparse._ArgumentGroup] = {}
    about = {path: field_docs(owner).get(f.name, "") for cls in command.configs for path, owner, f in tree_nodes(cls)}
    top = parser
    for flag in command.flag_fields():
        f, path, default = flag.field, flag.path, command.default(flag)
        section = path.rpartition(".")[0]
        if section and section not in groups:  # one --help group per section of a config tree
            groups[section] = top.add_argument_group(section, about.get(section))
        parser = groups[section] if section else top
        shown = "required" if default is MISSING else f"default: {show_value(default)}"
        doc = f"{field_docs(flag.owner).get(f.name, '')} ({shown})".replace("%", "%%")
        kind = annotation(f)
        if path in command.positional:
            parser.add_argument(path, metavar=path.upper(), help=doc, **({} if default is MISSING else {"nargs": "?"}))
            continue
        if path in command.switches:
            switch = command.switches[path]
            text = doc if switch == _flag(path) else f"sets {path} to {str(not default).lower()}: {doc}"
            parser.add_argument(switch, dest=path, action="store_const", const=not default, default=None, help=text)
            if "." not in path:
                continue
        alias = command.aliases.get(path)
        names = [_flag(path)] + ([alias] if alias and alias != command.switches.get(path) else [])
        extra = {"nargs": "+"} if (sequence_type(kind) or ("", ""))[1] == "str" else {}
        parser.add_argument(*names, dest=path, default=None, metavar=_metavar(kind), help=doc,
                            required=default is MISSING and not has_config_file, **extra)


def legacy_aliases() -> dict[str, str]:
    """Dotted path -> the flag the study had before its config became a tree (--steps-tokens, --ranks, ...)."""
    leaves = {path for path, _, _ in tree_fields(StudyConfig)}
    return {new: "--" + old.replace("_", "-") for old, new in LEGACY.items() if new in leaves}


def _pick(values: dict, cls: type) -> dict:
    names = {f.name for f in fields(cls)}
    return {key: value for key, value in values.items() if key in names}


# ------------------------------------------------------------------------------------------ the commands


def _harvest(command: Command, values: dict, args: argparse.Namespace) -> None:
    cfg, run = build(HarvestConfig, _pick(values, HarvestConfig)), build(HarvestRun, _pick(values, HarvestRun))
    nproc = build(Processes, _pick(values, Processes)).nproc or 1
    if launched_by_torchrun():  # one rank of torchrun ... -m scaffold_sae harvest
        harvest_ranked(cfg, run)
    elif nproc > 1 and not run.repair:  # a repair runs in this one process
        distributed.launch("harvest", command.argv(args), nproc)
    else:
        print(harvest_with(cfg, run).summary())


def _cache_info(command: Command, values: dict, args: argparse.Namespace) -> None:
    print(cache_info(build(CacheInfoConfig, values)))


def _train(command: Command, values: dict, args: argparse.Namespace) -> None:
    nproc = build(Processes, {"nproc": values.pop("nproc")} if "nproc" in values else {}).nproc
    if nproc is not None and nproc != 1 and not launched_by_torchrun():
        distributed.launch("train", command.argv(args), nproc)
        return
    paths = train_from_config(values)
    if paths:  # rank 0 of a distributed run, or the one process
        print(training_table(training_results({path.name: path for path in paths})))
        print("\n".join(str(path) for path in paths))


def _eval(command: Command, values: dict, args: argparse.Namespace) -> None:
    from .report import format_number, format_summary_table

    cfg = build(CoreEvalConfig, values)
    result, out = run_core_eval(cfg)
    print(format_summary_table({Path(cfg.sae).name: result}))
    print("\n".join(f"{k:>20}: {format_number(v)}" for k, v in result.scalars().items()))
    print(f"wrote {out}")


def _print_paths(paths) -> None:
    print(f"wrote {paths.html}\n      {paths.markdown}\n      {paths.json}")


def _report(command: Command, values: dict, args: argparse.Namespace) -> None:
    _print_paths(report_from_results(build(ReportConfig, values)))


def _compare(command: Command, values: dict, args: argparse.Namespace) -> None:
    _print_paths(compare_results(build(CompareConfig, values)))


def _study(command: Command, values: dict, args: argparse.Namespace) -> None:
    run_names = {f.name for f in fields(StudyRun)} | {"config"}
    study_values = {key: value for key, value in values.items() if key not in run_names}
    cfg = build(StudyConfig, study_values, base=command.defaults.get(StudyConfig)).validate()
    run = build(StudyRun, _pick(values, StudyRun))
    out = Path(run.out or ("runs/demo" if command.name == "demo" else
                           f"runs/{Path(cfg.harvest.model).name}-L{cfg.harvest.layer}"))
    started = time.perf_counter()
    paths = study_and_report(cfg, out, progress=run.progress)
    print(f"\nreport: {paths.html}\n        {paths.markdown}\n        {paths.json}")
    print(f"total {time.perf_counter() - started:.0f} s")


def _analyse(command: Command, values: dict, args: argparse.Namespace) -> None:
    print(f"wrote {analyse_command(values)}")


def _browse(command: Command, values: dict, args: argparse.Namespace) -> None:
    run = build(BrowseRun, _pick(values, BrowseRun))
    index = browse_from_config(run, build(BrowseConfig, _pick(values, BrowseConfig)))
    print(f"wrote {index}")
    if run.serve is not None:
        serve_site(index.parent, run.serve)


def _diagnose(command: Command, values: dict, args: argparse.Namespace) -> None:
    result, out = diagnose_from_config(build(DiagnoseRun, _pick(values, DiagnoseRun)),
                                       build(DiagnoseConfig, _pick(values, DiagnoseConfig)))
    print(result.verdict)
    print(f"wrote {out / 'diagnosis.html'}")


COMMANDS = [
    Command("harvest", "cache a layer's residual-stream activations on a corpus",
            (HarvestRun, HarvestConfig, Processes), _harvest,
            description="Cache a layer's activations on a corpus, then print the cache summary.",
            switches={"overwrite": "--overwrite", "repair": "--repair"}, aliases={"n_tokens": "--tokens"},
            exclude=("slice_rank", "slice_count")),
    Command("cache-info", "verify an activation cache and print its summary", (CacheInfoConfig,), _cache_info,
            positional=("path",)),
    Command("train", "train SAEs (a baseline and hybrids) in lockstep on an activation cache",
            (TrainRun, ConfigFile, SAEConfig, TrainConfig, Processes), _train,
            description="Train one SAE per scaffold rank (or per entry of `saes` in --config) in lockstep from one "
                        "pass over an activation cache.  Flags override the config file.",
            switches={"progress": "--no-progress", "fast": "--slow", "until_converged": "--until-converged"},
            exclude=("saes",)),
    Command("eval", "core evaluation of a saved SAE on held-out tokens", (CoreEvalConfig,), _eval,
            description="L0, FVU, cosine, dead/dense latents, density histogram and spliced CE/KL scores of a saved "
                        "SAE on held-out contexts. Model and layer default to the SAE's saved metadata."),
    Command("report", "(re)write report.html / report.md / results.json from a results JSON", (ReportConfig,),
            _report, description="Regenerate the self-contained HTML report, its Markdown twin and results.json "
                                 "from a study's results.json (or one `scaffold-sae eval` JSON)."),
    Command("study", "run the scaffold study on any model and layer", (ConfigFile, StudyRun, StudyConfig), _study,
            description="Harvest, train the baseline and hybrids in lockstep, evaluate at matched L0, run the "
                        "analyses, write the report. Flags are the config tree flattened (--train.lr; docs/config.md); "
                        "the flags from before the tree (--ranks, --steps-tokens) still work. Flags override --config.",
            switches={"progress": "--no-progress", "train.until_converged": "--until-converged"},
            aliases=legacy_aliases()),
    Command("demo", "the study on the embedded default model (< 30 min on 2 CPU cores)",
            (ConfigFile, StudyRun, StudyConfig), _study,
            switches={"progress": "--no-progress", "train.until_converged": "--until-converged"},
            aliases=legacy_aliases(), defaults={StudyConfig: DEMO}),
    Command("analyse", "run analyses on SAEs a study already saved, at sample sizes of their own",
            (AnalyseRun, StudyConfig), _analyse,
            description="Run registered analyses (the causal ablation table by default) on every SAE in RUN/saes/ "
                        "against the plain SAE among them, with the run's stored study settings; the study's flags "
                        "given here (--analyses.ce_tokens 25600, --analyses.ablation_table.ablation_operators zero) "
                        "replace those settings, and the defaults shown are the study's, not the run's. Writes "
                        "OUT/table.json and OUT/report/.",
            switches={"progress": "--no-progress"}, positional=("run",)),
    Command("compare", "side-by-side report of several studies (e.g. two models)", (CompareConfig,), _compare,
            description="One report comparing the scaffold across studies: dense latents, structure, causality and "
                        "redundancy, read from each study's results.json."),
    Command("browse", "write a static feature-browser site for a saved SAE", (BrowseRun, BrowseConfig), _browse,
            description="One pass over held-out text; writes a self-contained site (open index.html from disk): a "
                        "sortable latent table, a page per latent and per scaffold direction.",
            switches={"progress": "--no-progress"}),
    Command("diagnose", "dense latents of any saved SAE, and whether a scaffold would remove them",
            (DiagnoseRun, DiagnoseConfig), _diagnose,
            description="Dense latents, their alignment with the top PCs and massive dims, antipodal pairs and the "
                        "reconstruction's share in the top PCs; then, at matched L0, the SAE fine-tuned without and "
                        "with a rank-r scaffold (--fit finetune, the default) or a fresh plain and scaffolded SAE of "
                        "the same width and k (--fit fresh). Writes diagnosis.json, .md and .html.",
            switches={"progress": "--no-progress"}),
    Command("experiment", "run an experiment file, list the experiments, or regenerate results/RESULTS.md",
            (ExperimentCommand,), experiment_cli,
            description="run FILE: one experiment of experiments/ (its dependencies first) into runs/<slug>/ and "
                        "results/<slug>/summary.json; list: every experiment and whether it is done; report: "
                        "results/RESULTS.md and docs/experiments.md from the summaries.",
            switches={"progress": "--no-progress"}, positional=("action", "path")),
]


def config_reference() -> str:
    """docs/config.md: every command's settings from the field docstrings (``python -m scaffold_sae.config``)."""
    study = find_command("study")
    out = ["# Configuration reference", "",
           "Generated from the config dataclasses' field docstrings by `python -m scaffold_sae.config > "
           "docs/config.md`; tests/test_config.py checks that it matches the code. `scaffold-sae COMMAND --help` "
           "shows the same.", "",
           "## The study (`scaffold-sae study`, `scaffold-sae demo`)", "",
           "The study config is a tree. A `--config` YAML or JSON file gives it nested (`train: {lr: 0.001}`) or "
           "with dotted keys (`train.lr: 0.001`); every key is also a flag (`--train.lr 0.001`), and flags override "
           "the file. A misspelt key fails at once, naming the file and the nearest valid key. The demo's defaults "
           "are the study's.", "",
           "| flag | default | meaning |", "|---|---|---|"]
    for flag in study.flag_fields():
        if flag.config is not StudyConfig:
            out.append(_reference_row(study, flag))
    out += ["", reference(StudyConfig, heading="###"),
            "### Keys from before the tree", "",
            "Results written before 2026-12-03 store the flat config; `config.setting` reads them, and the study "
            "accepts the old flags (`--steps-tokens`) beside the new ones. In a config file an old key fails with "
            "the place it moved to.", "",
            "| old key | key |", "|---|---|",
            *[f"| `{old}` | `{new}` |" for old, new in LEGACY.items()], "", "## The other commands", ""]
    for command in COMMANDS:
        if command.name in ("study", "demo"):
            continue
        out += [f"### `scaffold-sae {command.name}`", "", command.description or command.help, "",
                "| flag | default | meaning |", "|---|---|---|",
                *[_reference_row(command, flag) for flag in command.flag_fields()], ""]
    return "\n".join(out)


def _reference_row(command: Command, flag: FlagField) -> str:
    default = command.default(flag)
    if flag.path in command.positional:
        name = flag.path.upper()
    else:
        name = ", ".join(f for f in (command.switches.get(flag.path), _flag(flag.path) if "." in flag.path or
                                     flag.path not in command.switches else None,
                                     command.aliases.get(flag.path)) if f)
    doc = field_docs(flag.owner).get(flag.field.name, "").replace("|", "\\|")
    switch = command.switches.get(flag.path)
    if switch and switch != _flag(flag.path):
        doc = f"{switch} sets {flag.path} to {str(not default).lower()}. {doc}"
    return f"| `{name}` | {'required' if default is MISSING else f'`{show_value(default)}`'} | {doc} |"


def find_command(name: str | None) -> Command | None:
    return next((c for c in COMMANDS if c.name == name), None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scaffold-sae",
        description="Sparse autoencoders with a rank-r computational scaffold: harvest, train, evaluate, report.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        add_flags(subparsers.add_parser(command.name, help=command.help, description=command.description or
                                        command.help, allow_abbrev=False), command)
    return parser


def unknown_argument(command: Command, arg: str) -> str:
    """One line for an argument the command does not have, with the nearest flag."""
    name = arg.split("=", 1)[0]
    if not name.startswith("-"):
        return f"unexpected argument {arg!r} for `scaffold-sae {command.name}`: see --help"
    match = difflib.get_close_matches(name, command.flags(), n=1, cutoff=0.6)
    if not match:
        last = name.rsplit(".", 1)[-1].lstrip("-").replace("-", "_")
        leaves = {flag.path.rsplit(".", 1)[-1]: _flag(flag.path) for flag in reversed(command.flag_fields())}
        match = [leaves[m] for m in difflib.get_close_matches(last, list(leaves), n=1, cutoff=0.6)]
    fix = f"did you mean {match[0]}?" if match else "see --help"
    return f"unknown flag {name} for `scaffold-sae {command.name}`: {fix}"


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    command = find_command(args.command)
    if command is None:
        parser.print_help()
        sys.exit(2)
    if unknown:
        print(f"error: {unknown_argument(command, unknown[0])}", file=sys.stderr)
        sys.exit(2)
    code = 0
    try:
        with handle_signals():
            command.run(command, command.values(args), args)
    except (ValueError, RuntimeError, OSError) as error:
        if os.environ.get("SCAFFOLD_SAE_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        code = 2
    except Interrupted as interrupted:
        print(f"error: {interrupted}", file=sys.stderr)
        code = interrupted.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to resume", file=sys.stderr)
        code = 130
    if launched_by_torchrun():
        end_rank_process(code)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
