"""The one contract between the preprocessing stage and training: format ``pacofr-faces/1``.

Both ``data_prep`` (the writer) and ``pacofr`` (the reader) import this module; nothing else
crosses between them. It defines the per-sample keys, the label ids, the region groups used by
masking and the spatial loss, the left/right swap applied by horizontal flips, and the
``_info.json`` manifest with a validating reader.

A dataset folder holds ``_info.json`` and the tar shards it lists. Each shard may have a *sample index*
beside it, ``<shard>.idx`` (:data:`SAMPLE_INDEX_SUFFIX`), so a reader starting mid-shard seeks to a sample
instead of reading every sample before it. The index is optional (datasets written before it read as
before) and is not listed in the manifest: a reader checks it against its shard and ignores it when it
does not fit. Layout, all little-endian: the 8-byte magic :data:`SAMPLE_INDEX_MAGIC`, uint64 number of
samples, uint64 size of the shard in bytes, then one uint64 per sample: the byte offset in the tar of the
header of the sample's first member (a multiple of 512, increasing). A tool that rewrites a shard must
rewrite or delete its index.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pacofr.errors import UserError

if TYPE_CHECKING:  # annotations only: this module stays free of torch (data_prep reads it)
    import torch

FORMAT_VERSION = "pacofr-faces/1"
MANIFEST_NAME = "_info.json"
LABEL_SET = "celebamask19"
DEFAULT_IMAGE_SIZE = 256

# --- per-sample keys inside a shard (webdataset extensions) -----------------------------------
KEY_IMAGE = "jpg"  # aligned face crop, RGB, S x S
KEY_SEG = "seg.png"  # parsing map, single-channel uint8, S x S, label ids below
KEY_META = "json"  # source, face index, box, score, landmarks, alignment matrix, parser, ...
SAMPLE_KEYS = (KEY_IMAGE, KEY_SEG, KEY_META)

# --- label ids: the 19 CelebAMask-HQ classes in facexlib BiSeNet's output order ----------------
LABEL_NAMES: tuple[str, ...] = (
    "background",  # 0
    "skin",  # 1
    "l_brow",  # 2
    "r_brow",  # 3
    "l_eye",  # 4
    "r_eye",  # 5
    "eye_g",  # 6  eyeglasses
    "l_ear",  # 7
    "r_ear",  # 8
    "ear_r",  # 9  earring
    "nose",  # 10
    "mouth",  # 11 inner mouth
    "u_lip",  # 12
    "l_lip",  # 13
    "neck",  # 14
    "neck_l",  # 15 necklace
    "cloth",  # 16
    "hair",  # 17
    "hat",  # 18
)
NUM_LABELS = len(LABEL_NAMES)
LABEL_IDS: dict[str, int] = {name: i for i, name in enumerate(LABEL_NAMES)}

# A horizontal flip turns the subject's left part into the right one: swap these label pairs.
FLIP_SWAP_PAIRS: tuple[tuple[int, int], ...] = ((2, 3), (4, 5), (7, 8))


def flip_label_lut() -> list[int]:
    """Lookup table ``lut[label] -> label after a horizontal flip`` (length 256, uint8-safe)."""
    lut = list(range(256))
    for a, b in FLIP_SWAP_PAIRS:
        lut[a], lut[b] = b, a
    return lut


# --- region groups (ours): used by structured masking and the spatial-consistency loss ---------
REGION_GROUPS: dict[str, tuple[int, ...]] = {
    "background": (0,),
    "skin": (1,),
    "brows": (2, 3),
    "eyes": (4, 5, 6),
    "ears": (7, 8, 9),
    "nose": (10,),
    "mouth": (11, 12, 13),
    "neck_cloth": (14, 15, 16),
    "hair": (17, 18),
}
REGION_NAMES: tuple[str, ...] = tuple(REGION_GROUPS)
NUM_REGIONS = len(REGION_NAMES)
REGION_IDS: dict[str, int] = {name: i for i, name in enumerate(REGION_NAMES)}

# Facial component groups a structured masker may choose to cover. "face_boundary" is not a
# label group: it is the skin patches touching hair or background (computed by the masker).
MASKABLE_COMPONENTS: tuple[str, ...] = ("brows", "eyes", "nose", "mouth", "hair", "face_boundary")


def label_to_region_lut() -> list[int]:
    """Lookup table ``lut[label id] -> region group index`` (length NUM_LABELS)."""
    lut = [-1] * NUM_LABELS
    for gi, name in enumerate(REGION_NAMES):
        for label in REGION_GROUPS[name]:
            lut[label] = gi
    assert all(g >= 0 for g in lut), "every label belongs to exactly one region group"
    return lut


# --- landmarks in a sample's ``json`` -------------------------------------------------------
# ``landmarks5``: (x, y) in crop pixels, in the ArcFace/insightface order: the eye seen on the
# image's left, the eye seen on the image's right, nose tip, mouth corner on the image's left,
# mouth corner on the image's right. A horizontal flip maps x -> S - 1 - x and swaps 0<->1, 3<->4.
LANDMARK5_NAMES: tuple[str, ...] = (
    "eye_image_left",
    "eye_image_right",
    "nose",
    "mouth_image_left",
    "mouth_image_right",
)
LANDMARK5_FLIP_ORDER: tuple[int, ...] = (1, 0, 2, 4, 3)
# ``landmarks68``: the iBUG 300-W 68-point markup (0-16 jaw, 17-26 brows, 27-35 nose, 36-47 eyes,
# 48-67 mouth), (x, y) in crop pixels.
NUM_LANDMARKS68 = 68

# Keys of a sample's ``json`` that every writer fills (synthetic samples add pose, identity,
# expression, lighting and occluders; see data_prep.synth).
META_REQUIRED_KEYS: tuple[str, ...] = (
    "source",
    "face_index",
    "box",
    "score",
    "landmarks5",
    "align_matrix",
    "parser",
)


# --- sample ids ------------------------------------------------------------------------------
def sample_key(source: str, face_index: int) -> str:
    """Stable sample id: a hash of the source path and the face index (no dots: webdataset
    splits keys from extensions at the first dot)."""
    digest = hashlib.sha1(f"{source}\0{face_index}".encode()).hexdigest()
    return digest[:20]


def shard_name(split: str, index: int, prefix: str = "") -> str:
    """``train-000000.tar``; a prefix (e.g. a prep chunk id) goes between split and index."""
    middle = f"{prefix}-" if prefix else ""
    return f"{split}-{middle}{index:06d}.tar"


# --- per-shard sample index (optional sidecar, see the module docstring) -----------------------
SAMPLE_INDEX_SUFFIX = ".idx"
SAMPLE_INDEX_MAGIC = b"PFIDX\x00\x01\x00"  # "PFIDX", then format version 1
_SAMPLE_INDEX_HEADER = struct.Struct("<8sQQ")  # magic, number of samples, shard size in bytes


def sample_index_path(shard: str | os.PathLike[str]) -> Path:
    """``train-000000.tar`` -> ``train-000000.tar.idx``."""
    shard = Path(shard)
    return shard.with_name(shard.name + SAMPLE_INDEX_SUFFIX)


def encode_sample_index(offsets: list[int], shard_size: int) -> bytes:
    """The bytes of a shard's sample index: header, then one little-endian uint64 offset per sample."""
    header = _SAMPLE_INDEX_HEADER.pack(SAMPLE_INDEX_MAGIC, len(offsets), shard_size)
    return header + struct.pack(f"<{len(offsets)}Q", *offsets)


