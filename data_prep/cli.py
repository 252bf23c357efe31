"""``pacofr-prep``: the preprocessing stage's command line.

Each subcommand lives in its own module exposing ``register(subparsers)``, which adds its parser
and sets ``func`` (called with the parsed namespace, returns an exit code). Modules whose optional
dependencies are missing still register, and fail with a clear message only when run.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from pacofr.errors import EXIT_USER_ERROR, option_strings, suggestion

# Modules that provide subcommands, in the order ``--help`` lists them.
COMMAND_MODULES = ("data_prep.synth.command", "data_prep.commands")


class OneLineArgumentParser(argparse.ArgumentParser):
    """A parse error is one line on stderr (with the nearest known option when one was misspelt), exit 2."""

    def error(self, message: str) -> NoReturn:
        known = option_strings(self)
        sys.stderr.write(f"{self.prog}: error: {message}{suggestion(message, known)} ({self.prog} --help)\n")
        sys.exit(EXIT_USER_ERROR)


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
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
