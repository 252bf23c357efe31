"""What went wrong while streaming shards: per-worker problem counts and rate-limited warnings.

Bad data never stops a stream: the reader and the batch builder skip or replace what they cannot use,
count it in a :class:`StreamStats` and say so through a :class:`RateLimitedWarner`, which keeps a
badly damaged dataset from flooding the log.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, fields

log = logging.getLogger(__name__)


@dataclass
class StreamStats:
    """Problems met by one worker (cumulative since it started). Add several with ``+``."""

    samples_read: int = 0  # good raw samples read (before shuffle/skip)
    missing_keys: int = 0  # samples lacking jpg / seg.png / json: skipped
    unreadable_samples: int = 0  # bad image/label header, size mismatch or bad JSON: skipped
    decode_errors: int = 0  # pixels failed to decode: replaced by another sample of the batch
    truncated_shards: int = 0  # tar read error mid-shard: rest of the shard skipped
    unreadable_shards: int = 0  # shard could not be opened
    short_shards: int = 0  # shard held fewer samples than its manifest length

    @property
    def skipped_samples(self) -> int:
        return self.missing_keys + self.unreadable_samples + self.decode_errors

    def __add__(self, other: StreamStats) -> StreamStats:
        return StreamStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class RateLimitedWarner:
    """Log the first ``first`` problems, then at most one line per ``interval_s`` (with a running count)."""

    def __init__(self, logger: logging.Logger = log, first: int = 5, interval_s: float = 60.0):
        self.logger, self.first, self.interval_s = logger, first, interval_s
        self.count = 0
        self._last = -math.inf

    def __call__(self, message: str) -> None:
        self.count += 1
        now = time.monotonic()
        if self.count <= self.first or now - self._last >= self.interval_s:
            self._last = now
            self.logger.warning("%s (data problem #%d in this process)", message, self.count)
