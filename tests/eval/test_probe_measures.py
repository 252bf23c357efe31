"""The probe's telling measures: region-group shares (R², soft Dice), the calibrated per-part F1, and the
verification head learned on the training identities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pacofr.data.format import LABEL_IDS, REGION_IDS
from pacofr.eval.feature_probe import ProbeData, chance_scores, probe_scores
from pacofr.eval.probe_faces import FaceSet
from pacofr.eval.probe_parsing import (
    OFFSET_GRID,
    GroupShares,
    Tally,
    _offset_sweep,
    calibrate_offsets,
    mean_foreground,
    presence,
    share_r2,
    soft_dice,
)
from pacofr.eval.probe_verification import fit_projection

SIZE, GRID, SUB = 32, 4, 4  # 4 x 4 patches of 8 px; the probe's 4 x 4 sub-cells are 2 px
CELLS = GRID * SUB


# --- a face layout with small parts -----------------------------------------------------------------


def layout_faces(n: int, seed: int, features: str) -> FaceSet:
    """Skin on hair, a 2 x 2 px left eye and a 4 x 2 px upper lip at random places (tiny parts, as on real
    faces); ``features``: ``shares`` (each patch token holds its sub-cells' true class shares), ``position``
    (a one-hot of the patch's place: the position prior and nothing else)."""
    g = torch.Generator().manual_seed(seed)
    seg = torch.full((n, SIZE, SIZE), LABEL_IDS["hair"], dtype=torch.uint8)
    seg[:, 4:28, 6:26] = LABEL_IDS["skin"]
    for i in range(n):
        y, x = (int(v) * 2 for v in torch.randint(3, 10, (2,), generator=g))
        seg[i, y : y + 2, x : x + 2] = LABEL_IDS["l_eye"]
        y, x = (int(v) * 2 for v in torch.randint(8, 12, (2,), generator=g))
        seg[i, y : y + 2, x : x + 4] = LABEL_IDS["u_lip"]
    faces = FaceSet(seg=seg, landmarks=torch.rand(n, 68, 2, generator=g) * SIZE, pose=torch.rand(n, 3, generator=g))
    if features == "shares":
        shares = faces.region_shares(CELLS).view(n, 19, GRID, SUB, GRID, SUB).permute(0, 2, 4, 3, 5, 1)
        tokens = shares.reshape(n, GRID * GRID, SUB * SUB * 19)
    else:
        tokens = torch.eye(GRID * GRID).expand(n, -1, -1)
    faces.tokens = tokens + 0.001 * torch.randn(tokens.shape, generator=g)
    faces.identity = torch.arange(n) // 2
    return faces


def layout_data(features: str) -> ProbeData:
    train, test = layout_faces(400, 0, features), layout_faces(120, 1, features)
    pairs = [(i, i + 1 if i % 4 == 0 else (i + 7) % 120, i % 4 == 0) for i in range(0, 120, 2)]
    return ProbeData(train=train, test=test, test_occluded=test, pairs=pairs, train_indices=list(range(400)))


@pytest.fixture(scope="module")
def telling() -> dict:
    return probe_scores(layout_data("shares"), seed=0)


@pytest.fixture(scope="module")
def position_only() -> dict:
    return probe_scores(layout_data("position"), seed=0)


def test_features_that_carry_the_shares_score_r2_and_f1_near_one(telling):
    assert telling["parsing_r2"]["clean"] > 0.98
    assert telling["parsing_f1_present"]["clean"] > 0.95
    assert telling["parsing_dice"]["clean"] > 0.9  # soft: the near-zero noise of every cell counts a little
    groups = telling["parsing_groups"]["clean"]
    assert groups["f1_present"]["eyes"] > 0.95 and groups["f1_present"]["mouth"] > 0.95  # the small parts too
    assert np.isnan(groups["f1_present"]["nose"])  # no face has a nose: no score, not a free 0 or 1


def test_position_alone_scores_lower_on_every_new_measure(telling, position_only):
    assert abs(position_only["parsing_r2"]["clean"]) < 0.05  # the prior is all it knows: R² against it ~0
    assert position_only["parsing_f1_present"]["clean"] < telling["parsing_f1_present"]["clean"] - 0.2
    assert position_only["parsing_dice"]["clean"] < telling["parsing_dice"]["clean"] - 0.1
    small = position_only["parsing_groups"]["clean"]["f1_present"]
    assert small["eyes"] < 0.3 and small["mouth"] < 0.5


def test_chance_row_of_the_new_measures_is_the_prior(position_only):
    chance = chance_scores(layout_data("position"))
    assert chance["parsing_r2"]["clean"] == pytest.approx(0.0, abs=1e-9)
    assert chance["parsing_f1_present"]["clean"] == pytest.approx(position_only["parsing_f1_present"]["clean"], abs=0.1)
    assert chance["verification_learned"]["clean"] == pytest.approx(0.5, abs=0.05)


# --- the pieces -------------------------------------------------------------------------------------


def test_r2_and_dice_of_exact_and_prior_shares():
    truth = F.softmax(torch.randn(6, 10, 9, generator=torch.Generator().manual_seed(0)) * 3, -1)
    prior = truth.mean(0)
    assert torch.allclose(share_r2(truth, truth, prior), torch.ones(9, dtype=torch.float64))
    assert torch.allclose(share_r2(prior.expand(6, -1, -1), truth, prior), torch.zeros(9, dtype=torch.float64))
    dice = soft_dice(truth, truth)
    assert (dice > soft_dice(prior.expand(6, -1, -1), truth)).all() and (dice <= 1).all()


def test_tally_counts_pixels_of_faces_that_have_the_part():
    """Sub-cell labels scored against the true pixel shares: an exact pixel F1 of the block-wise labelling."""
    truth = F.one_hot(torch.tensor([[1, 1, 2, 2], [1, 1, 1, 1]]), 9).double()  # face 2 has no group 2
    truth[0, 1] = 0.0
    truth[0, 1, 1], truth[0, 1, 2] = 0.75, 0.25  # a mixed sub-cell: 3/4 skin, 1/4 brows
    labels = torch.tensor([[1, 2, 2, 2], [2, 2, 1, 1]])  # face 2's false 2s must not count
    f1 = Tally.of(labels, truth, presence(truth)).f1()
    assert f1[2] == pytest.approx(2 * 2.25 / (3 + 2.25))  # face 1: 3 cells labelled 2, 2.25 true, 2.25 both
    assert f1[1] == pytest.approx(2 * 3 / (3 + 5.75))  # faces 1 and 2: 3 cells labelled 1, 5.75 true, 3 both
    assert torch.isnan(f1[5])


def test_offset_sweep_matches_a_labelling_per_grid_value():
    g = torch.Generator().manual_seed(0)
    shares = torch.rand(30, 64, 9, generator=g)
    truth = F.softmax(5 * shares, -1)
    truth[:10, :, 2] = 0  # ten faces without group 2
    shares = shares + 0.3 * torch.randn(shares.shape, generator=g)
    offsets = torch.zeros(9)
    offsets[4] = 0.1
    sweep = _offset_sweep(shares, truth, presence(truth), offsets, group=3)
    for k, value in enumerate(OFFSET_GRID):
        trial = offsets.clone()
        trial[3] = value
        expected = mean_foreground(Tally.of((shares + trial).argmax(-1), truth, presence(truth)).f1())
        assert float(sweep[k]) == pytest.approx(expected, abs=1e-9)


def test_calibration_lets_a_shrunken_small_part_win():
    """Ridge predictions shrink a small part's share towards its prior; an argmax then never picks it.
    Offsets chosen on training faces bring it back."""
    faces = layout_faces(200, 3, "shares")
    truth = faces.group_shares(CELLS)
    prior = truth.mean(0, keepdim=True)
    shrunk = 0.4 * truth + 0.6 * prior  # as a strongly regularised head predicts
    offsets = calibrate_offsets(shrunk[:100].float(), truth[:100])
    test = GroupShares(shrunk[100:], truth[100:])
    eyes, mouth = REGION_IDS["eyes"], REGION_IDS["mouth"]
    plain = Tally.of(test.labels(torch.zeros(9)), test.truth, presence(test.truth)).f1()
    calibrated = Tally.of(test.labels(offsets), test.truth, presence(test.truth)).f1()
    assert plain[eyes] < 0.1 and plain[mouth] < 0.3  # the argmax (almost) never picks them
    assert calibrated[eyes] > 0.9 and calibrated[mouth] > 0.9
    assert offsets.abs().sum() > 0 and offsets[0] == 0  # background is the fixed point


# --- verification -----------------------------------------------------------------------------------


def identity_features(n_ids: int, per_id: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features: an identity direction (weak) plus four strong nuisance directions shared by all
    faces (pose, light: what varies within an identity)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(n_ids).repeat_interleave(per_id)
    identity = torch.randn(n_ids, 32, generator=g)[ids]
    nuisance = torch.randn(len(ids), 4, generator=g) @ (
        5 * torch.randn(4, 32, generator=torch.Generator().manual_seed(9))
    )
    return identity + nuisance + 0.3 * torch.randn(len(ids), 32, generator=g), ids


def test_learned_projection_beats_the_fixed_cosine_under_nuisance():
    train_x, train_ids = identity_features(150, 4, 0)
    test_x, test_ids = identity_features(50, 4, 1)
    train = FaceSet(torch.zeros(600, 4, 4, dtype=torch.uint8), torch.zeros(600, 68, 2), torch.zeros(600, 3))
    train.tokens, train.identity = train_x[:, None], train_ids
    test = FaceSet(torch.zeros(200, 4, 4, dtype=torch.uint8), torch.zeros(200, 68, 2), torch.zeros(200, 3))
    test.tokens = test_x[:, None]
    rng = np.random.default_rng(0)
    pairs = []
    for k in range(400):
        a = int(rng.integers(200))
        same = k % 2 == 0
        b = int(rng.choice([j for j in range(200) if (test_ids[j] == test_ids[a]) == same and j != a]))
        pairs.append((a, b, same))
    data = ProbeData(train=train, test=test, test_occluded=test, pairs=pairs, train_indices=list(range(600)))
    from pacofr.eval.feature_probe import _verification

    out = _verification(data, torch.Generator().manual_seed(0))
    assert out["verification_learned"]["clean"] > 0.95
    assert out["verification_learned"]["clean"] > out["verification"]["clean"] + 0.15
    projection = fit_projection(train_x, train_ids, torch.Generator().manual_seed(0))
    assert projection.matrix.shape[0] == 32 and projection.shrinkage < 1.0  # whitening was chosen, not skipped
