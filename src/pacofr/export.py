"""Export the pretrained encoder of a pacofr checkpoint as timm-loadable ``safetensors``.

``export_encoder(ckpt, out)`` writes ``encoder.safetensors`` (the ViT state dict, no head) and
``encoder.json`` (timm model name, img size, patch size, source checkpoint hash). Then::

    timm.create_model(name, pretrained=True, num_classes=0, img_size=..., patch_size=...,
                      pretrained_cfg_overlay={"file": ".../encoder.safetensors", "num_classes": 0})

loads it strictly (``num_classes: 0`` in the overlay tells timm the file has no classifier).

Command line: ``pacofr export --ckpt CKPT --out encoder.safetensors [--format timm]``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pacofr.cli_parser import OneLineArgumentParser
from pacofr.errors import run_reporting_user_errors
from pacofr.eval.backbone import (
    SIDECAR_SUFFIX,
    encoder_from_checkpoint,
    file_sha256,
    load_checkpoint,
    load_state_into,
    spec_dict,
)

EXPORT_FORMATS = ("timm",)


def export_encoder(
    ckpt: str | os.PathLike[str],
    out: str | os.PathLike[str],
    format: str = "timm",
    trust_checkpoint: bool = False,
) -> Path:
    """Write the encoder of ``ckpt`` to ``out`` (a folder, or a path ending in ``.safetensors``).

    The weights are checked by loading them strictly into the timm model before writing.
    Returns the ``.safetensors`` path; its sidecar ``.json`` sits next to it.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"export format {format!r} not supported (choose from {EXPORT_FORMATS})")
    from safetensors.torch import save_file

    state, spec = encoder_from_checkpoint(load_checkpoint(ckpt, trust_checkpoint))
    load_state_into(spec.create(), state)  # fail here, not in the user's timm call
    out = Path(out)
    target = out if out.suffix == ".safetensors" else out / "encoder.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, target)
    meta = {**spec_dict(spec), "format": format, "source": str(ckpt), "source_sha256": file_sha256(ckpt)}
    target.with_suffix(SIDECAR_SUFFIX).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """``pacofr export``: write the encoder, print where it went and how timm loads it."""
    parser = OneLineArgumentParser(prog="pacofr export", description="Export the encoder of a pacofr checkpoint.")
    parser.add_argument("--ckpt", required=True, help="pretraining checkpoint (.ckpt)")
    parser.add_argument("--out", required=True, help="output .safetensors path, or a folder (encoder.safetensors)")
    parser.add_argument("--format", default="timm", choices=EXPORT_FORMATS, help="export format")
    parser.add_argument(
        "--trust_checkpoint", action="store_true", help="allow a checkpoint that weights-only loading refuses"
    )
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    # a missing, damaged or refused checkpoint raises a user error: pacofr.cli prints its one line
    target = export_encoder(args.ckpt, args.out, args.format, args.trust_checkpoint)
    meta = json.loads(target.with_suffix(SIDECAR_SUFFIX).read_text())
    print(f"wrote {target} and {target.with_suffix(SIDECAR_SUFFIX).name}")
    print(
        f"load with: timm.create_model({meta['model_name']!r}, pretrained=True, num_classes=0, "
        f"img_size={meta['img_size']}, patch_size={meta['patch_size']}, "
        f"pretrained_cfg_overlay={{'file': {str(target)!r}, 'num_classes': 0}})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_user_errors("pacofr export", main, sys.argv[1:]))
