"""The embedded synthetic faces (``pacofr-faces/1`` shards written by ``pacofr-prep synth``) as a
map-style benchmark: parsing, 68 landmarks, head pose and identity pairs, all with exact ground truth.

Samples are indexed once (tar member offsets) and read lazily, so workers share nothing but paths.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from pacofr.data.format import KEY_IMAGE, KEY_META, KEY_SEG, LABEL_NAMES, read_manifest

from .base import DatasetLayoutError, Sample, decode_gray, decode_rgb, landmark_box

Member = tuple[str, int, int]  # shard path, data offset, size


class SynthFaces:
    """``split`` is a manifest split (``train``, ``val``, ...). Each sample: ``image``, ``seg`` (19
    labels), ``landmarks`` (68), ``landmarks5``, ``box`` (tight box of the 68 points), ``pose``
    (yaw, pitch, roll degrees) and ``identity`` when the json has them."""

    label_names = LABEL_NAMES
    num_points = 68

    def __init__(self, root: str | os.PathLike[str], split: str = "train"):
        self.root = Path(root)
        info = read_manifest(self.root).split(split)  # clear ManifestError for a missing split / shard
        self.samples: list[dict[str, Member]] = []
        for fname in info.filenames:
            self.samples.extend(_index_shard(self.root / fname))
        if len(self.samples) != info.num_samples:
            raise DatasetLayoutError(
                f"synth {split}: found {len(self.samples)} complete samples, manifest says {info.num_samples}"
            )
        self._identities: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def meta(self, index: int) -> dict[str, Any]:
        return json.loads(_read(self.samples[index][KEY_META]))

    def __getitem__(self, index: int) -> Sample:
        members = self.samples[index]
        meta = json.loads(_read(members[KEY_META]))
        sample: Sample = {"image": decode_rgb(_read(members[KEY_IMAGE]))}
        sample["seg"] = decode_gray(_read(members[KEY_SEG]))
        if "landmarks68" in meta:
            sample["landmarks"] = np.asarray(meta["landmarks68"], dtype=np.float32).reshape(68, 2)
            sample["box"] = landmark_box(sample["landmarks"])
        if "landmarks5" in meta:
            sample["landmarks5"] = np.asarray(meta["landmarks5"], dtype=np.float32).reshape(5, 2)
        if "pose" in meta:
            pose = meta["pose"]
            sample["pose"] = np.array([pose["yaw"], pose["pitch"], pose["roll"]], dtype=np.float32)
        if "identity" in meta:
            sample["identity"] = identity_of(meta)
        return sample

    def identities(self) -> list[Any]:
        """Identity of every sample (reads only the json members)."""
        if self._identities is None:
            self._identities = [identity_of(self.meta(i)) for i in range(len(self))]
        return self._identities


def identity_of(meta: dict[str, Any]) -> Any:
    ident = meta.get("identity")
    if isinstance(ident, dict):  # tolerate {"id": ..., ...} as well as a bare id
        ident = ident.get("id", ident.get("identity_id"))
    if ident is None:
        raise DatasetLayoutError(f"synthetic sample {meta.get('source', '?')} has no identity")
    return ident


class SynthPairs:
    """Verification pairs from a synthetic split: alternately a same-identity and a
    different-identity pair per anchor (deterministic given ``seed``), like LFW's balanced pairs."""

    def __init__(self, root: str | os.PathLike[str], split: str = "val", max_pairs: int = 6000, seed: int = 0):
        self.faces = SynthFaces(root, split)
        ids = self.faces.identities()
        by_id: dict[Any, list[int]] = defaultdict(list)
        for i, ident in enumerate(ids):
            by_id[ident].append(i)
        rng = np.random.default_rng(seed)
        repeated = [i for i in range(len(ids)) if len(by_id[ids[i]]) > 1]
        if not repeated or len(by_id) < 2:
            raise DatasetLayoutError(f"synth {split}: need >= 2 identities and one with >= 2 images for pairs")
        self.pairs: list[tuple[int, int, bool]] = []
        for k in range(max_pairs):
            if k % 2 == 0:
                a = repeated[int(rng.integers(len(repeated)))]
                others = [j for j in by_id[ids[a]] if j != a]
                b = others[int(rng.integers(len(others)))]
            else:
                a = int(rng.integers(len(ids)))
                b = int(rng.integers(len(ids)))
                while ids[b] == ids[a]:
                    b = int(rng.integers(len(ids)))
            self.pairs.append((a, b, ids[a] == ids[b]))
            if len(self.pairs) >= min(max_pairs, len(ids)):
                break

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        a, b, same = self.pairs[index]
        return {"image": self.faces[a]["image"], "image_b": self.faces[b]["image"], "issame": same, "index": index}


def _index_shard(path: Path) -> list[dict[str, Member]]:
    groups: dict[str, dict[str, Member]] = {}
    order: list[str] = []
    with tarfile.open(path) as tar:
        for m in tar:
            if not m.isfile() or "." not in m.name:
                continue
            key, ext = m.name.split(".", 1)
            if key not in groups:
                groups[key] = {}
                order.append(key)
            groups[key][ext] = (str(path), m.offset_data, m.size)
    complete = [groups[k] for k in order if all(e in groups[k] for e in (KEY_IMAGE, KEY_SEG, KEY_META))]
    return complete


def _read(member: Member) -> bytes:
    path, offset, size = member
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)
