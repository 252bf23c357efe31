"""pacofr's own INFO lines (resume decision, stream position, preemption, study progress) on stderr."""

from __future__ import annotations

import logging
import sys


class CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is logged, not the one at set-up: a command run
    in-process after its caller swapped stderr (a test's capture, a suite's log file) never hits a closed file."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def show_info_logs() -> None:
    """One plain handler on the ``pacofr`` logger (idempotent), as Lightning does for its own lines."""
    logger = logging.getLogger("pacofr")
    if not logger.handlers:
        handler = CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
