"""TensorBoard views of a pretraining run: image grids, code-usage histogram, custom-scalars layout.

Images come from a separate no-grad forward of the objective's model on a few samples of the current batch,
every ``every_n_steps``: nothing is stashed from the training step, so the hot path stays untouched.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import make_grid

from pacofr.data.batch import PretrainBatch
from pacofr.data.format import NUM_REGIONS, REGION_NAMES, label_to_region_lut
from pacofr.hparams_session import write_session_start
from pacofr.models.patches import unpatchify
from pacofr.objectives.interface import PretrainObjective, chart
from pacofr.training.fsdp_access import call_unsharded, is_fsdp
from pacofr.training.pixels import denormalise, predicted_pixels

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


def reconstruction_views(
    objective: PretrainObjective, batch: PretrainBatch, n: int, datamodule: object = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Columns of the image grid for the first ``n`` samples: input, masked input (hidden and replaced patches
    grey), region map, reconstruction (visible patches pasted); and the objective's histograms of that forward
    (``monitor_histograms``)."""
    images, mask = batch["image"][:n], batch["mask"][:n]
    out = objective.forward_model(images, mask)
    grid, p = objective.grid_size, objective.patch_size
    pixels = denormalise(images, datamodule)
    hidden = unpatchify(out["loss_mask"].unsqueeze(-1).float().expand(-1, -1, p * p * 3), p, grid)
    masked = torch.where(hidden > 0, torch.full_like(pixels, 0.5), pixels)
    predicted = unpatchify(predicted_pixels(objective, objective.patchify(pixels), out["pred"]), p, grid)
    pasted = torch.where(hidden > 0, predicted, pixels)
    lut = torch.tensor(label_to_region_lut(), device=images.device)
    regions = colour_regions(lut[batch["seg"][:n].long()])
    views = {"input": pixels, "masked": masked, "regions": regions, "reconstruction": pasted}
    return views, objective.monitor_histograms(out)


