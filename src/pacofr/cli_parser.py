"""The argument parser of ``pacofr fit|validate|eval``: a parse error is one line on stderr, with the nearest
known option when one was misspelt, instead of jsonargparse's full usage text."""

from __future__ import annotations

import difflib
import re
import sys
from typing import NoReturn

from jsonargparse import ArgumentParser
from lightning.pytorch.cli import LightningArgumentParser

from pacofr.errors import EXIT_USER_ERROR


def option_strings(parser: ArgumentParser) -> list[str]:
    """Every ``--long.option`` the parser knows (nested class groups are flattened by jsonargparse)."""
    found = []
    for action in parser._actions:
        found += [s for s in action.option_strings if s.startswith("--")]
        for sub in getattr(action, "_name_parser_map", {}).values():  # subcommands
            found += option_strings(sub)
    return sorted(set(found))


def suggestion(message: str, known: list[str]) -> str:
    """`` (did you mean --model.mask_ratio?)`` for the first unknown ``--option`` in ``message``."""
    for word in re.findall(r"--[\w.\-]+", message):
        name = word.split("=", 1)[0]
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        if close:
            return f" (did you mean {close[0]}?)"
    return ""


class OneLineErrorParser(LightningArgumentParser):
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse probing alternatives: keep raising
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = " ".join(["pacofr", *parser.prog.replace(" [options]", "").split()[1:]])  # argv[0] may be python
        first = " ".join(message.split())
        sys.stderr.write(f"{prog}: error: {first}{suggestion(first, option_strings(parser))} ({prog} --help)\n")
        sys.exit(EXIT_USER_ERROR)
