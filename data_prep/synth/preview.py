"""A contact sheet of synthetic faces, for eyeballing: face | parsing map | face + map + landmarks."""

from __future__ import annotations

import cv2
import numpy as np

from data_prep.synth.generate import render_sample
from pacofr.data.format import NUM_LABELS

# One fixed, distinguishable colour per label (background black).
LABEL_COLOURS = np.array(
    [
        [0, 0, 0],
        [204, 0, 0],
        [76, 153, 0],
        [204, 204, 0],
        [51, 51, 255],
        [204, 0, 204],
        [0, 255, 255],
        [255, 204, 204],
        [102, 51, 0],
        [255, 0, 0],
        [102, 204, 0],
        [255, 255, 0],
        [0, 0, 153],
        [0, 0, 204],
        [255, 51, 153],
        [0, 204, 204],
        [0, 51, 0],
        [255, 153, 51],
        [0, 204, 0],
    ],
    dtype=np.uint8,
)
assert len(LABEL_COLOURS) == NUM_LABELS


def contact_sheet(
    seed: int = 0, count: int = 16, size: int = 256, columns: int = 4, occluder_prob: float = 0.3
) -> np.ndarray:
    """RGB uint8 sheet of ``count`` faces; each tile shows the face, its map, and both blended with landmarks."""
    tiles = []
    for index in range(count):
        rgb, labels, meta = render_sample(seed, index, size, max(1, count // 2), occluder_prob)
        coloured = LABEL_COLOURS[labels]
        blend = cv2.addWeighted(rgb, 0.6, coloured, 0.4, 0)
        dot = max(1, size // 128)
        for x, y in meta["landmarks68"]:
            cv2.circle(blend, (int(round(x)), int(round(y))), dot, (0, 255, 0), -1)
        for x, y in meta["landmarks5"]:
            cv2.circle(blend, (int(round(x)), int(round(y))), dot + 1, (255, 0, 0), -1)
        tiles.append(np.concatenate([rgb, coloured, blend], 1))
    rows = [np.concatenate(tiles[r : r + columns], 1) for r in range(0, count, columns)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, 0)
