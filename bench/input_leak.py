"""How much of a masked patch the full-sequence arm's substitute token carries into the encoder (docs/study.md,
question (b)): a linear read-out of each substitute, scored against the patch's reconstruction target.

In ``PaCoFRFull`` every masked patch enters the encoder as a substitute token: the candidate mix of the codes the
codebook believes in (``candidates``), the same weights over random codes (``random_codes``), the patch embedding of
the patch average-pooled f x f (``lowpass``, ``lowpass_factor`` f) or a learned mask token. If a substitute carries
most of the patch, the reconstruction of the masked patches is close to a copy, whatever the probe then says. For
each finished checkpoint given, every substitute is computed for every patch of held-out faces with that
checkpoint's codebook and patch embedding, and a ridge regression (``pacofr.eval.ridge``, its strength chosen on
held-out faces) is fitted from the substitute (with the patch's position, which the encoder adds) to the patch's
normalised pixels, on training faces; the table is its mean squared error on other faces. The target is normalised
per patch, so predicting zero scores about 1.0 and each position's mean target (the position prior) is the floor any
substitute must beat. ``pooled pixels f x f`` is the read-out from the pooled patch itself (3 x (16/f)^2 numbers):
what the low-pass view holds before the patch embedding. ``--lowpass-factors`` (default 4 8) gives a row of each per
pooling window: the one whose read-out matches the candidate mix's is the information-matched control.

    .venv/bin/python bench/input_leak.py --data-root data/study-faces \\
        --checkpoint pacofr_full=runs/study/default/pacofr_full/seed0/run/checkpoints/last.ckpt

The substitutes do not depend on which one the checkpoint trained with (each is computed from the checkpoint's own
codebook and patch embedding), so one checkpoint gives every row; the mask token carries no patch content and scores
the position prior by construction."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pacofr.eval.backbone import CheckpointError, load_checkpoint
from pacofr.eval.crop import IMAGENET_MEAN, IMAGENET_STD, crop_resize
from pacofr.eval.datasets.synth import SynthFaces
from pacofr.eval.probe_faces import to_batch
from pacofr.eval.ridge import fit_ridge
from pacofr.models.patches import patchify
from pacofr.run_folder import atomic_write_text

CODEBOOK_SUBSTITUTES = ("candidates", "random_codes")


class LeakInputError(ValueError):
    """A checkpoint or dataset this measurement cannot use (main prints it on one line, exit 2)."""


def load_objective(path: Path) -> torch.nn.Module:
    """The checkpoint's objective (class and arguments from its hyperparameters), weights loaded, in eval mode."""
    checkpoint = load_checkpoint(path)
    spec = checkpoint["hyper_parameters"]["objective"]
    module, _, name = spec["class_path"].rpartition(".")
    objective = getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))
    prefix = "objective."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    objective.load_state_dict(state)
    if not hasattr(objective, "codebook"):
        raise LeakInputError(f"{path}: {spec['class_path']} has no codebook; give a PaCo-FR checkpoint")
    return objective.eval()


