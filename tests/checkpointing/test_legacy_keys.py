"""Checkpoints written before the objectives existed (``model.encoder.*``, ``spatial_head.*``, the encoder's size
only in the hyper-parameters) resume in the current layout: names mapped in the state dict, the recorded
optimiser names and name-keyed optimiser state; a resume from such a file continues exactly like one from the
same checkpoint in the current layout."""

from __future__ import annotations

import lightning as L
import torch
from tiny_training import tiny_module

from pacofr.checkpointing import optim_keys
from pacofr.checkpointing.legacy_keys import ENCODER_SPEC_KEY, upgrade_checkpoint, upgrade_name
from pacofr.eval.backbone import encoder_from_checkpoint
from pacofr.training.synthetic_batches import PremadeBatches, synthetic_batches


def to_old_name(name: str) -> str:
    """The inverse of ``upgrade_name``: how the pre-objective module named a parameter."""
    inner = name.removeprefix("objective.")
    return inner if inner.startswith(("spatial_head.", "affinity_proj.", "teacher.")) else "model." + inner


def as_pre_objective(checkpoint: dict) -> dict:
    """A current checkpoint rewritten the way the pre-objective module wrote it."""
    old = dict(checkpoint)
    old["state_dict"] = {to_old_name(k): v for k, v in checkpoint["state_dict"].items()}
    old["state_dict"]["_forward.encoder.cls_token"] = torch.zeros(1)  # the duplicate alias of older files
    old[optim_keys.NAMES_KEY] = [[[to_old_name(n) for n in g] for g in opt] for opt in checkpoint[optim_keys.NAMES_KEY]]
    spec = old.pop(ENCODER_SPEC_KEY)
    old["hyper_parameters"] = {"encoder_size": spec["encoder_size"], "img_size": spec["img_size"], "use_codebook": True}
    return old


def test_names_map_both_ways():
    for name in (
        "objective.encoder.blocks.0.attn.qkv.weight",
        "objective.codebook.codes",
        "objective.spatial_head.proj.bias",
    ):
        assert upgrade_name(to_old_name(name)) == name
    assert upgrade_name("objective.encoder.cls_token") == "objective.encoder.cls_token"


def test_upgrade_maps_names_drops_the_alias_and_describes_the_encoder():
    ckpt = {
        "state_dict": {"model.encoder.cls_token": 1, "_forward.encoder.cls_token": 1, "teacher.x": 2},
        optim_keys.NAMES_KEY: [[["model.encoder.cls_token"], ["teacher.x"]]],
        "optimizer_states": [
            {"param_groups": [{"params": ["model.encoder.cls_token"]}], "state": {"model.encoder.cls_token": 3}}
        ],
        "hyper_parameters": {"encoder_size": "tiny", "img_size": 64},
    }
    assert upgrade_checkpoint(ckpt)
    assert ckpt["state_dict"] == {"objective.encoder.cls_token": 1, "objective.teacher.x": 2}
    assert ckpt[optim_keys.NAMES_KEY] == [[["objective.encoder.cls_token"], ["objective.teacher.x"]]]
    state = ckpt["optimizer_states"][0]
    assert state["param_groups"][0]["params"] == ["objective.encoder.cls_token"]
    assert state["state"] == {"objective.encoder.cls_token": 3}
    assert ckpt[ENCODER_SPEC_KEY] == {"encoder_size": "tiny", "img_size": 64, "patch_size": 16}
    assert not upgrade_checkpoint(ckpt), "a current checkpoint is left alone"


def fit(module, batches, steps: int, root, ckpt_path=None) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(root), deterministic=True,
    )  # fmt: skip
    trainer.fit(module, datamodule=PremadeBatches(batches, steps + 2), ckpt_path=ckpt_path)
    return trainer


def test_a_pre_objective_checkpoint_resumes_like_a_current_one(tmp_path):
    def build():
        torch.manual_seed(0)
        return tiny_module(spatial_weight=0.1, incubation_steps=1, img_size=32, patch_size=8, decoder_dim=32)

    module = build()
    batches = synthetic_batches(module.objective, batch=4, count=4, seed=3)
    trainer = fit(module, batches, 2, tmp_path / "first")
    current = tmp_path / "current.ckpt"
    trainer.save_checkpoint(current)
    checkpoint = torch.load(current, map_location="cpu", weights_only=True)
    old = tmp_path / "old.ckpt"
    torch.save(as_pre_objective(checkpoint), old)

    state, spec = encoder_from_checkpoint(torch.load(old, map_location="cpu", weights_only=True))  # eval reads it
    assert spec.img_size == 32 and state.keys() == module.objective.encoder.state_dict().keys()

    resumed = {}
    for name, path in (("current", current), ("old", old)):
        torch.manual_seed(1)
        again = build()
        fit(again, batches, 4, tmp_path / name, ckpt_path=str(path))
        resumed[name] = again.state_dict()
    assert resumed["current"].keys() == resumed["old"].keys()
    for key, value in resumed["current"].items():
        assert torch.equal(value, resumed["old"][key]), key
    assert not torch.equal(
        resumed["old"]["objective.encoder.blocks.0.attn.qkv.weight"],
        module.state_dict()["objective.encoder.blocks.0.attn.qkv.weight"],
    )
