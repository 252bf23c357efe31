"""pacofr's own INFO lines (resume decision, stream position, preemption, study progress) on stderr."""

from __future__ import annotations

import logging


def show_info_logs() -> None:
    """One plain handler on the ``pacofr`` logger (idempotent), as Lightning does for its own lines."""
    logger = logging.getLogger("pacofr")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