def titled_grid(grid: torch.Tensor, titles: list[str], legend: bool) -> torch.Tensor:
    """(3, H, W) image grid -> the same with a row of column titles on top and, with ``legend``, one colour
    swatch per region group (``format.REGION_NAMES``) underneath."""
    from PIL import Image, ImageDraw

    _, h, w = grid.shape
    header, footer = 14, (14 * math.ceil(NUM_REGIONS / 5) + 4 if legend else 0)
    canvas = Image.new("RGB", (w, h + header + footer), (255, 255, 255))
    canvas.paste(Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).astype("uint8")), (0, header))
    draw = ImageDraw.Draw(canvas)
    step = w / max(1, len(titles))
    for i, title in enumerate(titles):
        draw.text((int(i * step) + 3, 1), title, fill=(0, 0, 0))
    if legend:
        colours = (REGION_COLOURS * 255).round().to(torch.uint8).tolist()
        for i, (name, colour) in enumerate(zip(REGION_NAMES, colours)):
            x, y = 4 + (i % 5) * max(60, w // 5), h + header + 3 + (i // 5) * 14
            draw.rectangle([x, y, x + 9, y + 9], fill=tuple(colour), outline=(0, 0, 0))
            draw.text((x + 13, y - 1), name, fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255.0


def _log_dir(trainer: L.Trainer) -> str | None:
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.log_dir
    return None


def _writer(trainer: L.Trainer):
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class PretrainImages(L.Callback):
    """Every ``every_n_steps``: a grid per sample row (input | masked input | region map | reconstruction with
    visible patches pasted), and what the objective draws of its own parts (``monitor_images``, e.g. PaCo-FR's
    code prototypes) and of the grid's forward (``monitor_histograms``, e.g. the codes its patches were assigned).
    Reads ``pl_module.objective`` (a :class:`~pacofr.objectives.interface.PretrainObjective`)."""

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
        objective, datamodule = pl_module.objective, getattr(trainer, "datamodule", None)
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            views, histograms = call_unsharded(
                trainer, reconstruction_views, objective, batch, self.num_images, datamodule
            )
        pl_module.train(was_training)
        if writer is None or not trainer.is_global_zero:
            return
        # rows: one sample each, columns: the views, titled, with the region colours' legend underneath
        columns = [views[k].float().clamp(0, 1).cpu() for k in views]
        tiles = torch.stack(columns, dim=1).flatten(0, 1)
        grid = make_grid(tiles, nrow=len(columns), padding=2)
        writer.add_image("images/" + "|".join(views), titled_grid(grid, list(views), "regions" in views), step)
        with torch.no_grad():
            images = objective.monitor_images()
        for tag, tiles in images.items():
            # a square grid: 1024 codes fit one screen instead of a 64-row strip that needs scrolling
            side = math.ceil(math.sqrt(tiles.shape[0]))
            writer.add_image(tag, make_grid(tiles.float().cpu(), nrow=side, padding=1), step)
        for tag, values in histograms.items():
            writer.add_histogram(tag, values.reshape(-1).float().cpu(), step)


class ScalarLayout(L.Callback):
    """TensorBoard's CUSTOM SCALARS page, one chart per scale (a perplexity of 200 beside a usage share of 1
    would draw the share flat), problem counters apart from volume counters, validation beside training;
    and the HPARAMS tab: what tells runs apart (method, masker, global batch, steps, world size, every
    setting) against the validation loss and, once ``pacofr eval`` has scored a checkpoint of the run, the
    benchmark scores (``pacofr.hparams_session``: a session in the ``tb/hparams`` sub-run).
    """

    HP_METRIC = "hp/val_loss"
    # regexes are anchored: TensorBoard finds them anywhere in a tag (loss/rec would take loss/rec_covered too)
    DATA_PROBLEMS = (
        r"^data/(decode_errors|missing_keys|short_shards|truncated_shards|unreadable_.*|skipped.*|replaced.*)$"
    )
    # the page around the method's own charts (``PretrainObjective.tensorboard_charts``): the total and validation
    # loss open the first category, the method's categories follow it, then these
    LOSSES = {
        "total loss (train)": chart(r"^loss/total$"),
        "validation loss": chart(r"^val/loss$"),
    }
    GENERAL = {
        "online probe": {
            "pose MAE, degrees (lower is better)": chart(r"^probe/pose_mae.*$"),
            "identity k-NN accuracy (higher is better)": chart(r"^probe/knn_identity_acc$"),
        },
        "optimisation": {
            "learning rate": chart(r"^optim/lr_.*$"),
            "gradient norm": chart(r"^optim/grad_norm.*$"),
            "skipped non-finite steps": chart(r"^loss/nonfinite_skipped$"),
        },
        "throughput": {
            "images/s": chart(r"^perf/images_per_s$"),
            "step time, s": chart(r"^perf/step_time_s$"),
            "TFLOP/s per device": chart(r"^perf/tflops_per_device$"),
            "MFU": chart(r"^perf/mfu$"),
        },
        "data": {
            "problems (all 0 in a healthy run)": chart(DATA_PROBLEMS),
            "samples read": chart(r"^data/samples_read$"),
        },
    }

    @classmethod
    def layout(cls, objective: PretrainObjective) -> dict[str, dict[str, list]]:
        """The CUSTOM SCALARS layout of a run of ``objective``: categories numbered in page order."""
        charts = objective.tensorboard_charts()
        categories = {"losses": {**cls.LOSSES, **charts.get("losses", {})}}
        categories.update({name: c for name, c in charts.items() if name != "losses"})
        categories.update({name: c for name, c in cls.GENERAL.items() if name not in categories})
        return {f"{i} {name}": c for i, (name, c) in enumerate(categories.items(), start=1)}

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = _writer(trainer)
        if writer is None:
            return
        writer.add_custom_scalars(self.layout(pl_module.objective))
        log_dir = _log_dir(trainer)
        if log_dir is not None:
            self._session = write_session_start(log_dir, run_hparams(trainer, dict(pl_module.hparams)))

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The validation loss as the HPARAMS session's metric (``pacofr eval`` adds the benchmark scores)."""
        value = trainer.callback_metrics.get(self.HP_METRIC)
        session = getattr(self, "_session", None)
        if value is None or session is None or trainer.sanity_checking:
            return
        session.add_scalar(self.HP_METRIC, float(value), trainer.global_step)
        session.flush()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        session = getattr(self, "_session", None)
        if session is not None:
            session.close()
            self._session = None


def method_name(objective: type[PretrainObjective] | str, masker: str, settings: dict | None = None) -> str:
    """The run's method from its objective (class, or class name in ``pacofr.objectives``) and masker: the
    objective's ``method_label`` ("PaCo-FR", "CRFR-P MAE" for FSFM without its ID branch, "MAE", or e.g.
    "PaCo-FR (RandomMasker)" with a masker the method was not designed with); an unknown name as it is."""
    if isinstance(objective, str):
        import pacofr.objectives as objectives

        found = getattr(objectives, objective, None)
        if not (isinstance(found, type) and issubclass(found, PretrainObjective)):
            return objective
        objective = found
    return objective.method_label(masker, settings)


def run_hparams(trainer: L.Trainer, model_hparams: dict) -> dict:
    """The HPARAMS row of a run: the objective's class and settings, the module's optimisation settings
    (without LightningCLI's bookkeeping keys), and what the data module and trainer decide (masker, global
    batch, steps, world size)."""
    out = {k: v for k, v in model_hparams.items() if not str(k).startswith("_") and k != "objective"}
    objective = model_hparams.get("objective") or {}
    objective_class = str(objective.get("class_path", "?")).rsplit(".", 1)[-1]
    out["objective"] = objective_class
    module = getattr(trainer, "lightning_module", None)
    built = getattr(module, "objective", None)
    objective_type = type(built) if isinstance(built, PretrainObjective) else objective_class
    out.update({k: v for k, v in (objective.get("init_args") or {}).items()})
    data = getattr(trainer, "datamodule", None)
    masker = type(getattr(data, "masker", None)).__name__ if getattr(data, "masker", None) is not None else "none"
    batch = getattr(data, "batch_size", None)
    out.update(
        {
            "method": method_name(objective_type, masker, objective.get("init_args")),
            "masker": masker,
            "world_size": trainer.world_size,
            "max_steps": trainer.max_steps,
            "global_batch": batch * trainer.world_size * trainer.accumulate_grad_batches if batch else -1,
        }
    )
    return out
