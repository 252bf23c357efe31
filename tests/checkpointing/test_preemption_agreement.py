"""When the ranks agree on a preemption (``PreemptionHandler``): a single process acts on its own signal flag at the
next step boundary with no collective and no device read; several processes agree at scheduled boundaries only
(an all-reduce and a read each), about every ``agree_every_s`` seconds of the slowest rank's steps, the interval
starting at one step and at most doubling; every rank computes the same schedule, so all meet at the same steps
and stop at the same one. A fixed ``agree_every_n_steps`` agrees at its multiples instead."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pacofr.checkpointing import preemption
from pacofr.checkpointing.preemption import PreemptionHandler


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def drive(handler: PreemptionHandler, steps: int, step_s, signal_at: int | None = None, clock=None) -> list[int]:
    """Run the handler's step-boundary hooks for ``steps`` optimiser steps of ``step_s(step)`` seconds each (on
    ``clock``); the signal flag is set after step ``signal_at``. Returns the steps it stopped at (at most one)."""
    trainer = SimpleNamespace(global_step=0, strategy=SimpleNamespace(root_device=torch.device("cpu")))
    stopped: list[int] = []
    handler._checkpoint_and_leave = lambda t: stopped.append(t.global_step)  # type: ignore[method-assign]
    for step in range(steps):
        handler.on_train_batch_start(trainer, None)
        if clock is not None:
            clock.now += step_s(step)
        trainer.global_step = step + 1
        if signal_at is not None and trainer.global_step == signal_at:
            handler.signalled = signal.SIGUSR1
        handler.on_train_batch_end(trainer, None)
        if stopped:
            break
    return stopped


def fake_world(monkeypatch, other_rank_s: float = 0.0) -> list[tuple[list[float], int]]:
    """Pretend to be one of two ranks: ``_all_reduce_max`` takes the MAX with another rank whose flag is 0 and
    whose seconds per step are ``other_rank_s``; returns the list of (values sent, call count)."""
    calls: list[tuple[list[float], int]] = []

    def all_reduce_max(values: list[float], device: torch.device) -> list[float]:
        calls.append((list(values), len(calls)))
        # the other rank has measured its steps when this one has (not at the first agreement)
        other = [0.0, other_rank_s if len(values) > 1 and values[1] > 0 else 0.0][: len(values)]
        return [max(a, b) for a, b in zip(values, other, strict=True)]

    monkeypatch.setattr(preemption, "_distributed", lambda: True)
    monkeypatch.setattr(preemption, "_all_reduce_max", all_reduce_max)
    return calls


def agreement_steps(handler: PreemptionHandler, steps: int, step_s: float, clock: Clock, monkeypatch) -> list[int]:
    seen: list[int] = []
    original = handler._agree

    def agree(step: int, device: torch.device) -> bool:
        seen.append(step)
        return original(step, device)

    monkeypatch.setattr(handler, "_agree", agree)
    drive(handler, steps, lambda s: step_s, clock=clock)
    return seen


def test_one_process_acts_on_its_own_flag_without_a_collective(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a single process needs no all-reduce and no device read")

    monkeypatch.setattr(preemption, "_all_reduce_max", refuse)
    assert drive(PreemptionHandler(), 10, lambda s: 0.1, signal_at=4) == [4]  # the boundary after the signal
    assert drive(PreemptionHandler(), 10, lambda s: 0.1) == []


def test_ranks_agree_about_every_agree_every_s_seconds(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(preemption.time, "monotonic", clock)
    fake_world(monkeypatch)
    # 0.5 s steps and 4 s between agreements: at most 8 steps apart, reached by doubling from one step
    handler = PreemptionHandler(agree_every_s=4.0)
    assert agreement_steps(handler, 60, 0.5, clock, monkeypatch) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56]


def test_the_slowest_rank_sets_the_interval_and_slow_steps_agree_every_step(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(preemption.time, "monotonic", clock)
    fake_world(monkeypatch, other_rank_s=2.0)  # the other rank needs 2 s per step: 4 s is two of its steps
    handler = PreemptionHandler(agree_every_s=4.0)
    assert agreement_steps(handler, 12, 0.5, clock, monkeypatch) == [1, 2, 4, 6, 8, 10, 12]
    fake_world(monkeypatch, other_rank_s=30.0)  # slower than agree_every_s: every step
    handler = PreemptionHandler(agree_every_s=4.0)
    assert agreement_steps(handler, 5, 0.5, clock, monkeypatch) == [1, 2, 3, 4, 5]


def test_a_signal_stops_every_rank_at_the_next_agreement(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(preemption.time, "monotonic", clock)
    calls = fake_world(monkeypatch)
    # agreements at 1, 2, 4, 8, 16: a signal after step 9 is acted on at step 16
    stopped = drive(PreemptionHandler(agree_every_s=4.0), 60, lambda s: 0.5, signal_at=9, clock=clock)
    assert stopped == [16] and len(calls) == 5
    assert calls[-1][0][0] == 1.0  # this rank's flag went into the all-reduce


def test_a_fixed_cadence_agrees_at_its_multiples(monkeypatch):
    calls = fake_world(monkeypatch)
    assert drive(PreemptionHandler(agree_every_n_steps=3), 20, lambda s: 0.1, signal_at=4) == [6]
    assert len(calls) == 2  # steps 3 and 6
    calls.clear()
    assert drive(PreemptionHandler(agree_every_n_steps=1), 20, lambda s: 0.1, signal_at=4) == [4]
    assert len(calls) == 4


def test_settings_are_checked():
    with pytest.raises(ValueError, match="agree_every_s"):
        PreemptionHandler(agree_every_s=0)
    with pytest.raises(ValueError, match="agree_every_n_steps"):
        PreemptionHandler(agree_every_n_steps=0)


# --- two real processes (gloo) ----------------------------------------------------------------------------------
def _rank(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        handler = PreemptionHandler(agree_every_s=1.0)
        handler.setup(None, None, "fit")  # type: ignore[arg-type]  # installs the SIGUSR1 handler
        agreed: list[int] = []
        original = handler._agree

        def agree(step: int, device: torch.device) -> bool:
            agreed.append(step)
            return original(step, device)

        handler._agree = agree  # type: ignore[method-assign]
        trainer = SimpleNamespace(global_step=0, strategy=SimpleNamespace(root_device=torch.device("cpu")))
        stopped: list[int] = []
        handler._checkpoint_and_leave = lambda t: stopped.append(t.global_step)  # type: ignore[method-assign]
        for step in range(200):
            handler.on_train_batch_start(trainer, None)
            time.sleep(0.01 * (1 + rank))  # rank 1 is the slower one
            trainer.global_step = step + 1
            if rank == 1 and trainer.global_step == 7:
                os.kill(os.getpid(), signal.SIGUSR1)  # only rank 1 is signalled
            handler.on_train_batch_end(trainer, None)
            if stopped:
                break
        handler.teardown(None, None, "fit")  # type: ignore[arg-type]
        Path(out).write_text(json.dumps({"stopped": stopped, "agreed": agreed}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing pacofr: ~45 s on a loaded 2-core CPU
def test_two_processes_meet_at_the_same_agreements_and_stop_at_the_same_step(tmp_path):
    outs = [str(tmp_path / f"rank{r}.txt") for r in range(2)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank, args=(r, str(tmp_path / "init"), outs[r])) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    results = [json.loads(Path(o).read_text()) for o in outs]
    assert results[0] == results[1], results  # the same agreement steps, the same stop, on both ranks
    stopped, agreed = results[0]["stopped"], results[0]["agreed"]
    assert len(stopped) == 1 and stopped[0] >= 7 and stopped[0] == agreed[-1]
    assert agreed[:3] == [1, 2, 4]  # one step, then doubling
    assert len(agreed) < stopped[0]  # fewer agreements than steps
