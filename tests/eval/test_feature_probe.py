"""The probe protocol: features that carry a label are read, features that carry none score as chance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pacofr.eval.datasets import SynthFaces
from pacofr.eval.feature_probe import (
    FaceSet,
    ProbeData,
    ProbeSettings,
    chance_scores,
    draw_train_indices,
    encode_faces,
    measure_value,
    probe_scores,
)
from pacofr.models.sizes import build_encoder


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    pytest.importorskip("cv2")  # the generator needs the `prep` extra
    from data_prep.cli import main

    root = tmp_path_factory.mktemp("synth") / "faces"
    assert main(["synth", "--out", str(root), "--n", "24", "--size", "64", "--val-fraction", "0.25", "--quiet"]) == 0
    return root


SIZE, GRID = 32, 4  # 4 x 4 patches of 8 px
PATCHES = GRID * GRID


def make_faces(n: int, informative: bool, seed: int, identities: np.ndarray) -> FaceSet:
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(1, 19, (n, GRID, GRID), generator=g)
    seg = classes.repeat_interleave(SIZE // GRID, 1).repeat_interleave(SIZE // GRID, 2).to(torch.uint8)
    pose = torch.rand(n, 3, generator=g) * 60 - 30
    template = torch.rand(68, 2, generator=torch.Generator().manual_seed(99)) * 16 + 8
    template[36], template[45] = torch.tensor([8.0, 12.0]), torch.tensor([24.0, 12.0])
    landmarks = template + torch.randn(n, 68, 2, generator=g) * 2
    ident = torch.randn(int(identities.max()) + 1, 48, generator=torch.Generator().manual_seed(7))[identities] * 5
    if informative:
        onehot = torch.nn.functional.one_hot(classes.view(n, PATCHES), 19).float()
        marks = torch.cat([landmarks.view(n, -1) / SIZE, torch.zeros(n, PATCHES * 9 - 136)], 1).view(n, PATCHES, 9)
        tokens = torch.cat(
            [onehot, (pose / 90)[:, None].expand(-1, PATCHES, -1), marks, ident[:, None].expand(-1, PATCHES, -1)], -1
        )
    else:
        tokens = torch.randn(n, PATCHES, 19 + 3 + 9 + 48, generator=g)
    tokens = tokens + 0.01 * torch.randn(tokens.shape, generator=g)
    return FaceSet(seg=seg, landmarks=landmarks, pose=pose, tokens=tokens, identity=torch.as_tensor(identities))


def probe_data(informative: bool) -> ProbeData:
    test_ids = np.arange(60) % 12
    train = make_faces(1400, informative, 0, np.arange(1400) % 40)  # more faces than flattened features
    test = make_faces(60, informative, 1, test_ids)
    rng = np.random.default_rng(0)
    pairs = []
    for k in range(120):
        a = int(rng.integers(60))
        same = k % 2 == 0
        choices = [j for j in range(60) if (test_ids[j] == test_ids[a]) == same and j != a]
        pairs.append((a, int(rng.choice(choices)), same))
    return ProbeData(train=train, test=test, test_occluded=test, pairs=pairs, train_indices=list(range(1400)))


def test_features_that_carry_the_labels_are_read():
    data = probe_data(informative=True)
    scores, chance = probe_scores(data, seed=0), chance_scores(data)
    assert scores["parsing"]["clean"] > 0.95 > chance["parsing"]["clean"] + 0.5
    assert scores["pose"]["clean"] < 0.1 * chance["pose"]["clean"]
    assert scores["landmarks"]["clean"] < 0.3 * chance["landmarks"]["clean"]
    assert scores["verification"]["clean"] > 0.95 and scores["verification_learned"]["clean"] > 0.95
    assert scores["parsing_r2"]["clean"] > 0.95 and scores["parsing_f1_present"]["clean"] > 0.95
    assert scores["parsing"]["occluded"] == scores["parsing"]["clean"]  # the same faces: the same heads' answers


def test_features_that_carry_nothing_score_near_chance():
    data = probe_data(informative=False)
    scores, chance = probe_scores(data, seed=0), chance_scores(data)
    assert scores["parsing"]["clean"] == pytest.approx(chance["parsing"]["clean"], abs=0.03)
    assert scores["pose"]["clean"] > 0.9 * chance["pose"]["clean"]
    assert scores["landmarks"]["clean"] > 0.9 * chance["landmarks"]["clean"]
    assert abs(scores["verification"]["clean"] - 0.5) < 0.2
    assert abs(scores["verification_learned"]["clean"] - 0.5) < 0.2
    assert abs(scores["parsing_r2"]["clean"]) < 0.05  # no better than the per-position prior


def test_chance_row_is_the_training_mean():
    data = probe_data(informative=False)
    chance = chance_scores(data)
    expected = (data.test.pose - data.train.pose.mean(0)).abs().mean()
    assert chance["pose"]["clean"] == pytest.approx(float(expected), rel=1e-5)
    assert chance["verification"]["clean"] == pytest.approx(0.5, abs=0.05)


def test_probe_faces_are_drawn_by_the_seed():
    a, b = draw_train_indices(100, 30, 0), draw_train_indices(100, 30, 1)
    assert a == draw_train_indices(100, 30, 0) and a != b
    assert len(set(a)) == 30 and a == sorted(a)
    assert draw_train_indices(10, 30, 0) == list(range(10))


def test_encoded_faces_hold_four_layers_per_patch(synth_root):
    torch.manual_seed(0)
    encoder = build_encoder("tiny", 64, 16).eval()  # the probe resizes the faces to the encoder size
    faces = SynthFaces(synth_root, "val")
    encoded = encode_faces(encoder, faces, [0, 1, 2], 64, batch_size=2)
    assert encoded.tokens.shape == (3, 16, 4 * 192)
    assert encoded.seg.shape == (3, 64, 64) and encoded.landmarks.shape == (3, 68, 2)
    assert torch.isfinite(encoded.tokens).all()
    assert encode_faces(None, faces, [0, 1], 64, batch_size=2).tokens is None
    assert encoded.identity is not None and encoded.identity.shape == (3,)


def test_encoded_faces_hold_every_view(synth_root):
    torch.manual_seed(0)
    encoder = build_encoder("tiny", 64, 16).eval()
    faces = SynthFaces(synth_root, "val")
    both = encode_faces(encoder, faces, [0, 1, 2], 64, batch_size=2, views=("full", "subsets"))
    assert set(both.views) == {"full", "subsets"} and torch.equal(both.tokens, both.views["full"])
    assert both.views["subsets"].shape == both.views["full"].shape == (3, 16, 4 * 192)
    assert not torch.allclose(both.views["subsets"], both.views["full"])  # 4 of 16 patches at a time
    again = encode_faces(encoder, faces, [0, 1, 2], 64, batch_size=3, views=("subsets",))
    torch.testing.assert_close(again.tokens, both.views["subsets"])  # the same subsets, whatever the batching


def test_probe_settings_parse_views():
    settings = ProbeSettings.from_dict({"views": ["subsets"], "visible_fraction": 0.5, "subset_covers": 2})
    assert settings.views == ("subsets",) and settings.reading.visible(64) == 32
    assert ProbeSettings.from_dict({}).views == ("full", "subsets")  # both by default
    assert ProbeSettings.from_dict({}).reading.visible(64) == 16


@pytest.mark.parametrize(
    "bad",
    [{"views": []}, {"views": ["full", "full"]}, {"views": ["half"]}, {"visible_fraction": 0}, {"subset_covers": 0}],
)
def test_probe_settings_refuse_bad_views(bad):
    with pytest.raises(ValueError):
        ProbeSettings.from_dict(bad)


def test_scores_of_other_views_are_read_under_views():
    scores = {"parsing": {"clean": 0.3}, "views": {"subsets": {"parsing": {"clean": 0.2}}}}
    assert measure_value(scores, "parsing", "clean") == 0.3
    assert measure_value(scores, "parsing", "clean", "subsets") == 0.2
    assert measure_value(scores, "parsing_r2", "clean") is None  # an older result: no such column


def test_a_batch_is_normalised_as_image_by_image():
    from pacofr.eval.crop import to_tensor_image
    from pacofr.eval.probe_faces import to_batch

    images = [np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8) for i in range(3)]
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    assert torch.equal(to_batch(images, mean, std), torch.stack([to_tensor_image(im, mean, std) for im in images]))
