"""TensorBoard views of a pretraining run: image grids, code-usage histogram, custom-scalars layout.

Images come from a separate no-grad forward on a few samples of the current batch, every
``every_n_steps``: nothing is stashed from the training step, so the hot path stays untouched.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid

from pacofr.data.format import NUM_REGIONS
from pacofr.fsdp_calls import call_unsharded, is_fsdp

# One colour per region group (format.REGION_NAMES order), for region-map renderings.
REGION_COLOURS = (
    torch.tensor(
        [
            [0, 0, 0],  # background
            [230, 180, 150],  # skin
            [120, 60, 20],  # brows
            [40, 120, 255],  # eyes
            [255, 200, 0],  # ears
            [0, 200, 120],  # nose
            [220, 20, 60],  # mouth
            [150, 150, 150],  # neck_cloth
            [110, 40, 160],  # hair
        ],
        dtype=torch.float32,
    )
    / 255.0
)
assert REGION_COLOURS.shape[0] == NUM_REGIONS


def colour_regions(region_index: torch.Tensor) -> torch.Tensor:
    """(B, H, W) region indices -> (B, 3, H, W) colours in [0, 1]."""
    return REGION_COLOURS.to(region_index.device)[region_index.long()].permute(0, 3, 1, 2)


def upsample_patch_map(values: torch.Tensor, grid: tuple[int, int], size: int) -> torch.Tensor:
    """(B, N[, C]) per-patch values -> (B, C, size, size) by nearest upsampling."""
    b = values.shape[0]
    v = values.reshape(b, grid[0], grid[1], -1).permute(0, 3, 1, 2).float()
    return torch.nn.functional.interpolate(v, size=(size, size), mode="nearest")


def _writer(trainer: L.Trainer):
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class PretrainImages(L.Callback):
    """Every ``every_n_steps``: a grid per sample row (input | masked input | region map | prediction
    | reconstruction with visible patches pasted), the codebook prototypes and a code-usage histogram.

    Needs ``pl_module.visualise(batch, n) -> dict`` and, when a codebook exists,
    ``pl_module.codebook_images()`` and ``pl_module.code_usage()``.
    """

    def __init__(self, every_n_steps: int = 500, num_images: int = 8):
        self.every = max(1, every_n_steps)
        self.num_images = num_images

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every != 0 and step != 1:
            return
        sharded = is_fsdp(trainer)  # FSDP: every rank joins the forward that gathers the weights
        if not sharded and not trainer.is_global_zero:
            return
        writer = _writer(trainer)
        if writer is None and not sharded:
            return
        was_training = pl_module.training
        pl_module.eval()
        # fork the RNG: the grid's forward draws random replaced patches, and a monitor must not change which
        # random numbers training sees next (DDP runs this on rank 0 only, FSDP on every rank: same training)
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            views = call_unsharded(trainer, pl_module.visualise, batch, self.num_images)
        pl_module.train(was_training)
        if writer is None or not trainer.is_global_zero:
            return
        # rows: one sample each, columns: the views
        columns = [views[k].float().clamp(0, 1).cpu() for k in views]
        tiles = torch.stack(columns, dim=1).flatten(0, 1)
        writer.add_image("images/" + "|".join(views), make_grid(tiles, nrow=len(columns), padding=2), step)
        codebook_images = getattr(pl_module, "codebook_images", None)
        if callable(codebook_images):
            protos = codebook_images()
            if protos is not None:
                writer.add_image("codebook/prototypes", make_grid(protos.cpu(), nrow=16, padding=1), step)
                usage = pl_module.code_usage()
                if usage is not None:
                    writer.add_histogram("codebook/usage", usage.float().cpu(), step)


class ScalarLayout(L.Callback):
    """Groups losses, codebook health and throughput on one page of TensorBoard's CUSTOM SCALARS tab, and
    fills the HPARAMS tab: the run's hyper-parameters against ``hp/val_loss`` (logged by validation).

    Lightning's TensorBoardLogger writes the HPARAMS summary only with a metric attached, so this writes it
    once at fit start with the metric the module logs later.
    """

    HP_METRIC = "hp/val_loss"

    LAYOUT = {
        "pacofr": {
            "losses": ["Multiline", [r"loss/.*"]],
            "codebook health": ["Multiline", [r"codebook/.*"]],
            "masking & reconstruction": ["Multiline", [r"mask/.*", r"recon/.*"]],
            "throughput": ["Multiline", [r"perf/.*"]],
            "optimisation": ["Multiline", [r"optim/.*"]],
            "data problems": ["Multiline", [r"data/.*"]],
            "online probe": ["Multiline", [r"probe/.*"]],
        }
    }

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = _writer(trainer)
        if writer is None:
            return
        writer.add_custom_scalars(self.LAYOUT)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(dict(pl_module.hparams), metrics={self.HP_METRIC: float("nan")})
