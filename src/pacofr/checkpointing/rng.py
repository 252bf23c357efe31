"""Global RNG state in every checkpoint, so a resumed run draws the same random numbers as an uninterrupted one.

Lightning does not restore the global RNGs on resume, and pacofr draws from them during training (which
visible patches get replaced, dead-code re-seeding). ``RNGState`` snapshots every rank's torch (CPU and
CUDA), NumPy and Python RNG at the end of each optimiser step and puts them back at the start of the next
step. That also makes whatever runs between two steps (validation, building a DataLoader iterator, which
draws a base seed) neutral for the training stream, so a run that resumes at step k, and therefore builds
its iterators and runs its sanity check at a different time, still continues with the same numbers.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Checkpoint


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states, as tensors and plain Python values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },  # fmt: skip
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class RNGState(Checkpoint):
    """Checkpoints every rank's RNG state and puts it back at each step start (see the module docstring).

    A ``Checkpoint`` subclass so Lightning orders it after the other callbacks: the snapshot is taken after
    everything that runs at the end of a step.
    """

    def __init__(self) -> None:
        self._after_step: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return "RNGState"

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._after_step = capture_rng_state()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._after_step is not None:
            restore_rng_state(self._after_step)

    def state_dict(self) -> dict[str, Any]:
        # every rank calls this while a checkpoint is dumped (rank 0 writes it): gather all ranks' states
        mine = capture_rng_state()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(states, mine)
        else:
            states = [mine]
        return {"per_rank": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict["per_rank"]
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if len(states) != (dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1):
            # another world size: the data stream changes anyway; keep rank-distinct but reproducible streams
            rank = rank % len(states)
        self._after_step = states[rank]
