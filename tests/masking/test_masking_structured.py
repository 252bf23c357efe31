"""Structured (CRFR-P) masker: the covered component is fully masked, the rest is filled in proportion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from masker_label_maps import L, component_touching, ellipse, random_faces

from pacofr.data.format import MASKABLE_COMPONENTS, REGION_IDS
from pacofr.masking import NO_COVERED_GROUP, StructuredMasker, num_masked_patches, patch_region_histograms
from pacofr.masking.structured_masker import proportional_quotas

FACE_BOUNDARY = MASKABLE_COMPONENTS.index("face_boundary")


def crafted_face() -> torch.Tensor:
    """Every maskable component present, each small enough to fit a 0.75 budget."""
    seg = np.zeros((224, 224), dtype=np.int64)
    seg[150:, 30:194] = L["cloth"]
    ellipse(seg, 80, 112, 60, 75, L["hair"])
    ellipse(seg, 115, 112, 75, 55, L["skin"])
    seg[82:90, 70:100] = L["l_brow"]
    seg[82:90, 124:154] = L["r_brow"]
    ellipse(seg, 100, 85, 5, 12, L["l_eye"])
    ellipse(seg, 100, 139, 5, 12, L["r_eye"])
    seg[110:140, 104:120] = L["nose"]
    seg[150:158, 90:134] = L["u_lip"]
    seg[158:166, 92:132] = L["l_lip"]
    return torch.from_numpy(seg)


@pytest.mark.parametrize("component", MASKABLE_COMPONENTS)
def test_each_component_is_fully_covered(component: str) -> None:
    seg = crafted_face()
    expected = component_touching(seg, 16, component)
    assert 0 < int(expected.sum()) <= 147
    masker = StructuredMasker(mask_ratio=0.75, component_probs={component: 1.0})
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):
        result = masker(seg, generator)
        assert result.covered == MASKABLE_COMPONENTS.index(component)
        assert torch.equal(result.covered_patches, expected)
        assert result.mask[expected].all()
        assert int(result.mask.sum()) == 147


def test_random_faces_covered_component_always_fully_masked() -> None:
    masker = StructuredMasker(mask_ratio=0.75)
    generator = torch.Generator().manual_seed(1)
    seen = set()
    for seg in random_faces(60, seed=41):
        result = masker(seg, generator)
        assert int(result.mask.sum()) == 147
        if result.covered == NO_COVERED_GROUP:
            continue
        seen.add(result.covered)
        reference = component_touching(seg, 16, MASKABLE_COMPONENTS[result.covered])
        assert torch.equal(result.covered_patches, reference)
        assert result.mask[reference].all()
    assert len(seen) >= 5  # the uniform default reaches (nearly) every component


def test_too_large_component_is_replaced_by_one_that_fits() -> None:
    seg = torch.full((224, 224), L["hair"], dtype=torch.long)  # hair touches all 196 patches
    seg[100:110, 60:80] = L["l_eye"]  # a small eye inside the hair
    masker = StructuredMasker(mask_ratio=0.5, component_probs={"hair": 1.0, "eyes": 1e-3})
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        result = masker(seg, generator)
        assert result.covered == MASKABLE_COMPONENTS.index("eyes")
        assert result.mask[component_touching(seg, 16, "eyes")].all() and int(result.mask.sum()) == 98


@pytest.mark.parametrize(
    ("paint", "probs"),
    [
        (lambda seg: seg.fill_(L["skin"]), None),  # no component at all
        (lambda seg: seg.fill_(L["hair"]), None),  # hair present but larger than the budget
        (lambda seg: seg.fill_(L["cloth"]).__setitem__((slice(0, 8), slice(0, 8)), L["nose"]), {"eyes": 1.0}),
    ],
)
def test_falls_back_to_random_when_nothing_fits(paint, probs) -> None:
    seg = torch.zeros(224, 224, dtype=torch.long)
    paint(seg)
    result = StructuredMasker(mask_ratio=0.75, component_probs=probs)(seg, torch.Generator().manual_seed(0))
    assert result.covered == NO_COVERED_GROUP
    assert not result.covered_patches.any()
    assert int(result.mask.sum()) == 147


def test_component_probabilities_are_respected() -> None:
    seg = crafted_face()
    masker = StructuredMasker(component_probs={"nose": 3.0, "mouth": 1.0})
    generator = torch.Generator().manual_seed(0)
    covered = [masker(seg, generator).covered for _ in range(400)]
    assert set(covered) == {MASKABLE_COMPONENTS.index("nose"), MASKABLE_COMPONENTS.index("mouth")}
    nose_share = covered.count(MASKABLE_COMPONENTS.index("nose")) / len(covered)
    assert 0.65 < nose_share < 0.85  # 0.75 +- 4.6 std


def test_fill_is_proportional_to_group_size() -> None:
    # Rows of pure groups: 8 rows background, 4 rows skin, 1 row hair (14 patches per row);
    # a 1-patch nose in the skin is the covered component.
    seg = torch.zeros(224, 224, dtype=torch.long)
    seg[128:192] = L["skin"]
    seg[192:208] = L["hair"]
    seg[208:224] = L["cloth"]
    seg[144:160, 96:112] = L["nose"]
    masker = StructuredMasker(mask_ratio=0.5, component_probs={"nose": 1.0})
    hist = patch_region_histograms(seg, 16)
    dominant = hist.argmax(dim=1)
    generator = torch.Generator().manual_seed(0)
    draws = 300
    counts = torch.zeros(9)
    for _ in range(draws):
        result = masker(seg, generator)
        assert result.covered == MASKABLE_COMPONENTS.index("nose")
        fill = result.mask & ~result.covered_patches
        counts += torch.bincount(dominant[fill], minlength=9).float()
    mean = counts / draws
    remaining_budget = 98 - 1
    available = ~component_touching(seg, 16, "nose")
    sizes = torch.bincount(dominant[available], minlength=9).float()
    expected = remaining_budget * sizes / sizes.sum()
    torch.testing.assert_close(mean, expected, atol=0.15, rtol=0.0)
    order = [REGION_IDS[g] for g in ("background", "skin", "hair")]
    assert mean[order[0]] > mean[order[1]] > mean[order[2]] > 0


def test_proportional_quotas_sum_exactly_and_are_unbiased() -> None:
    sizes = np.array([5, 0, 17, 3, 1, 40, 0, 2, 9])
    total = int(sizes.sum())
    for budget in (0, 1, 13, 50, 77):
        mean = np.zeros(9)
        for offset in range(total):  # every offset once = the exact expectation over a uniform offset
            quotas = proportional_quotas(sizes, budget, offset)
            assert int(quotas.sum()) == budget
            assert (quotas >= 0).all() and (quotas <= sizes).all()
            assert (np.abs(quotas - budget * sizes / total) < 1).all()
            mean += quotas / total
        np.testing.assert_allclose(mean, budget * sizes / total, atol=1e-9)
    with pytest.raises(ValueError, match="cannot spread"):
        proportional_quotas(sizes, 78, 0)


def test_touch_threshold_and_boundary_neighbours() -> None:
    seg = torch.full((64, 64), L["skin"], dtype=torch.long)  # 4x4 patches
    seg[:16] = L["hair"]  # top row pure hair: the contour runs along a patch edge
    seg[40, 40] = L["nose"]  # one nose pixel in patch (2, 2)
    generator = torch.Generator().manual_seed(0)
    plain = StructuredMasker(mask_ratio=0.5, component_probs={"face_boundary": 1.0})
    assert plain(seg, generator).covered == NO_COVERED_GROUP  # no patch holds skin and hair together
    near = StructuredMasker(mask_ratio=0.5, component_probs={"face_boundary": 1.0}, boundary_neighbours=True)
    result = near(seg, generator)
    assert result.covered == FACE_BOUNDARY
    assert torch.equal(result.covered_patches.reshape(4, 4).nonzero()[:, 0].unique(), torch.tensor([1]))
    nose = {"nose": 1.0}
    assert StructuredMasker(mask_ratio=0.5, component_probs=nose)(seg, generator).covered == 2
    strict = StructuredMasker(mask_ratio=0.5, component_probs=nose, touch_threshold=0.01)
    assert strict(seg, generator).covered == NO_COVERED_GROUP  # 1/256 of a patch is below 1 %


def test_bad_configuration_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown components"):
        StructuredMasker(component_probs={"ears": 1.0})
    with pytest.raises(ValueError, match="not all zero"):
        StructuredMasker(component_probs={"nose": 0.0})
    with pytest.raises(ValueError, match="expected 6"):
        StructuredMasker(component_probs=[1.0, 2.0])
    with pytest.raises(ValueError, match="touch_threshold"):
        StructuredMasker(touch_threshold=1.0)
    assert num_masked_patches(196, 0.75) == 147


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"boundary_neighbours": True},
        {"touch_threshold": 0.2},
        {"mask_ratio": 0.4},
        {"component_probs": {"hair": 1}},
    ],
)
def test_batch_equals_one_call_per_sample(options: dict) -> None:
    """The data workers call ``batch``: it must give every sample exactly what a call for it alone gives."""
    masker = StructuredMasker(**options)
    maps = random_faces(24, seed=29) + [crafted_face(), torch.zeros(224, 224, dtype=torch.long)]  # last: no cover
    segs = torch.stack(maps).to(torch.uint8)
    batched = masker.batch(segs, [torch.Generator().manual_seed(100 + i) for i in range(len(maps))])
    assert set(batched) == {"mask", "covered", "region_hist", "covered_patches"}
    assert int(batched["covered"][-1]) == NO_COVERED_GROUP
    for i, seg in enumerate(maps):
        alone = masker(seg, torch.Generator().manual_seed(100 + i))
        assert torch.equal(batched["mask"][i], alone.mask), f"sample {i}"
        assert int(batched["covered"][i]) == alone.covered
        assert torch.equal(batched["covered_patches"][i], alone.covered_patches)
        torch.testing.assert_close(batched["region_hist"][i], alone.region_hist, rtol=0, atol=0)
    assert (batched["mask"].sum(1) == num_masked_patches(196, masker.mask_ratio)).all()


def test_per_batch_component_covers_one_component_in_every_image_it_fits():
    """FSFM's per-batch draw: one component for the batch; the per-sample draw mixes them."""
    segs = torch.stack(random_faces(16, seed=3)).to(torch.uint8)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(16)]  # noqa: E731
    shared = StructuredMasker(per_batch_component=True).batch(segs, gens())
    own = StructuredMasker().batch(segs, gens())
    covered = shared["covered"][shared["covered"] >= 0].tolist()
    assert len(covered) >= 12 and len(set(covered)) == 1
    assert len(set(own["covered"].tolist())) > 1
    assert (shared["mask"].sum(1) == num_masked_patches(196, 0.75)).all()
    assert (shared["covered_patches"] <= shared["mask"]).all()
