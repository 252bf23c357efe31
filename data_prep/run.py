"""Run one chunk of the preprocessing stage: decode -> detect -> select -> align -> parse -> shards.

A chunk writes ``{split}-c{I:05d}-{n:06d}.tar`` shards (temp name + rename, byte-identical on a rerun),
then its JSON report, then its done-marker. A chunk whose marker exists (same settings) is skipped.
Nothing stops a chunk: a bad file is counted by reason, a crash inside one image is caught and
reported with its path, and the chunk goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from data_prep import chunks
from data_prep.align import FFHQ_ZOOM, align_face, canonical_template
from data_prep.decode import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, BadImage, decode_image
from data_prep.detect.base import select_faces
from data_prep.shard_writer import ShardSink, encode_jpeg, encode_label_png
from pacofr.data.format import DEFAULT_IMAGE_SIZE, NUM_LABELS, sample_key

BACKEND_DEFAULTS = {
    "offline": {"detector": "cascade", "parser": "geometric"},
    "facexlib": {"detector": "retinaface_resnet50", "parser": "bisenet"},
}
# Score scales differ: RetinaFace's softmax vs the cascade's window-count score (see detect/cascade.py).
DEFAULT_MIN_SCORE = {"cascade": 0.8, "retinaface_resnet50": 0.9, "retinaface_mobile0.25": 0.9}


@dataclass
class PrepConfig:
    input: str
    out: str
    num_chunks: int = 1
    chunk_index: int = 0
    backend: str = "facexlib"
    detector: str | None = None  # None: the backend's default
    parser: str | None = None
    weights_dir: str | None = None
    device: str = "auto"
    image_size: int = DEFAULT_IMAGE_SIZE
    zoom: float = FFHQ_ZOOM
    min_score: float | None = None  # None: the detector's default
    min_face_size: float = 64.0
    keep: str = "all"
    val_fraction: float = 0.05
    max_per_shard: int = 2000
    batch_size: int = 16
    decode_workers: int = 4
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE
    jpeg_quality: int = 95
    progress: bool = True
    force: bool = False

    def resolved(self) -> PrepConfig:
        if self.backend not in BACKEND_DEFAULTS:
            raise ValueError(f"unknown backend {self.backend!r}; choose {' or '.join(BACKEND_DEFAULTS)}")
        out = PrepConfig(**asdict(self))
        out.detector = out.detector or BACKEND_DEFAULTS[out.backend]["detector"]
        out.parser = out.parser or BACKEND_DEFAULTS[out.backend]["parser"]
        if out.min_score is None:
            out.min_score = DEFAULT_MIN_SCORE.get(out.detector, 0.9)
        if out.device == "auto":
            import torch

            out.device = "cuda" if torch.cuda.is_available() else "cpu"
        return out

    def output_settings(self) -> dict:
        """The settings that change the shards' bytes (a chunk done with other ones is not reused)."""
        keys = ("detector", "parser", "image_size", "zoom", "min_score", "min_face_size", "keep")
        keys += ("val_fraction", "max_per_shard", "batch_size", "max_pixels", "min_side", "jpeg_quality", "num_chunks")
        return {k: getattr(self, k) for k in keys}

    def fingerprint(self) -> str:
        blob = json.dumps(self.output_settings(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def build_models(cfg: PrepConfig):
    """(detector, parser) for a resolved config. facexlib models load from ``cfg.weights_dir`` only."""
    if cfg.detector == "cascade":
        from data_prep.detect.cascade import CascadeDetector

        detector = CascadeDetector()
    else:
        from data_prep.detect.retinaface import RetinaFaceDetector

        detector = RetinaFaceDetector(cfg.weights_dir, model=cfg.detector, device=cfg.device)
    if cfg.parser == "geometric":
        from data_prep.parse.geometric import GeometricParser

        parser = GeometricParser()
    else:
        from data_prep.parse.facexlib_parsers import FacexlibParser

        parser = FacexlibParser(cfg.weights_dir, model=cfg.parser, device=cfg.device)
    return detector, parser


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for dist in ("pacofr", "torch", "torchvision", "facexlib", "opencv-python-headless", "scikit-image", "numpy"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "absent"
    out["pillow"] = version("pillow")
    return out


def _error_detail(err: BaseException) -> str:
    last = traceback.extract_tb(err.__traceback__)[-1:] if err.__traceback__ else []
    where = f" at {Path(last[0].filename).name}:{last[0].lineno}" if last else ""
    return f"{type(err).__name__}: {err}{where}"


class _ChunkState:
    def __init__(self):
        self.images: Counter[str] = Counter()
        self.faces_dropped: Counter[str] = Counter()
        self.faces_written = 0
        self.errors: list[dict] = []  # every input that gave no sample, with its reason
        self.label_pixels = np.zeros(NUM_LABELS, np.int64)

    def fail(self, source: str, reason: str, detail: str) -> None:
        self.images[reason] += 1
        self.errors.append({"source": source, "reason": reason, "detail": detail})


def _per_item(fn, items: list, sources: list[str], on_error) -> list:
    """Run ``fn`` on a batch; if the batch fails, run it per item so one bad item fails alone.
    Returns per-item results, None where that item failed (``on_error(source, detail)`` is told)."""
    try:
        return fn(items)
    except Exception:
        results = []
        for item, source in zip(items, sources):
            try:
                results.append(fn([item])[0])
            except Exception as err:
                on_error(source, _error_detail(err))
                results.append(None)
        return results


def _remove_chunk_outputs(out: Path, prefix: str) -> None:
    for pattern in (
        f"*-{prefix}-*.tar",
        f".*-{prefix}-*.tar.tmp",
        f"*-{prefix}-*.tar.idx",
        f".*-{prefix}-*.tar.idx.tmp",
    ):
        for path in out.glob(pattern):
            path.unlink()


def run_chunk(cfg: PrepConfig) -> dict:
    """Process chunk ``cfg.chunk_index`` of ``cfg.num_chunks``; returns its report (also written to disk)."""
    cfg = cfg.resolved()
    out = Path(cfg.out)
    report_file, done_file = chunks.report_path(out, cfg.chunk_index), chunks.done_path(out, cfg.chunk_index)
    if done_file.is_file() and not cfg.force:
        marker = json.loads(done_file.read_text())
        if marker.get("fingerprint") != cfg.fingerprint():
            raise RuntimeError(
                f"chunk {cfg.chunk_index} in {out} was done with other settings ({marker.get('settings')}); "
                "use another --out, or --force to redo it"
            )
        report = json.loads(report_file.read_text())
        report["skipped"] = True
        return report

    detector, parser = build_models(cfg)  # fails fast (e.g. a missing weight file) before touching --out
    root, sources = chunks.list_inputs(cfg.input, exclude=cfg.out)
    start, end = chunks.chunk_bounds(len(sources), cfg.num_chunks, cfg.chunk_index)
    mine = sources[start:end]
    prefix = chunks.chunk_prefix(cfg.chunk_index)
    out.mkdir(parents=True, exist_ok=True)
    (out / chunks.CHUNKS_DIR).mkdir(exist_ok=True)
    done_file.unlink(missing_ok=True)
    report_file.unlink(missing_ok=True)
    _remove_chunk_outputs(out, prefix)  # a rerun after a kill starts clean and rewrites the same bytes
    started = {"num_chunks": cfg.num_chunks, "fingerprint": cfg.fingerprint(), "inputs": len(mine)}
    _write_json_atomic(chunks.started_path(out, cfg.chunk_index), started)

    template = canonical_template(cfg.image_size, cfg.zoom)
    state = _ChunkState()
    sinks = {s: ShardSink(out, s, cfg.max_per_shard, prefix=prefix) for s in ("train", "val")}
    t0 = time.perf_counter()

    def decode(source: str):
        try:
            return decode_image(root / source, cfg.max_pixels, cfg.min_side)
        except Exception as err:  # BadImage (a reason) or a decoder crash (an error for this file only)
            return err

    from tqdm import tqdm

    bar = tqdm(total=len(mine), unit="img", desc=f"chunk {cfg.chunk_index}", disable=not cfg.progress, smoothing=0.1)
    batches = [mine[b : b + cfg.batch_size] for b in range(0, len(mine), cfg.batch_size)]
    with ThreadPoolExecutor(max(1, cfg.decode_workers)) as pool:
        pending = [pool.submit(decode, s) for s in batches[0]] if batches else []
        for k, batch_sources in enumerate(batches):
            decoded = [f.result() for f in pending]
            # Decode the next batch while this one is detected and parsed.
            pending = [pool.submit(decode, s) for s in batches[k + 1]] if k + 1 < len(batches) else []
            good = []
            for source, result in zip(batch_sources, decoded):
                if isinstance(result, BadImage):
                    state.fail(source, result.reason, result.detail)
                elif isinstance(result, Exception):
                    state.fail(source, "error", f"decode: {_error_detail(result)}")
                else:
                    good.append((source, result))
            _process_images(good, detector, parser, cfg, template, sinks, state)
            bar.update(len(batch_sources))
    bar.close()
    written = {s: sink.close() for s, sink in sinks.items()}
    elapsed = time.perf_counter() - t0

    report = {
        "chunk_index": cfg.chunk_index,
        "num_chunks": cfg.num_chunks,
        "fingerprint": cfg.fingerprint(),
        "settings": cfg.output_settings(),
        "input": str(cfg.input),
        "backend": cfg.backend,
        "detector": detector.describe(),
        "parser": parser.describe(),
        "device": cfg.device,
        "versions": tool_versions(),
        "inputs": len(mine),
        "images": dict(sorted(state.images.items())),
        "faces_written": state.faces_written,
        "faces_dropped": dict(sorted(state.faces_dropped.items())),
        "shards": {s: [list(x) for x in w] for s, w in written.items()},
        "label_pixels": state.label_pixels.tolist(),
        "errors": state.errors,
        "elapsed_s": round(elapsed, 3),
        "images_per_s": round(len(mine) / elapsed, 3) if elapsed > 0 else None,
        "skipped": False,
    }
    _write_json_atomic(report_file, report)
    _write_json_atomic(done_file, {"fingerprint": cfg.fingerprint(), "settings": cfg.output_settings()})
    return report


def _process_images(good, detector, parser, cfg, template, sinks, state) -> None:
    """Detect, select, align, parse and write the faces of decoded images. Each image ends up counted
    once: ``ok`` (a face written), ``no_face`` / ``no_face_kept``, or ``error``."""
    if not good:
        return
    sources = [s for s, _ in good]

    def image_error(stage):
        return lambda source, detail: state.fail(source, "error", f"{stage}: {detail}")

    detections = _per_item(detector.detect, [im for _, im in good], sources, image_error("detect"))
    crops, metas, attempted = [], [], set()

    def face_error(stage):
        # One face failing is recorded; its image counts as an error only if none of its faces is written.
        return lambda source, detail: state.errors.append(
            {"source": source, "reason": "error", "detail": f"{stage}: {detail}"}
        )

    for (source, image), faces in zip(good, detections):
        if faces is None:
            continue
        kept, dropped = select_faces(faces, cfg.min_score, cfg.min_face_size, cfg.keep)
        state.faces_dropped.update(dropped)
        if not kept:
            reason = "no_face" if not faces else "no_face_kept"
            state.fail(source, reason, f"{len(faces)} candidate faces, none kept ({dropped})")
            continue
        attempted.add(source)
        for face_index, face in enumerate(kept):
            try:
                crop, matrix, landmarks = align_face(image, face.landmarks5, cfg.image_size, cfg.zoom)
            except Exception as err:
                face_error("align")(source, _error_detail(err))
                continue
            crops.append(crop)
            metas.append(
                {
                    "source": source,
                    "face_index": face_index,
                    "box": [round(float(v), 2) for v in face.box],
                    "score": round(float(face.score), 5),
                    "landmarks5": np.round(landmarks, 3).tolist(),
                    "align_matrix": np.round(matrix, 6).tolist(),
                    "template5": np.round(template, 3).tolist(),
                    "parser": parser.name,
                    "detector": detector.name,
                    "backend": cfg.backend,
                    "source_size": [int(image.shape[1]), int(image.shape[0])],
                }
            )
    pairs = [(crop, np.array(meta["landmarks5"])) for crop, meta in zip(crops, metas)]
    label_maps = _per_item(
        lambda items: parser.parse([c for c, _ in items], [lm for _, lm in items]),
        pairs,
        [m["source"] for m in metas],
        face_error("parse"),
    )
    written = set()
    for crop, labels, meta in zip(crops, label_maps, metas):
        if labels is None:
            continue
        split = chunks.split_of(meta["source"], cfg.val_fraction)
        key = sample_key(meta["source"], meta["face_index"])
        sinks[split].write(key, encode_jpeg(crop, cfg.jpeg_quality), encode_label_png(labels), meta)
        state.faces_written += 1
        state.label_pixels += np.bincount(labels.ravel(), minlength=NUM_LABELS)[:NUM_LABELS]
        written.add(meta["source"])
    for outcome, n in (("ok", len(written)), ("error", len(attempted - written))):
        if n:  # no zero entries: the report lists the outcomes that happened
            state.images[outcome] += n


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
