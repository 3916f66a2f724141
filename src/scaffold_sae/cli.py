"""`scaffold-sae` command line: the config is the CLI.

Every command is a few config dataclasses plus one Python call.  Its flags are generated from the dataclasses'
fields (``--field-name``, help = the field's docstring); flag values arrive as text and, like the values of a
``--config`` YAML/JSON file, become typed through ``config.build``.  This is the only module that uses argparse.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

from . import distributed
from .browse import BrowseConfig, BrowseRun, browse_from_config, serve_site
from .cache import CacheInfoConfig, HarvestConfig, HarvestRun, cache_info, harvest_ranked, harvest_with
from .compare import CompareConfig, compare_results
from .diagnose import DiagnoseConfig, DiagnoseRun, diagnose_from_config
from .config import build, field_docs, has_default, load_config_file, sequence_type
from .distributed import end_rank_process, launched_by_torchrun
from .evals import CoreEvalConfig, run_core_eval
from .faults import Interrupted, handle_signals
from .study_report import ReportConfig, report_from_results
from .sae import SAEConfig
from .study import DEMO, StudyConfig, StudyRun, study_and_report
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


@dataclass
class Command:
    """One subcommand: the dataclasses its flags come from and the function that runs it."""

    name: str
    help: str
    configs: tuple[type, ...]
    run: Callable[["Command", dict, argparse.Namespace], object]
    description: str | None = None
    switches: dict[str, str] = field(default_factory=dict)
    """Bool field -> a flag without a value that sets it to the opposite of its default (progress: --no-progress)."""
    aliases: dict[str, str] = field(default_factory=dict)
    """Field -> a second flag name for it (n_tokens: --tokens)."""
    positional: tuple[str, ...] = ()
    """Fields given as positional arguments."""
    exclude: tuple[str, ...] = ()
    """Fields with no flag (internal, or config files only)."""

    def flag_fields(self):
        """(dataclass, field) of every field that has a flag or positional argument; a name two dataclasses share
        (train: SAEConfig.seed and TrainConfig.seed) takes its flag and help from the later one."""
        later = {}
        for cls in self.configs:
            for f in fields(cls):
                later[f.name] = cls
        return [(cls, f) for cls in self.configs for f in fields(cls)
                if f.name not in self.exclude and later[f.name] is cls]

    def values(self, args: argparse.Namespace) -> dict:
        """Field name -> value: the --config file's values, then every flag given (as text)."""
        values = {}
        if getattr(args, "config", None):
            values.update(load_config_file(args.config))
        for _, f in self.flag_fields():
            if f.name != "config" and getattr(args, f.name, None) is not None:
                values[f.name] = getattr(args, f.name)
        return values

    def argv(self, args: argparse.Namespace) -> list[str]:
        """The flags of ``args`` again, for relaunching this command as several processes."""
        negations = {name: flag for name, flag in self.switches.items() if flag != _flag(name)}
        return distributed.cli_argv(args, negations=negations)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


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
    """One flag per field of the command's dataclasses (value None when not given), help = its docstring."""
    has_config_file = ConfigFile in command.configs
    for cls, f in command.flag_fields():
        doc = field_docs(cls).get(f.name, "").replace("%", "%%")
        annotation = str(f.type)
        if f.name in command.positional:
            parser.add_argument(f.name, metavar=f.name.upper(), help=doc)
        elif f.name in command.switches:
            flag = command.switches[f.name]
            text = doc if flag == _flag(f.name) else f"sets {f.name} to {str(not f.default).lower()}: {doc}"
            parser.add_argument(flag, dest=f.name, action="store_const", const=not f.default, default=None,
                                help=text)
        else:
            names = [_flag(f.name)] + ([command.aliases[f.name]] if f.name in command.aliases else [])
            extra = {"nargs": "+"} if (sequence_type(annotation) or ("", ""))[1] == "str" else {}
            parser.add_argument(*names, dest=f.name, default=None, metavar=_metavar(annotation), help=doc,
                                required=not has_default(f) and not has_config_file, **extra)


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
    for path in train_from_config(values):
        print(path)


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
    where = f" in {args.config}" if getattr(args, "config", None) else ""
    base = DEMO if command.name == "demo" else StudyConfig()
    run_names = {f.name for f in fields(StudyRun)}
    study_values = {key: value for key, value in values.items() if key not in run_names}
    cfg = build(StudyConfig, {**asdict(base), **study_values}, where=where).validate()
    run = build(StudyRun, _pick(values, StudyRun))
    out = Path(run.out or ("runs/demo" if command.name == "demo" else f"runs/{Path(cfg.model).name}-L{cfg.layer}"))
    started = time.perf_counter()
    paths = study_and_report(cfg, out, progress=run.progress)
    print(f"\nreport: {paths.html}\n        {paths.markdown}\n        {paths.json}")
    print(f"total {time.perf_counter() - started:.0f} s")


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
            switches={"progress": "--no-progress", "until_converged": "--until-converged"}),
    Command("demo", "the study on the embedded default model (< 30 min on 2 CPU cores)",
            (ConfigFile, StudyRun, StudyConfig), _study,
            switches={"progress": "--no-progress", "until_converged": "--until-converged"}),
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
]


def find_command(name: str | None) -> Command | None:
    return next((c for c in COMMANDS if c.name == name), None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scaffold-sae",
        description="Sparse autoencoders with a rank-r computational scaffold: harvest, train, evaluate, report.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        add_flags(subparsers.add_parser(command.name, help=command.help, description=command.description or
                                        command.help), command)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = find_command(args.command)
    if command is None:
        parser.print_help()
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
