"""The preemption signal handler only records the signal (the work happens at the step boundary), and a
signal that arrives during start-up, before the trainer exists, is kept for the first step instead of
killing the process (USR1's default action)."""

from __future__ import annotations

import os
import signal

from pacofr.checkpointing import preemption
from pacofr.checkpointing.preemption import PreemptionHandler, catch_early_preemption_signal


def test_handler_only_sets_a_flag_and_restores_the_previous_handler():
    before = signal.getsignal(signal.SIGUSR1)
    handler = PreemptionHandler()
    handler.setup(None, None, "fit")  # type: ignore[arg-type]  # setup only installs signal handlers
    try:
        assert handler.signalled is None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert handler.signalled == signal.SIGUSR1  # nothing saved, nothing exited: just the flag
    finally:
        handler.teardown(None, None, "fit")  # type: ignore[arg-type]
    assert signal.getsignal(signal.SIGUSR1) == before


def test_signal_during_start_up_is_kept_for_the_first_step():
    before = signal.getsignal(signal.SIGUSR1)
    try:
        catch_early_preemption_signal()
        os.kill(os.getpid(), signal.SIGUSR1)  # would kill the process with the default action
        handler = PreemptionHandler()
        handler.setup(None, None, "fit")  # type: ignore[arg-type]
        assert handler.signalled == signal.SIGUSR1 and preemption._early_signal == []
        handler.teardown(None, None, "fit")  # type: ignore[arg-type]
    finally:
        signal.signal(signal.SIGUSR1, before)