def decode_sample_index(data: bytes, num_samples: int, shard_size: int) -> tuple[int, ...]:
    """The sample offsets of an index, checked against its shard; ValueError (naming why) if it does not fit.

    The index must hold exactly ``num_samples`` offsets (the manifest's shard length), record the shard's
    current size, and its offsets must be increasing multiples of 512 inside the shard.
    """
    if len(data) < _SAMPLE_INDEX_HEADER.size:
        raise ValueError(f"index is {len(data)} bytes, shorter than its header")
    magic, count, size = _SAMPLE_INDEX_HEADER.unpack_from(data)
    if magic != SAMPLE_INDEX_MAGIC:
        raise ValueError(f"bad magic {magic!r} (expected {SAMPLE_INDEX_MAGIC!r})")
    if count != num_samples:
        raise ValueError(f"index lists {count} samples, the manifest {num_samples}")
    if size != shard_size:
        raise ValueError(f"index was written for a shard of {size} bytes, the shard has {shard_size}")
    if len(data) != _SAMPLE_INDEX_HEADER.size + 8 * count:
        raise ValueError(f"index is {len(data)} bytes, expected {_SAMPLE_INDEX_HEADER.size + 8 * count}")
    offsets = struct.unpack_from(f"<{count}Q", data, _SAMPLE_INDEX_HEADER.size)
    previous = -1
    for offset in offsets:
        if offset <= previous or offset % tarfile.BLOCKSIZE or offset >= shard_size:
            raise ValueError(f"bad offset {offset} (after {previous}, shard of {shard_size} bytes)")
        previous = offset
    return offsets


# --- manifest ----------------------------------------------------------------------------------
class ManifestError(UserError):
    """The dataset folder does not satisfy the ``pacofr-faces/1`` contract."""


