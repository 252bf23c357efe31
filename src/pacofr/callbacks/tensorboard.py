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

from pacofr.callbacks.hparams_session import write_session_start
from pacofr.data.batch import PretrainBatch
from pacofr.data.format import NUM_REGIONS, REGION_NAMES, label_to_region_lut
from pacofr.models.patches import unpatchify
from pacofr.objectives.base import PretrainObjective
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
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Columns of the image grid for the first ``n`` samples: input, masked input (hidden and replaced patches
    grey), region map, reconstruction (visible patches pasted); and the codes the patches were assigned (None
    without a codebook)."""
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
    return views, out.get("target_code")


def codebook_images(objective: PretrainObjective, limit: int = 256) -> torch.Tensor | None:
    """The first ``limit`` code prototypes g(c_k) as (K, 3, p, p) images, each min-max scaled (None without a
    codebook)."""
    codebook = getattr(objective, "codebook", None)
    if codebook is None:
        return None
    protos = codebook.prototypes()[:limit].float()
    p = objective.patch_size
    imgs = protos.view(-1, p, p, 3).permute(0, 3, 1, 2)
    lo = imgs.amin(dim=(1, 2, 3), keepdim=True)
    hi = imgs.amax(dim=(1, 2, 3), keepdim=True)
    return (imgs - lo) / (hi - lo).clamp_min(1e-6)


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
    visible patches pasted), the codebook prototypes and a histogram of the codes the grid's patches were
    assigned. Reads ``pl_module.objective`` (a :class:`~pacofr.objectives.base.PretrainObjective`)."""

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
            views, codes = call_unsharded(trainer, reconstruction_views, objective, batch, self.num_images, datamodule)
        pl_module.train(was_training)
        if writer is None or not trainer.is_global_zero:
            return
        # rows: one sample each, columns: the views, titled, with the region colours' legend underneath
        columns = [views[k].float().clamp(0, 1).cpu() for k in views]
        tiles = torch.stack(columns, dim=1).flatten(0, 1)
        grid = make_grid(tiles, nrow=len(columns), padding=2)
        writer.add_image("images/" + "|".join(views), titled_grid(grid, list(views), "regions" in views), step)
        with torch.no_grad():
            protos = codebook_images(objective)
        if protos is not None:
            # a square grid: 1024 codes fit one screen instead of a 64-row strip that needs scrolling
            side = math.ceil(math.sqrt(protos.shape[0]))
            writer.add_image("codebook/prototypes", make_grid(protos.cpu(), nrow=side, padding=1), step)
        if codes is not None:
            writer.add_histogram("codebook/usage", codes.reshape(-1).float().cpu(), step)


