"""User errors: what a user can fix (a wrong path, a damaged file, a misspelt option) ends a pacofr command
with one line on stderr saying what is wrong and what to do, and exit code 2. ``--traceback`` (anywhere on
the command line) or ``PACOFR_TRACEBACK=1`` shows the full traceback instead. Bad command-line input is the
parsers' to refuse, in the same one line (``pacofr.cli_parser``).
"""

from __future__ import annotations

import os
import pickle
import re
import sys
from collections.abc import Callable, Sequence

TRACEBACK_FLAG = "--traceback"
TRACEBACK_ENV = "PACOFR_TRACEBACK"
EXIT_USER_ERROR = 2


class UserError(ValueError):
    """A mistake the user can fix; the message says what is wrong and what to do."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Every exception type that means bad input rather than a bug in pacofr (pacofr's own are ``UserError``
    subclasses: a bad manifest, checkpoint or dataset layout)."""
    return (
        UserError,
        pickle.UnpicklingError,  # the restricted unpickler refusing a .bin file's globals
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
    )


def split_traceback_flag(argv: Sequence[str]) -> tuple[bool, list[str]]:
    """(whether a full traceback is wanted, argv without ``--traceback``)."""
    rest = [a for a in argv if a != TRACEBACK_FLAG]
    wanted = len(rest) != len(argv) or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")
    return wanted, rest


# torch.load(weights_only=True)'s refusal names the global it would have had to import
_REFUSED_GLOBAL = re.compile(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)")


def refused_pickle(err: BaseException) -> str | None:
    """One line for ``torch.load(weights_only=True)`` refusing a file (None for any other error): the global it
    refused, and never torch's advice to load with ``weights_only=False``, which would run that code."""
    text = str(err)
    if not isinstance(err, pickle.UnpicklingError) or "Weights only load failed" not in text:
        return None
    match = _REFUSED_GLOBAL.search(text)
    held = f"`{match.group(1)}`" if match else "an object that is not plain data"
    return (
        f"refused to load the file: it holds {held}, which a checkpoint of tensors and numbers never needs and "
        "which unpickling would have to import and run; pacofr loads checkpoints as data only"
    )


def one_line(err: BaseException) -> str:
    """The error's message on one line (chained causes are not repeated)."""
    refused = refused_pickle(err)
    if refused is not None:
        return refused
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, (FileNotFoundError, PermissionError)) and err.filename and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    return text


def run_reporting_user_errors(prog: str, command: Callable[[list[str]], int], argv: Sequence[str]) -> int:
    """``command(argv)``, with its user errors turned into one line and exit code 2."""
    traceback_wanted, argv = split_traceback_flag(argv)
    try:
        return command(argv)
    except user_error_types() as err:
        if traceback_wanted:
            raise
        print(f"{prog}: error: {one_line(err)} (add {TRACEBACK_FLAG} for the full traceback)", file=sys.stderr)
        return EXIT_USER_ERROR
