"""Images/s, step time, achieved TFLOP/s and MFU, from wall time between logging steps.

Timing a window of steps (not each step) keeps the hot path free of host-device syncs: the clock is
read once every ``log_every_n_steps`` and, on CUDA, the window's end is the only synchronisation. The figures are
host numbers and go straight to the loggers: through ``self.log`` each would become a tensor on the device (a
blocking host-to-device copy per figure).
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch


def device_peak_tflops(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> float | None:
    """Dense peak TFLOP/s Lightning knows for this device (None on CPU or an unknown card)."""
    if device.type != "cuda":
        return None
    from lightning.fabric.utilities.throughput import get_available_flops

    flops = get_available_flops(device, dtype)
    return flops / 1e12 if flops else None


class ThroughputMonitor(L.Callback):
    """Logs ``perf/images_per_s`` (global), ``perf/step_time_s``, ``perf/tflops`` and ``perf/mfu``.

    FLOPs per image come from ``pl_module.flops_per_image()`` (analytic count of a training step);
    ``peak_tflops`` is the per-device reference (default: Lightning's table for the card, e.g. 989 for
    an H100 SXM in bf16; pass 790 to compare with the large-matmul ceiling used in bench/).
    """

    def __init__(self, log_every_n_steps: int = 50, peak_tflops: float | None = None):
        self.every = max(1, log_every_n_steps)
        self.peak_tflops = peak_tflops
        self._t0: float | None = None
        self._step0 = 0
        self._images = 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()
            self._step0 = trainer.global_step
            self._images = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._images += int(batch["image"].shape[0])
        steps = trainer.global_step - self._step0
        if steps < self.every or self._t0 is None:
            return
        if batch["image"].is_cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - self._t0
        world = trainer.world_size
        images_per_s = self._images * world / elapsed
        metrics: dict[str, float] = {"perf/images_per_s": images_per_s, "perf/step_time_s": elapsed / steps}
        flops_fn = getattr(pl_module, "flops_per_image", None)
        if callable(flops_fn):
            per_device_tflops = flops_fn() * self._images / elapsed / 1e12
            metrics["perf/tflops_per_device"] = per_device_tflops
            peak = self.peak_tflops or device_peak_tflops(batch["image"].device)
            if peak:
                metrics["perf/mfu"] = per_device_tflops / peak
        if trainer.is_global_zero:  # written once, at the window's end (self.log would wait for log_every_n_steps)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        self._t0 = time.perf_counter()
        self._step0 = trainer.global_step
        self._images = 0
