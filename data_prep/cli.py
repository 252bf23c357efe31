"""``pacofr-prep``: the preprocessing stage's command line.

Each subcommand lives in its own module exposing ``register(subparsers)``, which adds its parser
and sets ``func`` (called with the parsed namespace, returns an exit code). Modules whose optional
dependencies are missing still register, and fail with a clear message only when run.

The parsers are pacofr's one family (``pacofr.cli_parser``): bad input is one line on stderr, exit code 2, with
the nearest option of the subcommand when one is misspelt; a user error a command raises (a missing file, a
``pacofr.errors.UserError``) is the same one line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pacofr.cli_parser import OneLineArgumentParser
from pacofr.errors import TRACEBACK_FLAG, run_reporting_user_errors

# Modules that provide subcommands, in the order ``--help`` lists them.
COMMAND_MODULES = ("data_prep.synth.command", "data_prep.commands")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="pacofr-prep",
        description="Turn raw face images (or procedural synthetic faces) into pacofr-faces/1 shards.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args([a for a in argv if a != TRACEBACK_FLAG])
    return run_reporting_user_errors(f"pacofr-prep {args.command}", lambda _: int(args.func(args) or 0), argv)


if __name__ == "__main__":
    sys.exit(main())
