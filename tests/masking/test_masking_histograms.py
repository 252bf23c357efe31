"""patch_region_histograms: shares of the 9 region groups per patch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from masker_label_maps import L, random_faces

from pacofr.data.format import NUM_REGIONS, REGION_IDS, label_to_region_lut
from pacofr.masking import patch_region_histograms


def test_hand_computed_example() -> None:
    seg = torch.zeros(32, 32, dtype=torch.long)  # 2x2 patches of 16x16
    seg[:16, :8] = L["l_brow"]  # patch 0: half l_brow, half r_brow -> brows 1.0
    seg[:16, 8:16] = L["r_brow"]
    seg[:16, 16:] = L["skin"]  # patch 1: 128 skin, 64 l_eye, 64 eye_g -> skin .5, eyes .5
    seg[:4, 16:32] = L["l_eye"]
    seg[4:8, 16:32] = L["eye_g"]
    # patch 2 stays background
    seg[16:, 16:] = L["cloth"]  # patch 3: 255 cloth + 1 nose pixel
    seg[20, 20] = L["nose"]
    expected = torch.zeros(4, NUM_REGIONS)
    expected[0, REGION_IDS["brows"]] = 1.0
    expected[1, REGION_IDS["skin"]] = 0.5
    expected[1, REGION_IDS["eyes"]] = 0.5
    expected[2, REGION_IDS["background"]] = 1.0
    expected[3, REGION_IDS["neck_cloth"]] = 255 / 256
    expected[3, REGION_IDS["nose"]] = 1 / 256
    hist = patch_region_histograms(seg, 16)
    assert hist.dtype == torch.float32
    torch.testing.assert_close(hist, expected)


def test_rows_sum_to_one_and_match_one_hot_pooling() -> None:
    lut = torch.tensor(label_to_region_lut())
    for seg in random_faces(4, seed=3) + [torch.randint(0, 19, (64, 96))]:
        for patch in (8, 16):
            hist = patch_region_histograms(seg, patch)
            rows, cols = seg.shape[0] // patch, seg.shape[1] // patch
            assert hist.shape == (rows * cols, NUM_REGIONS)
            torch.testing.assert_close(hist.sum(dim=1), torch.ones(rows * cols))
            one_hot = F.one_hot(lut[seg], NUM_REGIONS).permute(2, 0, 1).float().unsqueeze(0)
            reference = F.avg_pool2d(one_hot, patch)[0].flatten(1).T
            torch.testing.assert_close(hist, reference)


def test_batched_equals_per_sample() -> None:
    batch = torch.stack(random_faces(3, seed=5, size=64, width=96))
    hist = patch_region_histograms(batch, 16)
    assert hist.shape == (3, 4 * 6, NUM_REGIONS)
    for i in range(3):
        torch.testing.assert_close(hist[i], patch_region_histograms(batch[i], 16))
    # uint8 maps straight from the PNG decoder work too
    torch.testing.assert_close(patch_region_histograms(batch.to(torch.uint8), 16), hist)


@pytest.mark.parametrize(
    ("seg", "message"),
    [
        (torch.zeros(30, 32, dtype=torch.long), "not a whole number"),
        (torch.full((32, 32), 19, dtype=torch.long), "ids in"),
        (torch.full((32, 32), -1, dtype=torch.long), "ids in"),
        (torch.zeros(32, 32), "integer label ids"),
        (torch.zeros(32, dtype=torch.long), "must be"),
    ],
)
def test_bad_input_is_a_clear_error(seg: torch.Tensor, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        patch_region_histograms(seg, 16)
