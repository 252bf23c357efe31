"""facexlib models load from a local weights folder with the network blocked; ParseNet's labels are
mapped to the contract; a missing weight file is one clear error naming the fetch command."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from data_prep import weights
from data_prep.parse.facexlib_parsers import PARSENET_LABELS, PARSENET_TO_CONTRACT, FacexlibParser
from pacofr.data.format import LABEL_IDS, LABEL_NAMES

# The ResNet-50 RetinaFace takes seconds to build and 100 MB to save: the fast tests use MobileNet-0.25.
FAST_MODELS = ("retinaface_mobile0.25", "bisenet", "parsenet")
PARSENET_HAIR, BISENET_NOSE = PARSENET_LABELS.index("hair"), LABEL_IDS["nose"]


def _save_random_weights(folder, key, edit=None):
    torch.manual_seed(0)
    state = weights.build_network(key).state_dict()
    if edit:
        edit(state)
    torch.save(state, folder / weights.WEIGHTS[key].filename)


def _parsenet_always_hair(state):
    """Last conv: zero weights, bias one-hot on ParseNet's 'hair' channel: every pixel is hair."""
    state["out_mask_conv.conv2d.weight"].zero_()
    state["out_mask_conv.conv2d.bias"].zero_()
    state["out_mask_conv.conv2d.bias"][PARSENET_HAIR] = 5.0


def _bisenet_always_nose(state):
    """Head features forced to 1 (BN scale 0, shift 1) and only the 'nose' channel reads them."""
    state["conv_out.conv.bn.weight"].zero_()
    state["conv_out.conv.bn.bias"].fill_(1.0)
    state["conv_out.conv_out.weight"].zero_()
    state["conv_out.conv_out.weight"][BISENET_NOSE] = 1.0


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    _save_random_weights(folder, "retinaface_mobile0.25")
    _save_random_weights(folder, "bisenet", _bisenet_always_nose)
    _save_random_weights(folder, "parsenet", _parsenet_always_hair)
    return folder


@pytest.fixture
def no_network(monkeypatch):
    """Any socket creation fails: a download attempt would surface as this error."""

    class Blocked(socket.socket):
        def __init__(self, *args, **kwargs):
            raise OSError("network blocked by test")

    monkeypatch.setattr(socket, "socket", Blocked)


def test_file_names_are_facexlibs_own():
    import inspect

    import facexlib.detection as det
    import facexlib.parsing as par

    source = inspect.getsource(det) + inspect.getsource(par)
    for spec in weights.WEIGHTS.values():
        assert spec.url in source and spec.url.endswith("/" + spec.filename)


def test_loaders_work_from_local_files_with_the_network_blocked(weights_dir, no_network):
    from data_prep.detect.retinaface import RetinaFaceDetector

    with pytest.raises(OSError, match="blocked"):
        socket.create_connection(("127.0.0.1", 9))
    detector = RetinaFaceDetector(weights_dir, model="retinaface_mobile0.25", max_side=160, candidate_threshold=0.0)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (120, 160, 3), np.uint8), rng.integers(0, 255, (200, 90, 3), np.uint8)]
    faces = detector.detect(images)  # mixed sizes in one batch
    assert len(faces) == 2
    for per_image in faces:
        for face in per_image:
            assert face.landmarks5.shape == (5, 2) and 0.0 <= face.score <= 1.0
            assert np.isfinite(face.box).all()
    crops = [rng.integers(0, 255, (64, 64, 3), np.uint8) for _ in range(2)]
    nose = FacexlibParser(weights_dir, "bisenet").parse(crops)
    assert [m.shape for m in nose] == [(64, 64)] * 2 and all(m.dtype == np.uint8 for m in nose)
    assert all((m == BISENET_NOSE).all() for m in nose)  # BiSeNet's ids are the contract's


def test_parsenet_labels_are_mapped_to_the_contract(weights_dir, no_network):
    assert sorted(PARSENET_LABELS) == sorted(LABEL_NAMES)  # same 19 classes, another order
    for parsenet_id, name in enumerate(PARSENET_LABELS):
        assert LABEL_NAMES[PARSENET_TO_CONTRACT[parsenet_id]] == name
    assert (
        PARSENET_TO_CONTRACT[[2, 6, 7, 13, 17, 18]] == [10, 2, 3, 17, 14, 16]
    ).all()  # nose, brows, hair, neck, cloth
    crop = np.random.default_rng(1).integers(0, 255, (48, 48, 3), np.uint8)
    # 64 px input instead of 512 only to keep the test fast (ParseNet is fully convolutional).
    (labels,) = FacexlibParser(weights_dir, "parsenet", input_size=64).parse([crop])
    assert (labels == LABEL_IDS["hair"]).all()  # ParseNet's channel 13 arrives as the contract's 17


