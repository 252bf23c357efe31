"""Throughput of the raw-image preprocessing stage (images/s).

1. The whole stage (decode -> detect -> align -> parse -> shards) with the offline backend over the
   demo folder (bundled real faces + pasted scenes + bad files), on this machine's CPU.
2. facexlib's RetinaFace (ResNet-50, MobileNet-0.25) and BiSeNet through this project's loaders, with
   random weights saved to a local file (the architectures' cost does not depend on the weights), at
   their real input sizes: detection on 960x720 photos (the stage's default --max-side 960 long side),
   parsing of 256 crops at BiSeNet's 512 input. Batch 1 vs batched.

Runs on GPU when one is present (``--device auto``). Example:
    OMP_NUM_THREADS=2 python bench/prep.py --json bench/prep_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_calls(fn, device: str, repeats: int, warmup: int = 1) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_stage(workdir: Path, num_synthetic: int, device: str) -> dict:
    from data_prep.demo_images import write_demo_images
    from data_prep.run import PrepConfig, run_chunk

    raw = workdir / "raw"
    write_demo_images(raw, num_synthetic=num_synthetic, seed=0)
    cfg = PrepConfig(input=str(raw), out=str(workdir / "out"), backend="offline", device=device, progress=False)
    report = run_chunk(cfg)
    return {
        "what": "whole stage, offline backend (skimage LBP cascade + geometric parser)",
        "images": report["inputs"],
        "faces": report["faces_written"],
        "seconds": report["elapsed_s"],
        "images_per_s": round(report["inputs"] / report["elapsed_s"], 2),
        "faces_per_s": round(report["faces_written"] / report["elapsed_s"], 2),
    }


def bench_models(workdir: Path, device: str, batch: int, repeats: int, detectors: list[str]) -> list[dict]:
    from data_prep import weights
    from data_prep.detect.retinaface import RetinaFaceDetector
    from data_prep.parse.facexlib_parsers import FacexlibParser

    wdir = workdir / "weights"
    wdir.mkdir(exist_ok=True)
    torch.manual_seed(0)
    for key in [*detectors, "bisenet"]:
        torch.save(weights.build_network(key).state_dict(), wdir / weights.WEIGHTS[key].filename)
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 255, (720, 960, 3), np.uint8) for _ in range(batch)]
    crops = [rng.integers(0, 255, (256, 256, 3), np.uint8) for _ in range(batch)]
    rows = []
    for key in detectors:
        # Random weights score every anchor near 0.5; a 0.9 candidate threshold keeps the NMS load
        # close to a trained model's (a handful of candidates), so detect() times what a real run pays.
        det = RetinaFaceDetector(wdir, model=key, device=device, max_side=960, candidate_threshold=0.9)
        x = torch.zeros(batch, 3, 736, 960, device=device)
        for b in (1, batch):
            with torch.inference_mode():
                sec = time_calls(lambda b=b, det=det, x=x: det.net(x[:b]), device, repeats)
            rows.append({"model": key, "input": "960x736 forward", "batch": b, "images_per_s": round(b / sec, 2)})
            sec = time_calls(lambda b=b, det=det: det.detect(photos[:b]), device, repeats)
            rows.append({"model": key, "input": "960x720 detect()", "batch": b, "images_per_s": round(b / sec, 2)})
    parser = FacexlibParser(wdir, "bisenet", device=device)
    for b in (1, batch):
        sec = time_calls(lambda b=b: parser.parse(crops[:b]), device, repeats)
        rows.append({"model": "bisenet", "input": "256 crop -> 512", "batch": b, "images_per_s": round(b / sec, 2)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=None, help="batched size (default 8 on CPU, 32 on GPU)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num-synthetic", type=int, default=24, help="pasted scenes in the stage benchmark")
    ap.add_argument("--skip-stage", action="store_true")
    ap.add_argument("--detectors", nargs="+", default=["retinaface_resnet50", "retinaface_mobile0.25"])
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    batch = args.batch or (32 if device.startswith("cuda") else 8)
    from data_prep.run import tool_versions

    env = {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "versions": tool_versions(),
    }
    results: dict = {"env": env}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_stage:
            results["stage"] = bench_stage(work, args.num_synthetic, device)
            print(json.dumps(results["stage"]))
        results["models"] = bench_models(work, device, batch, args.repeats, args.detectors)
    print(f"device {env['device']}  torch threads {env['torch_threads']}")
    print("| model | input | batch | images/s |\n|---|---|---|---|")
    for r in results["models"]:
        print(f"| {r['model']} | {r['input']} | {r['batch']} | {r['images_per_s']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
