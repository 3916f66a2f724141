"""`scaffold-sae` command line: a thin layer; every subcommand is one Python call in its stage's module."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .distributed import end_rank_process, launched_by_torchrun
from .faults import Interrupted, handle_signals

# (module, function that adds its subcommand to the parser); each sets `func` to run it.
COMMANDS = [
    ("scaffold_sae.cache", "register_harvest"),
    ("scaffold_sae.cache", "register_cache_info"),
    ("scaffold_sae.trainer", "register_train"),
    ("scaffold_sae.evals", "register_eval"),
    ("scaffold_sae.report", "register_report"),
    ("scaffold_sae.study", "register_study"),
    ("scaffold_sae.study", "register_demo"),
    ("scaffold_sae.compare", "register_compare"),
    ("scaffold_sae.browse", "register_browse"),
    ("scaffold_sae.diagnose", "register_diagnose"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scaffold-sae",
        description="Sparse autoencoders with a rank-r computational scaffold: harvest, train, evaluate, report.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name, function in COMMANDS:
        getattr(importlib.import_module(module_name), function)(subparsers)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        sys.exit(2)
    code = 0
    try:
        with handle_signals():
            args.func(args)
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
