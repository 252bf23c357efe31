"""Load the pretrained encoder as a timm ``VisionTransformer``.

Accepted sources:

- an exported ``encoder.safetensors`` with its sidecar ``encoder.json`` (``pacofr export``);
- a Lightning pretraining checkpoint: the encoder sits under ``state_dict["objective.encoder.*"]`` and the
  ``pacofr_encoder`` entry gives ``encoder_size`` (tiny/small/base/large), ``img_size``, ``patch_size``
  (checkpoints written before the objectives existed, ``model.encoder.*`` with the sizes in
  ``hyper_parameters``, are read through ``pacofr.checkpointing.legacy_keys``);
- nothing (``path=None``): a randomly initialised encoder, the floor every probe is compared with.

The state dict is timm's own and loads strictly; a different evaluation ``img_size`` resamples the
position embedding (timm's ``checkpoint_filter_fn``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from pacofr.checkpointing import legacy_keys
from pacofr.errors import UserError, refused_pickle
from pacofr.models.sizes import timm_name

ENCODER_PREFIX = "objective.encoder."
SIDECAR_SUFFIX = ".json"


@dataclass(frozen=True)
class EncoderSpec:
    """What it takes to rebuild the encoder: the timm architecture and its input geometry."""

    model_name: str
    img_size: int
    patch_size: int = 16

    def create(self, img_size: int | None = None) -> VisionTransformer:
        return timm.create_model(
            self.model_name,
            pretrained=False,
            num_classes=0,
            img_size=img_size or self.img_size,
            patch_size=self.patch_size,
        )


class CheckpointError(UserError):
    """The file is not a pacofr pretraining checkpoint or exported encoder."""


def load_checkpoint(path: str | os.PathLike[str], trust_checkpoint: bool = False) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``; a checkpoint that needs arbitrary code to load is
    refused unless ``trust_checkpoint`` (only for files you made yourself)."""
    if Path(path).is_file() and not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise CheckpointError(
            f"{path} is not a complete PyTorch checkpoint (truncated, damaged or another kind of file)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_checkpoint:
            raise CheckpointError(f"{path}: {refused_pickle(err) or ' '.join(str(err).split())}") from err
        return torch.load(path, map_location="cpu", weights_only=False)


def encoder_from_checkpoint(ckpt: dict[str, Any]) -> tuple[dict[str, torch.Tensor], EncoderSpec]:
    """The encoder's timm state dict and spec out of a Lightning pretraining checkpoint dict."""
    if not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError("checkpoint lacks 'state_dict' (not a Lightning checkpoint?)")
    ckpt = {**ckpt, "state_dict": dict(ckpt["state_dict"])}  # the upgrade below renames in place: not the caller's
    legacy_keys.upgrade_checkpoint(ckpt)
    state = {k[len(ENCODER_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(ENCODER_PREFIX)}
    if not state:
        raise CheckpointError(f"checkpoint has no parameters under {ENCODER_PREFIX!r} (not a pacofr pretraining run?)")
    described = ckpt.get(legacy_keys.ENCODER_SPEC_KEY)
    if not described:
        raise CheckpointError(
            f"checkpoint does not say which encoder it holds (no {legacy_keys.ENCODER_SPEC_KEY!r} entry and no "
            "encoder_size hyper-parameter)"
        )
    try:
        spec = EncoderSpec(
            timm_name(described["encoder_size"]), int(described["img_size"]), int(described.get("patch_size", 16))
        )
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"checkpoint's encoder description {described} is incomplete or unknown: {err}") from err
    return state, spec


def read_exported(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], EncoderSpec]:
    from safetensors.torch import load_file

    path = Path(path)
    sidecar = path.with_suffix(SIDECAR_SUFFIX)
    if not sidecar.is_file():
        raise CheckpointError(f"{path}: missing sidecar {sidecar.name} (timm model name and img size)")
    meta = json.loads(sidecar.read_text())
    spec = EncoderSpec(meta["model_name"], int(meta["img_size"]), int(meta.get("patch_size", 16)))
    return load_file(str(path)), spec


def load_state_into(model: VisionTransformer, state: dict[str, torch.Tensor]) -> None:
    """Strict load; the position embedding is resampled when the grid differs (timm's filter)."""
    state = checkpoint_filter_fn(dict(state), model)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"encoder weights do not match {type(model).__name__}: missing {result.missing_keys[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}"
        )


def load_backbone(
    path: str | os.PathLike[str] | None,
    img_size: int | None = None,
    model_name: str = "vit_base_patch16_224",
    patch_size: int = 16,
    trust_checkpoint: bool = False,
) -> VisionTransformer:
    """Build the encoder at ``img_size`` (default: the pretraining size) with the weights at ``path``.

    ``path=None`` gives a random encoder of ``model_name`` (``img_size`` required then).
    """
    if path is None:
        if img_size is None:
            raise ValueError("a random encoder needs img_size")
        return EncoderSpec(model_name, img_size, patch_size).create()
    path = Path(path)
    if path.suffix == ".safetensors":
        state, spec = read_exported(path)
    else:
        state, spec = encoder_from_checkpoint(load_checkpoint(path, trust_checkpoint))
    model = spec.create(img_size)
    load_state_into(model, state)
    return model


def spec_of(path: str | os.PathLike[str], trust_checkpoint: bool = False) -> EncoderSpec:
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_exported(path)[1]
    return encoder_from_checkpoint(load_checkpoint(path, trust_checkpoint))[1]


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def spec_dict(spec: EncoderSpec) -> dict[str, Any]:
    return asdict(spec)