def read_faces(root: Path, split: str, count: int, size: int, seed: int) -> torch.Tensor:
    """(count, 3, size, size) normalised images of ``count`` faces of ``split``, drawn by ``seed``."""
    reader = SynthFaces(root, split)
    if count > len(reader):
        raise LeakInputError(f"{root} split {split!r} has {len(reader)} faces, fewer than the {count} asked for")
    picks = torch.randperm(len(reader), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    images = [crop_resize(reader[i], size, use_box=False)["image"] for i in picks]
    return to_batch(images, IMAGENET_MEAN, IMAGENET_STD)


@torch.no_grad()
def substitutes(
    objective: Any, images: torch.Tensor, seed: int, factors: tuple[int, ...] = (4, 8), batch: int = 50
) -> dict[str, torch.Tensor]:
    """name -> (B, N, d) every patch's substitute (the codebook's two mixes, the low-pass embedding per pooling
    window ``f`` in ``factors``), and ``target`` -> (B, N, P) its normalised pixels."""
    torch.manual_seed(seed)  # the random codes
    names = (*CODEBOOK_SUBSTITUTES, *(f"lowpass {f}x{f}" for f in factors), "target")
    out: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for start in range(0, images.shape[0], batch):
        x = images[start : start + batch]
        target = objective.normalized_patches(x)
        every = torch.arange(target.shape[1]).expand(x.shape[0], -1)
        out["target"].append(target)
        out["candidates"].append(objective.codebook(target, every)["replace_tokens"])
        out["random_codes"].append(objective.codebook(target, every, random_candidates=True)["replace_tokens"])
        for f in factors:  # PaCoFRFull.lowpass_tokens' arithmetic for every window
            pooled = F.interpolate(F.avg_pool2d(x, f), scale_factor=f, mode="nearest")
            out[f"lowpass {f}x{f}"].append(objective.encoder.embed_patches(pooled))
    return {name: torch.cat(parts) for name, parts in out.items()}


def pooled_pixels(objective: Any, images: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, N, 3 * (p / factor)^2): each patch average-pooled ``factor`` x ``factor`` (the low-pass view's numbers)."""
    # one value per f x f cell; a patch of p pixels is a patch of p / f cells
    return patchify(F.avg_pool2d(images, factor), objective.patch_size // factor)


def mse(prediction: torch.Tensor, target: torch.Tensor) -> float:
    return float(((prediction - target) ** 2).mean())


def leak_table(
    objective: Any, train: torch.Tensor, test: torch.Tensor, seed: int, factors: tuple[int, ...] = (4, 8)
) -> dict[str, float]:
    """Held-out MSE of each read-out (ridge from substitute + position one-hot) of the normalised pixels."""
    sets = {
        "train": substitutes(objective, train, seed, factors),
        "test": substitutes(objective, test, seed + 1, factors),
    }
    for split, images in (("train", train), ("test", test)):
        for f in factors:
            sets[split][f"pooled pixels {f}x{f}"] = pooled_pixels(objective, images, f)
    n_patches = sets["train"]["target"].shape[1]
    y_train = sets["train"]["target"].reshape(-1, sets["train"]["target"].shape[-1])
    y_test = sets["test"]["target"].reshape(-1, y_train.shape[-1])
    position_prior = sets["train"]["target"].mean(0)  # (N, P)
    scores = {
        "zero": mse(torch.zeros_like(y_test), y_test),
        "position prior (= mask token)": mse(position_prior.expand_as(sets["test"]["target"]), sets["test"]["target"]),
    }
    faces = torch.arange(train.shape[0]).repeat_interleave(n_patches)
    positions = F.one_hot(torch.arange(n_patches), n_patches).float()  # (N, N): which patch each row is
    read_from = [name for name in sets["train"] if name != "target"]
    for name in read_from:
        feats = {}
        for split in ("train", "test"):
            x = sets[split][name]
            feats[split] = torch.cat([x, positions.expand(x.shape[0], -1, -1)], dim=-1).reshape(
                -1, x.shape[-1] + n_patches
            )
        fit = fit_ridge(feats["train"], {"pixels": y_train}, torch.Generator().manual_seed(seed), groups=faces)
        scores[name] = mse(fit["pixels"].predict(feats["test"]), y_test)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True, help="LABEL=PATH of a PaCo-FR checkpoint")
    parser.add_argument("--data-root", type=Path, required=True, help="the study's faces (pacofr-prep synth)")
    parser.add_argument("--train-faces", type=int, default=400, help="faces the read-out is fitted on (train split)")
    parser.add_argument("--test-faces", type=int, default=300, help="faces it is scored on (val split)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lowpass-factors", type=int, nargs="+", default=[4, 8], help="pooling windows (divide 16)")
    parser.add_argument("--out", type=Path, default=None, help="JSON of the scores")
    args = parser.parse_args()
    checkpoints = [item.partition("=")[::2] for item in args.checkpoint]
    if bad := [item for item, (_, path) in zip(args.checkpoint, checkpoints) if not path]:
        parser.error(f"--checkpoint wants LABEL=PATH, got {bad[0]!r}")
    results: dict[str, dict[str, float]] = {}
    faces: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # image size -> (train, test): read once
    try:
        for label, path in checkpoints:
            objective = load_objective(Path(path))
            if bad_factors := [f for f in args.lowpass_factors if f <= 0 or objective.patch_size % f]:
                parser.error(f"--lowpass-factors {bad_factors} do not divide the patch size {objective.patch_size}")
            size = objective.img_size
            if size not in faces:
                faces[size] = tuple(
                    read_faces(args.data_root, split, count, size, args.seed)
                    for split, count in (("train", args.train_faces), ("val", args.test_faces))
                )
            results[label] = leak_table(objective, *faces[size], args.seed, tuple(args.lowpass_factors))
    except (LeakInputError, CheckpointError, OSError) as err:
        parser.exit(2, f"input_leak: {' '.join(str(err).split())}\n")
    rows = list(next(iter(results.values())))
    print("held-out MSE of a linear read-out of the masked patch's normalised pixels (1.0: predicting zero)\n")
    print("| read from | " + " | ".join(f"`{label}`" for label in results) + " |")
    print("|---|" + "---|" * len(results))
    for row in rows:
        print(f"| {row} | " + " | ".join(f"{results[label][row]:.3f}" for label in results) + " |")
    if args.out is not None:
        atomic_write_text(
            args.out, json.dumps({"train_faces": args.train_faces, "test_faces": args.test_faces, **results})
        )


if __name__ == "__main__":
    main()