class ScalarLayout(L.Callback):
    """TensorBoard's CUSTOM SCALARS page, one chart per scale (a perplexity of 200 beside a usage share of 1
    would draw the share flat), problem counters apart from volume counters, validation beside training;
    and the HPARAMS tab: what tells runs apart (method, masker, global batch, steps, world size, every
    setting) against the validation loss and, once ``pacofr eval`` has scored a checkpoint of the run, the
    benchmark scores (``pacofr.callbacks.hparams_session``: a session in the ``tb/hparams`` sub-run).
    """

    HP_METRIC = "hp/val_loss"
    # regexes are anchored: TensorBoard finds them anywhere in a tag (loss/rec would take loss/rec_covered too)
    DATA_PROBLEMS = (
        r"^data/(decode_errors|missing_keys|short_shards|truncated_shards|unreadable_.*|skipped.*|replaced.*)$"
    )
    LAYOUT = {
        "1 losses": {
            "total loss (train)": ["Multiline", [r"^loss/total$"]],
            "incubation: 1 = only codebook, pixel head and predictor train (the total jumps when it ends)": [
                "Multiline",
                [r"^optim/incubating$"],
            ],
            "reconstruction (train)": ["Multiline", [r"^loss/rec$", r"^loss/rec_covered$"]],
            "codebook loss and its belief CE (train)": [
                "Multiline",
                [r"^loss/codebook$", r"^loss/codebook_belief_ce$"],
            ],
            "codebook alignment and commitment (train)": [
                "Multiline",
                [r"^loss/codebook_alignment$", r"^loss/codebook_commitment$"],
            ],
            "spatial terms (train)": ["Multiline", [r"^loss/spatial.*$"]],
            "validation loss": ["Multiline", [r"^val/loss$"]],
            "validation reconstruction": ["Multiline", [r"^val/rec$", r"^val/rec_covered$"]],
            "validation codebook loss and its belief CE": [
                "Multiline",
                [r"^val/codebook$", r"^val/codebook_belief_ce$"],
            ],
            "validation alignment, commitment and spatial terms": [
                "Multiline",
                [r"^val/codebook_alignment$", r"^val/codebook_commitment$", r"^val/spatial.*$"],
            ],
        },
        "2 reconstruction & masking": {
            "PSNR, dB (train and validation)": ["Multiline", [r"^recon/psnr_db$", r"^val/psnr_db$"]],
            "mask ratios (masked, replaced, covered share)": ["Multiline", [r"^mask/.*$"]],
        },
        "3 codebook health": {
            "perplexity (codes in use, effective)": ["Multiline", [r"^codebook/perplexity$"]],
            "share of codes used (assigned in the window)": ["Multiline", [r"^codebook/usage_fraction$"]],
            "codes re-seeded so far": ["Multiline", [r"^codebook/reseeded_total$"]],
        },
        "4 online probe": {
            "pose MAE, degrees (lower is better)": ["Multiline", [r"^probe/pose_mae.*$"]],
            "identity k-NN accuracy (higher is better)": ["Multiline", [r"^probe/knn_identity_acc$"]],
        },
        "5 optimisation": {
            "learning rate": ["Multiline", [r"^optim/lr_.*$"]],
            "gradient norm": ["Multiline", [r"^optim/grad_norm.*$"]],
            "skipped non-finite steps": ["Multiline", [r"^loss/nonfinite_skipped$"]],
        },
        "6 throughput": {
            "images/s": ["Multiline", [r"^perf/images_per_s$"]],
            "step time, s": ["Multiline", [r"^perf/step_time_s$"]],
            "TFLOP/s per device": ["Multiline", [r"^perf/tflops_per_device$"]],
            "MFU": ["Multiline", [r"^perf/mfu$"]],
        },
        "7 data": {
            "problems (all 0 in a healthy run)": ["Multiline", [DATA_PROBLEMS]],
            "samples read": ["Multiline", [r"^data/samples_read$"]],
        },
    }

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = _writer(trainer)
        if writer is None:
            return
        writer.add_custom_scalars(self.LAYOUT)
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


# what a reader calls each objective with the masker it was designed with; another masker is named beside it
METHOD_NAMES = {
    "PaCoFR": ("PaCo-FR", "Structured"),
    "PaCoFRFull": ("PaCo-FR full", "Structured"),
    "FSFM": ("FSFM", "Structured"),
    "MAE": ("MAE", "Random"),
}


def method_name(objective: str, masker: str, settings: dict | None = None) -> str:
    """The run's method from its objective class and masker: "PaCo-FR", "PaCo-FR full", "FSFM" ("CRFR-P MAE"
    without its ID branch), "MAE", or e.g. "PaCo-FR (RandomMasker)" with a masker the method was not designed
    with."""
    name, designed_for = METHOD_NAMES.get(objective, (objective, ""))
    if objective == "FSFM" and (settings or {}).get("id_weight", 0.1) == 0:
        name = "CRFR-P MAE"
    return name if designed_for in masker or masker == "none" else f"{name} ({masker})"


def run_hparams(trainer: L.Trainer, model_hparams: dict) -> dict:
    """The HPARAMS row of a run: the objective's class and settings, the module's optimisation settings
    (without LightningCLI's bookkeeping keys), and what the data module and trainer decide (masker, global
    batch, steps, world size)."""
    out = {k: v for k, v in model_hparams.items() if not str(k).startswith("_") and k != "objective"}
    objective = model_hparams.get("objective") or {}
    objective_class = str(objective.get("class_path", "?")).rsplit(".", 1)[-1]
    out["objective"] = objective_class
    out.update({k: v for k, v in (objective.get("init_args") or {}).items()})
    data = getattr(trainer, "datamodule", None)
    masker = type(getattr(data, "masker", None)).__name__ if getattr(data, "masker", None) is not None else "none"
    batch = getattr(data, "batch_size", None)
    out.update(
        {
            "method": method_name(objective_class, masker, objective.get("init_args")),
            "masker": masker,
            "world_size": trainer.world_size,
            "max_steps": trainer.max_steps,
            "global_batch": batch * trainer.world_size * trainer.accumulate_grad_batches if batch else -1,
        }
    )
    return out
