"""Read small device tensors on the host without draining the device's queue.

``tensor.item()`` on CUDA waits until every kernel queued so far has run, once per call: the host stops
feeding the device. ``LaggedHostReader`` copies the value into pinned host memory with
``non_blocking=True`` and records an event behind the copy; the host then reads a copy

* ``latest()``: the newest one that has landed (never waits; how old it is depends on timing), or
* ``lagged(n)``: the one pushed ``n`` pushes ago, waiting for it only if it has not landed yet, which
  blocks until that older step is done, not the current one (the queue stays ``n`` steps deep). Every
  process reads the same step's value, so ranks that act on it act together.

On CPU the copy is synchronous: both return current values with no waiting to speak of.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch


class LaggedHostReader:
    """Host copies of a device value pushed once per step, each with a tag (e.g. the step)."""

    def __init__(self, keep: int = 8) -> None:
        # entries: (host copy, tag, event or None when the copy was synchronous)
        self._entries: deque[tuple[torch.Tensor, Any, torch.cuda.Event | None]] = deque(maxlen=keep)
        self._latest: tuple[torch.Tensor, Any] | None = None
        self.keep = keep

    def push(self, value: torch.Tensor, tag: Any = None) -> None:
        """Start copying ``value`` to the host; ``tag`` comes back with the copy."""
        value = value.detach()
        if value.device.type != "cuda":
            # CPU: a plain copy; other accelerators: their copy to the host is synchronous anyway
            self._entries.append((value.to("cpu", copy=True), tag, None))
            return
        host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
        host.copy_(value, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._entries.append((host, tag, event))

    def latest(self) -> tuple[torch.Tensor, Any] | None:
        """(host tensor, tag) of the newest copy that has landed, or None before the first; never waits."""
        for host, tag, event in reversed(self._entries):
            if event is None or event.query():
                self._latest = (host, tag)
                break
        return self._latest

    def lagged(self, lag: int) -> tuple[torch.Tensor, Any] | None:
        """(host tensor, tag) of the copy pushed ``lag`` pushes before the newest (0: the newest), waiting
        for it if needed; None while fewer have been pushed."""
        if not 0 <= lag < self.keep:
            raise ValueError(f"lag must be in [0, {self.keep}), got {lag}")
        if len(self._entries) <= lag:
            return None
        host, tag, event = self._entries[-1 - lag]
        if event is not None and not event.query():
            event.synchronize()  # waits for that older copy only, not for the work queued after it
        return host, tag
