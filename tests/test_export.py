"""Export a (fabricated) pretraining checkpoint and load it back with plain timm: same features."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from pacofr.eval.backbone import CheckpointError, load_backbone
from pacofr.export import export_encoder


def fake_pretraining_checkpoint(path, img_size: int = 32) -> torch.nn.Module:
    """What a pacofr pretraining checkpoint holds: the encoder under ``model.encoder.`` (plus other
    modules of the method) and the hyper-parameters that name its architecture."""
    torch.manual_seed(0)
    encoder = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=img_size)
    state = {f"model.encoder.{k}": v for k, v in encoder.state_dict().items()}
    state["model.decoder.proj.weight"] = torch.randn(4, 4)  # not part of the export
    hp = {"encoder_size": "tiny", "img_size": img_size, "patch_size": 16, "mask_ratio": 0.75}
    torch.save({"state_dict": state, "hyper_parameters": hp, "global_step": 10}, path)
    return encoder.eval()


def test_export_then_timm_loads_strictly_with_equal_features(tmp_path, load_exported):
    ckpt = tmp_path / "last.ckpt"
    encoder = fake_pretraining_checkpoint(ckpt)
    out = export_encoder(ckpt, tmp_path / "export")
    assert out.name == "encoder.safetensors"
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["model_name"] == "vit_tiny_patch16_224" and meta["img_size"] == 32 and meta["format"] == "timm"
    model = load_exported(out)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), encoder(x))
        # load_backbone reads both sources to the same weights
        torch.testing.assert_close(load_backbone(out).eval()(x), encoder(x))
        torch.testing.assert_close(load_backbone(ckpt).eval()(x), encoder(x))


def test_strict_load_detects_a_wrong_file(tmp_path):
    ckpt = tmp_path / "bad.ckpt"
    torch.save(
        {
            "state_dict": {"model.encoder.foo": torch.zeros(1)},
            "hyper_parameters": {"encoder_size": "tiny", "img_size": 32},
        },
        ckpt,
    )
    with pytest.raises(CheckpointError, match="missing"):
        load_backbone(ckpt)
    with pytest.raises(CheckpointError, match="objective.encoder"):
        torch.save({"state_dict": {"x": torch.zeros(1)}, "hyper_parameters": {}}, ckpt)
        load_backbone(ckpt)


def test_backbone_resamples_position_embedding_for_another_size(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    fake_pretraining_checkpoint(ckpt, img_size=32)
    model = load_backbone(ckpt, img_size=64)
    assert model.pos_embed.shape[1] == 1 + 16
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 192)


class Custom:  # an arbitrary class: weights_only loading must refuse to import it
    pass


def test_untrusted_pickle_in_checkpoint_is_refused(tmp_path):
    ckpt = tmp_path / "odd.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"thing": Custom()}}, ckpt)
    # refused, naming the global it holds; never the advice to switch the check off
    with pytest.raises(CheckpointError, match=r"refused to load the file: it holds `test_export\.Custom`") as err:
        load_backbone(ckpt)
    assert "weights_only" not in str(err.value) and "trust_checkpoint" not in str(err.value)
