"""PretrainModule with each objective: the three methods train, incubation isolates the codebook, non-finite
steps are skipped together, a short run learns, and the encoder of a checkpoint is a timm ViT."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import timm
import torch
from tiny_training import tiny_module, trainer

from pacofr.data.datamodule import PretrainDataModule
from pacofr.eval.backbone import load_backbone
from pacofr.masking import RandomMasker, StructuredMasker
from pacofr.training.nonfinite import NonFiniteLossError

IMG = 64  # 4 x 4 patches of 16 px: tiny but enough for structured masking

METHODS = {"mae": RandomMasker, "fsfm": StructuredMasker, "pacofr": StructuredMasker}
PACOFR = {"spatial_weight": 0.1, "incubation_steps": 1}


def datamodule(root: Path, masker_cls=StructuredMasker, batch_size: int = 8) -> PretrainDataModule:
    return PretrainDataModule(
        root=str(root),
        batch_size=batch_size,
        num_workers=0,
        image_size=IMG,
        masker=masker_cls(patch_size=16, mask_ratio=0.75),
        shuffle_buffer=16,
    )


@pytest.fixture
def faces(tmp_path, make_shards) -> Path:
    return make_shards(tmp_path / "faces", {"train": [24, 16], "val": [8]}, size=72)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_fast_dev_run_each_method(method, faces, tmp_path):
    masker = METHODS[method]
    module = tiny_module(method, **(PACOFR if method == "pacofr" else {}))
    tr = trainer(tmp_path, fast_dev_run=2)
    tr.fit(module, datamodule=datamodule(faces, masker))
    logged = tr.callback_metrics
    assert math.isfinite(float(logged["loss/total"]))
    if method == "pacofr":
        assert "loss/spatial" in logged and "loss/codebook" in logged and "codebook/perplexity" in logged
    if method == "fsfm":
        assert "loss/rec_covered" in logged


class GradRecorder(L.Callback):
    """Per step: gradient norms of the encoder and of the codebook's incubating parts."""

    def __init__(self):
        self.encoder, self.codebook = [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        def norm(params):
            grads = [p.grad for p in params if p.grad is not None]
            return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0

        self.encoder.append(norm(pl_module.objective.encoder.parameters()))
        self.codebook.append(norm(pl_module.objective.codebook.incubation_parameters()))


def test_incubation_trains_only_the_codebook(faces, tmp_path):
    module = tiny_module(incubation_steps=3, spatial_weight=0.1)
    before = {k: v.clone() for k, v in module.objective.encoder.state_dict().items()}
    codes_before = module.objective.codebook.codes.detach().clone()
    recorder = GradRecorder()
    tr = trainer(tmp_path, max_steps=3, callbacks=[recorder], limit_val_batches=0)
    tr.fit(module, datamodule=datamodule(faces))
    assert recorder.encoder == [0.0, 0.0, 0.0], "no gradient may reach the encoder during incubation"
    assert all(g > 0 for g in recorder.codebook)
    for k, v in module.objective.encoder.state_dict().items():
        assert torch.equal(v, before[k]), f"encoder weight {k} moved during incubation"
    assert not torch.equal(module.objective.codebook.codes.detach(), codes_before)

    # a fresh trainer counts from step 0 again: 3 incubation steps, then 3 where everything learns
    recorder2 = GradRecorder()
    tr2 = trainer(tmp_path, max_steps=6, callbacks=[recorder2], limit_val_batches=0)
    tr2.fit(module, datamodule=datamodule(faces))
    post = list(zip(recorder2.encoder, recorder2.codebook))[3:]
    assert len(post) == 3 and all(e > 0 and c > 0 for e, c in post)


def test_nonfinite_loss_skips_then_stops(faces, tmp_path):
    module = tiny_module("poisoned", max_nonfinite_steps=3)
    module.objective.poison_from = 0
    before = {k: v.clone() for k, v in module.state_dict().items()}
    tr = trainer(tmp_path, max_steps=10, limit_val_batches=0)
    with pytest.raises(NonFiniteLossError, match="3 steps in a row"):
        tr.fit(module, datamodule=datamodule(faces))
    for k, v in module.state_dict().items():
        if v.is_floating_point() and not k.startswith("objective.codebook."):
            assert torch.equal(v, before[k]), f"{k} changed although every step was skipped"


def test_param_groups_spare_norms_biases_positions_and_codes():
    module = tiny_module()
    groups = module.named_param_groups()
    assert [g["group"] for g in groups] == ["codebook/decay", "codebook/no_decay", "main/decay", "main/no_decay"]
    no_decay = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    assert "objective.encoder.cls_token" in no_decay
    assert not module.objective.encoder.pos_embed.requires_grad, "fixed 2D sin-cos positions are not trained"
    assert "objective.codebook.codes" in no_decay
    assert any(n.endswith("norm1.weight") for n in no_decay) and any(n.endswith(".bias") for n in no_decay)
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    assert any(n.endswith("attn.qkv.weight") for n in decayed)
    named = {n for n, p in module.named_parameters() if p.requires_grad}
    assert decayed | no_decay == named and not decayed & no_decay, "every trained parameter in exactly one group"
    codebook = {n for g in groups if g["schedule"] == "codebook" for n in g["names"]}
    assert codebook and all(n.startswith("objective.codebook.") for n in codebook)


@pytest.mark.slow
def test_short_run_learns_and_uses_the_codebook(tmp_path, make_shards):
    """~100 steps: reconstruction loss falls and more than a quarter of the codes are in use."""
    root = make_shards(tmp_path / "faces", {"train": [64, 64], "val": [8]}, size=72)
    history: list[float] = []

    class Recorder(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if "loss/rec" in trainer.callback_metrics:  # absent while the codebook incubates
                history.append(float(trainer.callback_metrics["loss/rec"]))

    # base_lr is per 256 images: 0.03 x 16 / 256 = 1.9e-3 peak
    module = tiny_module(incubation_steps=10, spatial_weight=0.1, base_lr=0.03, warmup_steps=10)
    tr = trainer(tmp_path, max_steps=100, callbacks=[Recorder()], limit_val_batches=0, log_every_n_steps=1)
    tr.fit(module, datamodule=datamodule(root, batch_size=16))
    learned = history
    assert len(learned) >= 80
    first, last = sum(learned[:10]) / 10, sum(learned[-10:]) / 10
    assert all(math.isfinite(v) for v in history)
    assert last < 0.9 * first, f"reconstruction loss did not fall: {first:.4f} -> {last:.4f}"
    usage = float(module.objective.codebook.usage_fraction())
    assert usage > 0.25, f"only {usage:.0%} of the codes are in use"


def test_checkpoint_encoder_loads_strictly_into_timm(faces, tmp_path):
    """A pretraining checkpoint's encoder is a timm VisionTransformer: the eval loader builds one with
    timm and loads the weights strictly, and it gives the module's own features."""
    module = tiny_module()
    tr = trainer(tmp_path, max_steps=1, limit_val_batches=0)
    tr.fit(module, datamodule=datamodule(faces))
    ckpt_path = tmp_path / "model.ckpt"
    tr.save_checkpoint(ckpt_path)
    vit = load_backbone(ckpt_path)  # strict load into timm.create_model("vit_tiny_patch16_224", img_size=64)
    assert type(vit) is timm.models.vision_transformer.VisionTransformer
    x = torch.randn(2, 3, IMG, IMG)
    module.eval()
    vit.eval()
    with torch.no_grad():
        assert torch.allclose(vit.forward_features(x), module.objective.encoder.forward_features(x), atol=1e-5)
