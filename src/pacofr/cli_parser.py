"""The argument parser of ``pacofr fit|validate|eval``: a parse error is one line on stderr, with the nearest
known option when one was misspelt, instead of jsonargparse's full usage text."""

from __future__ import annotations

import sys
from typing import NoReturn

from lightning.pytorch.cli import LightningArgumentParser

from pacofr.errors import EXIT_USER_ERROR, option_strings, suggestion


class OneLineErrorParser(LightningArgumentParser):
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse probing alternatives: keep raising
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = " ".join(["pacofr", *parser.prog.replace(" [options]", "").split()[1:]])  # argv[0] may be python
        first = " ".join(message.split())
        sys.stderr.write(f"{prog}: error: {first}{suggestion(first, option_strings(parser))} ({prog} --help)\n")
        sys.exit(EXIT_USER_ERROR)