@dataclass
class SplitInfo:
    num_samples: int
    filenames: list[str]
    shard_lengths: list[int]

    def validate(self, split: str) -> None:
        if len(self.filenames) != len(self.shard_lengths):
            raise ManifestError(
                f"split {split!r}: {len(self.filenames)} filenames but {len(self.shard_lengths)} shard_lengths"
            )
        if sum(self.shard_lengths) != self.num_samples:
            raise ManifestError(
                f"split {split!r}: num_samples={self.num_samples} but shard_lengths sum to {sum(self.shard_lengths)}"
            )
        if any(n < 0 for n in self.shard_lengths):
            raise ManifestError(f"split {split!r}: negative shard length")


@dataclass
class Manifest:
    image_size: int
    splits: dict[str, SplitInfo]
    source: str = ""
    created: str = ""
    prep: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT_VERSION
    label_set: str = LABEL_SET
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(out.pop("extra"))
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        known = {"image_size", "splits", "source", "created", "prep", "format", "label_set"}
        try:
            splits = {name: SplitInfo(**info) for name, info in data["splits"].items()}
            return cls(
                image_size=int(data["image_size"]),
                splits=splits,
                source=data.get("source", ""),
                created=data.get("created", ""),
                prep=data.get("prep", {}),
                format=data["format"],
                label_set=data.get("label_set", ""),
                extra={k: v for k, v in data.items() if k not in known},
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise ManifestError(f"malformed manifest: {err!r}") from err

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise ManifestError(f"dataset has no split {name!r} (has: {sorted(self.splits)})")
        return self.splits[name]

    def digest(self) -> str:
        """Hash of the manifest content (recorded in run folders to tie a run to its data)."""
        blob = json.dumps(self.to_json(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def write_manifest(root: str | os.PathLike[str], manifest: Manifest) -> Path:
    """Write ``_info.json`` atomically (temp file + rename) so readers never see half a file."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, info in manifest.splits.items():
        info.validate(name)
    fd, tmp = tempfile.mkstemp(prefix=".info-", suffix=".json.tmp", dir=root)
    with os.fdopen(fd, "w") as fh:
        json.dump(manifest.to_json(), fh, indent=2, sort_keys=True)
        fh.write("\n")
    final = root / MANIFEST_NAME
    os.replace(tmp, final)
    return final


def count_tar_samples(path: str | os.PathLike[str]) -> int:
    """Number of distinct sample keys in a tar shard (reads headers only)."""
    keys = set()
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile():
                keys.add(member.name.split(".", 1)[0])
    return len(keys)


def read_manifest(root: str | os.PathLike[str], check_shards: bool = True, count_samples: bool = False) -> Manifest:
    """Read and validate ``root/_info.json``.

    Raises :class:`ManifestError` with a message naming the problem: no manifest, wrong format
    version, inconsistent split, missing shard, or (with ``count_samples``) a shard whose
    number of samples differs from the manifest.
    """
    root = Path(root)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(
            f"no manifest {MANIFEST_NAME} in {root} — is this a pacofr dataset? "
            "Create one with `pacofr-prep synth` or `pacofr-prep run` + `pacofr-prep merge`."
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a JSON object")
    version = data.get("format")
    if version != FORMAT_VERSION:
        raise ManifestError(f"{path}: format {version!r} is not supported (expected {FORMAT_VERSION!r})")
    manifest = Manifest.from_json(data)
    if manifest.label_set != LABEL_SET:
        raise ManifestError(f"{path}: label_set {manifest.label_set!r}, expected {LABEL_SET!r}")
    for name, info in manifest.splits.items():
        info.validate(name)
        if not check_shards:
            continue
        for fname, expected in zip(info.filenames, info.shard_lengths):
            shard = root / fname
            if not shard.is_file():
                raise ManifestError(f"split {name!r}: shard {fname} listed in {MANIFEST_NAME} is missing")
            if count_samples:
                try:
                    found = count_tar_samples(shard)
                except (tarfile.TarError, OSError, EOFError) as err:
                    raise ManifestError(f"split {name!r}: shard {fname} is unreadable ({err})") from err
                if found != expected:
                    raise ManifestError(
                        f"split {name!r}: shard {fname} holds {found} samples but the manifest says {expected}"
                    )
    return manifest


def patch_grid(seg: torch.Tensor, patch_size: int) -> tuple[int, int]:
    """``(rows, cols)`` of the patch grid of a label map ``(..., H, W)``; clear error when it does not tile."""
    if seg.dim() < 2:
        raise ValueError(f"label map must be (H, W) or (B, H, W), got shape {tuple(seg.shape)}")
    if patch_size <= 0:
        raise ValueError(f"patch_size must be positive, got {patch_size}")
    height, width = seg.shape[-2:]
    if height % patch_size or width % patch_size or height == 0 or width == 0:
        raise ValueError(f"label map {height}x{width} is not a whole number of {patch_size}x{patch_size} patches")
    return height // patch_size, width // patch_size