def test_missing_weight_file_is_one_clear_error(tmp_path):
    with pytest.raises(weights.MissingWeightsError) as err:
        weights.weight_path(tmp_path, "bisenet")
    message = str(err.value)
    assert "parsing_bisenet.pth" in message and f"pacofr-prep weights fetch --dir {tmp_path}" in message
    with pytest.raises(weights.MissingWeightsError, match="--weights-dir"):
        weights.weight_path(None, "retinaface_resnet50")


def test_run_without_weights_fails_with_the_message_not_a_trace(tmp_path, prep_cli, capsys, no_network):
    (tmp_path / "in").mkdir()
    argv = ["run", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--backend", "facexlib"]
    assert prep_cli([*argv, "--weights-dir", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "detection_Resnet50_Final.pth" in err and "pacofr-prep weights fetch" in err
    assert "Traceback" not in err and "urllib" not in err


def test_weights_check_reports_each_file(weights_dir, tmp_path, prep_cli, capsys, no_network):
    assert prep_cli(["weights", "check", "--dir", str(weights_dir), "--models", *FAST_MODELS]) == 0
    assert capsys.readouterr().out.count('"ok"') == 3
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "parsing_bisenet.pth").write_bytes(b"not a checkpoint")
    status = weights.check(broken, ("bisenet", "parsenet"))
    assert "cannot be loaded" in status["bisenet"] and "parsing_bisenet.pth" in status["bisenet"]
    assert "missing weight file" in status["parsenet"]
    assert prep_cli(["weights", "check", "--dir", str(broken), "--models", "bisenet"]) == 1


def test_fetch_without_internet_says_what_failed(tmp_path, prep_cli, capsys, no_network):
    assert prep_cli(["weights", "fetch", "--dir", str(tmp_path), "--models", "bisenet"]) == 2
    err = capsys.readouterr().err
    assert "could not download" in err and "parsing_bisenet.pth" in err and "Traceback" not in err


def test_pipeline_with_a_facexlib_parser_writes_valid_shards(raw_folder, weights_dir, tmp_path, no_network):
    """Offline detector + facexlib BiSeNet loaded from the folder: the crops' maps are BiSeNet's output."""
    from data_prep.merge import merge
    from data_prep.run import PrepConfig, run_chunk
    from pacofr.data.format import read_manifest

    inputs = tmp_path / "list.txt"
    inputs.write_text(f"{raw_folder / 'real/lfw_000.png'}\n{raw_folder / 'bad/empty.jpg'}\n")
    cfg = PrepConfig(
        input=str(inputs), out=str(tmp_path / "out"), backend="offline", parser="bisenet", image_size=64,
        weights_dir=str(weights_dir), progress=False, val_fraction=0.0,
    )  # fmt: skip
    report = run_chunk(cfg)
    assert report["images"] == {"empty_file": 1, "ok": 1} and report["parser"]["name"] == "bisenet"
    assert report["label_pixels"][BISENET_NOSE] == 64 * 64
    merge(tmp_path / "out")
    manifest = read_manifest(tmp_path / "out", count_samples=True)
    assert manifest.prep["parser"]["weights"] == "parsing_bisenet.pth"


def test_pipeline_with_retinaface_runs_batched(raw_folder, weights_dir, tmp_path, no_network):
    """RetinaFace (random weights: detections are arbitrary) through the whole chunk: every image accounted for."""
    from data_prep.run import PrepConfig, run_chunk

    inputs = tmp_path / "list.txt"
    names = ("real/lfw_000.png", "real/lfw_020.png", "bad/notes.txt")
    inputs.write_text("".join(f"{raw_folder / n}\n" for n in names))
    cfg = PrepConfig(
        input=str(inputs), out=str(tmp_path / "out"), backend="facexlib", detector="retinaface_mobile0.25",
        parser="bisenet", weights_dir=str(weights_dir), min_score=0.0, min_face_size=0.0, keep="largest",
        image_size=64, batch_size=2, progress=False,
    )  # fmt: skip
    report = run_chunk(cfg)
    assert sum(report["images"].values()) == 3 and report["images"]["not_an_image"] == 1
    assert report["detector"]["weights"] == "detection_mobilenet0.25_Final.pth"


@pytest.mark.slow
def test_resnet50_retinaface_loads_from_local_file(tmp_path, no_network):
    from data_prep.detect.retinaface import RetinaFaceDetector

    _save_random_weights(tmp_path, "retinaface_resnet50")
    detector = RetinaFaceDetector(tmp_path, model="retinaface_resnet50", max_side=128)
    assert len(detector.detect([np.zeros((100, 120, 3), np.uint8)])) == 1
