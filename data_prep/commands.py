"""``pacofr-prep`` subcommands of the raw-image stage: run, merge, inspect, demo-images, weights {fetch,check}.

torch and facexlib are imported only where a command needs them (inside ``data_prep.weights`` and the
detector and parser loaders of ``data_prep.run``), so ``--help`` works without them loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from data_prep import weights
from data_prep.align import FFHQ_ZOOM
from data_prep.dataset_report import inspect_dataset
from data_prep.decode import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from data_prep.demo_images import write_demo_images
from data_prep.merge import IncompleteRunError, merge
from data_prep.run import PrepConfig, run_chunk
from pacofr.data.format import ManifestError


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def _run(args: argparse.Namespace) -> int:
    if not Path(args.input).exists():  # before loading any model: the input is the first thing to be wrong
        print(
            f"pacofr-prep run: error: no input at {args.input} (a folder of images or a file listing them)",
            file=sys.stderr,
        )
        return 2
    cfg = PrepConfig(
        input=args.input,
        out=args.out,
        num_chunks=args.num_chunks,
        chunk_index=args.chunk_index,
        backend=args.backend,
        detector=args.detector,
        parser=args.parser,
        weights_dir=args.weights_dir,
        device=args.device,
        image_size=args.size,
        zoom=args.zoom,
        min_score=args.min_score,
        min_face_size=args.min_face_size,
        keep=args.keep,
        val_fraction=args.val_fraction,
        max_per_shard=args.max_per_shard,
        batch_size=args.batch_size,
        decode_workers=args.decode_workers,
        max_pixels=args.max_pixels,
        min_side=args.min_side,
        progress=not args.no_progress,
        force=args.force,
    )
    try:
        report = run_chunk(cfg)
    except (weights.MissingWeightsError, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"pacofr-prep run: error: {err}", file=sys.stderr)
        return 2
    if report.get("skipped"):
        print(f"chunk {report['chunk_index']}/{report['num_chunks']} already done: skipped")
    else:
        print(
            f"chunk {report['chunk_index']}/{report['num_chunks']}: {report['inputs']} images, "
            f"{report['faces_written']} faces written, outcomes {report['images']}, "
            f"{report['images_per_s']} images/s"
        )
    return 0


def _merge(args: argparse.Namespace) -> int:
    try:
        path, summary = merge(args.out, expected_chunks=args.num_chunks)
    except IncompleteRunError as err:
        print(f"pacofr-prep merge: error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {path}: {summary['faces_written']} faces from {summary['inputs']} images, outcomes {summary['images']}"
    )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    try:
        inspect_dataset(args.root, sheet=args.sheet, num_samples=args.samples)
    except ManifestError as err:
        print(f"pacofr-prep inspect: error: {err}", file=sys.stderr)
        return 2
    return 0


def _weights(args: argparse.Namespace) -> int:
    keys = tuple(args.models) if args.models else weights.DEFAULT_FETCH  # --models: the parser checks the names
    if args.action == "fetch":
        try:
            for path in weights.fetch(args.dir, keys):
                print(f"ok {path}")
        except OSError as err:
            print(f"pacofr-prep weights fetch: error: {err}", file=sys.stderr)
            return 2
        return 0
    status = weights.check(args.dir, keys)
    print(json.dumps(status, indent=2))
    return 0 if all(v == "ok" for v in status.values()) else 1


def _demo_images(args: argparse.Namespace) -> int:
    counts = write_demo_images(args.out, num_synthetic=args.num_synthetic, seed=args.seed)
    print(f"wrote demo images to {args.out}: {counts}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        help="raw images -> aligned face crops + parsing maps (one chunk)",
        description="Process one chunk of a folder (or list file) of raw images into pacofr-faces/1 shards. "
        "Chunk index defaults to $SLURM_ARRAY_TASK_ID. A finished chunk is skipped; run `merge` after all chunks.",
    )
    p.add_argument("--input", required=True, help="folder of images (searched recursively) or a text file of paths")
    p.add_argument("--out", required=True, help="dataset folder (shards, _chunks/ reports, later _info.json)")
    p.add_argument("--num-chunks", type=int, default=1)
    p.add_argument("--chunk-index", type=int, default=_env_int("SLURM_ARRAY_TASK_ID", 0))
    p.add_argument(
        "--backend",
        choices=("offline", "facexlib"),
        default="facexlib",
        help="facexlib: RetinaFace + BiSeNet (needs --weights-dir); offline: no weights at all",
    )
    p.add_argument("--detector", choices=("cascade", "retinaface_resnet50", "retinaface_mobile0.25"), default=None)
    p.add_argument("--parser", choices=("geometric", "bisenet", "parsenet"), default=None)
    p.add_argument(
        "--weights-dir",
        default=os.environ.get("PACOFR_WEIGHTS_DIR"),
        help="folder with facexlib's weight files (default $PACOFR_WEIGHTS_DIR)",
    )
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:1 ...")
    p.add_argument("--size", type=int, default=256, help="crop side S")
    p.add_argument("--zoom", type=float, default=FFHQ_ZOOM, help="template zoom: 1.0 ArcFace tight, 0.76 FFHQ framing")
    p.add_argument("--min-score", type=float, default=None, help="detector score threshold (default per detector)")
    p.add_argument("--min-face-size", type=float, default=64.0, help="minimum face box side in source pixels")
    p.add_argument("--keep", choices=("all", "largest"), default="all")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--max-per-shard", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--decode-workers", type=int, default=4)
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="larger images are skipped (bomb guard)")
    p.add_argument("--min-side", type=int, default=DEFAULT_MIN_SIDE, help="smaller images are skipped")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--force", action="store_true", help="redo the chunk even if it is done")
    p.set_defaults(func=_run)

    p = subparsers.add_parser("merge", help="check all chunks are done; write _info.json and _summary.json")
    p.add_argument("--out", required=True)
    p.add_argument("--num-chunks", type=int, default=None, help="expected number of chunks (default: from reports)")
    p.set_defaults(func=_merge)

    p = subparsers.add_parser("inspect", help="print a dataset's summary and write a contact sheet PNG")
    p.add_argument("root")
    p.add_argument("--sheet", default=None, help="PNG path (default ROOT/_contact_sheet.png)")
    p.add_argument("--samples", type=int, default=32)
    p.set_defaults(func=_inspect)

    p = subparsers.add_parser(
        "demo-images", help="write a folder of raw demo photos (bundled real faces, pasted scenes, bad files)"
    )
    p.add_argument("--out", required=True)
    p.add_argument("--num-synthetic", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo_images)

    p = subparsers.add_parser("weights", help="fetch or check facexlib weight files")
    p.add_argument("action", choices=("fetch", "check"))
    p.add_argument("--dir", required=True)
    p.add_argument(
        "--models",
        nargs="+",
        choices=tuple(weights.WEIGHTS),
        default=None,
        help="default: all (retinaface_resnet50, retinaface_mobile0.25, bisenet, parsenet)",
    )
    p.set_defaults(func=_weights)
