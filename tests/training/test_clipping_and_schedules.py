"""Per-group clipping (the codebook's gradients no longer shrink the encoder's step), the codebook's own
schedule (full rate early in incubation while the backbone waits), incubation given in epochs, and non-finite
gradients under a finite loss skipped like a non-finite loss."""

from __future__ import annotations

import math

import lightning as L
import torch
from tiny_training import PoisonedPaCoFR, tiny_module

from pacofr.objectives import ParamGroup
from pacofr.objectives.interface import StepOutput
from pacofr.optim import pretrain_schedules
from pacofr.training.synthetic_batches import PremadeBatches, synthetic_batches


def optimizer_of(module) -> torch.optim.Optimizer:
    groups = module.named_param_groups()
    for g in groups:
        del g["names"]
    return torch.optim.AdamW(groups, lr=1e-3)


def set_grads(module, encoder_norm: float, codebook_norm: float) -> None:
    """Gradients of norm ``encoder_norm`` on the backbone (``main`` schedule), ``codebook_norm`` on the codebook's
    incubating parts (``codebook`` schedule)."""
    for p in module.parameters():
        p.grad = torch.ones_like(p) if p.requires_grad else None
    named = dict(module.named_parameters())
    by = {g["schedule"]: [] for g in module.named_param_groups()}
    for g in module.named_param_groups():
        by[g["schedule"]] += [named[n] for n in g["names"]]
    enc, cb = by["main"], by["codebook"]
    for params, target in ((enc, encoder_norm), (cb, codebook_norm)):
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        for p in params:
            p.grad.mul_(target / norm)


def test_codebook_gradients_no_longer_shrink_the_encoder_update():
    module = tiny_module(img_size=32, patch_size=8, decoder_dim=32)
    module.trainer = L.Trainer(accelerator="cpu", logger=False)
    optimizer = optimizer_of(module)
    set_grads(module, encoder_norm=0.5, codebook_norm=100.0)
    encoder_grad = module.objective.encoder.blocks[0].attn.qkv.weight.grad.clone()
    module.configure_gradient_clipping(optimizer, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    assert torch.equal(module.objective.encoder.blocks[0].attn.qkv.weight.grad, encoder_grad), "under the limit"
    norms = module._group_grad_norms(optimizer)
    assert abs(norms["codebook"].item() - 1.0) < 1e-4
    assert abs(norms["main"].item() - 0.5) < 1e-4
    # one global clip would have scaled the encoder's gradient by about 1/100
    set_grads(module, encoder_norm=0.5, codebook_norm=100.0)
    params = [p for p in module.parameters() if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    assert module.objective.encoder.blocks[0].attn.qkv.weight.grad.norm() < 0.02 * encoder_grad.norm()


def test_codebook_schedule_reaches_its_peak_during_incubation():
    groups = [ParamGroup("main"), ParamGroup("codebook", frozenset(), warmup_steps=10, after_incubation=False)]
    main, codebook = pretrain_schedules(
        groups, warmup_steps=100, total_steps=1000, min_lr_ratio=0.0, incubation_steps=200
    )
    assert [main(s) for s in (0, 100, 199)] == [0.0, 0.0, 0.0]  # the backbone waits out incubation
    assert codebook(9) == 1.0 and codebook(100) > 0.95  # the codebook at full rate from step 10
    assert main(200) == 1 / 100 and main(299) == 1.0  # then the backbone warms up
    assert codebook(999) < 0.01 and main(999) < 0.01


def test_incubation_in_epochs_becomes_steps_from_the_data(tmp_path):
    module = tiny_module(img_size=32, patch_size=8, decoder_dim=32, incubation_steps=None, incubation_epochs=1.5)
    module.objective.codebook_warmup_steps, module.hparams.warmup_steps = 1, 50
    batches = synthetic_batches(module.objective, batch=4, count=2, seed=0)
    data = PremadeBatches(batches, length=6)  # an epoch: 6 batches of 4 = 24 samples
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, datamodule=data)
    assert module.objective.incubation_steps == math.ceil(1.5 * 24 / 4) == 9
    # the module's schedules: the codebook at its peak after its own 1-step warmup, the backbone still waiting
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    tags = [g["group"] for g in trainer.optimizers[0].param_groups]
    at_step_1 = {tag: fn(1) for tag, fn in zip(tags, scheduler.lr_lambdas)}
    assert at_step_1["codebook/decay"] == 1.0 and at_step_1["main/decay"] == 0.0


class NaNGradients(PoisonedPaCoFR):
    """A finite loss whose gradients are NaN at the ``poison`` steps (0 x d sqrt(x)/dx at 0)."""

    def forward(self, batch, step: int = 0) -> StepOutput:
        total, terms, out = super(PoisonedPaCoFR, self).forward(batch, step)
        if step in self.poison:
            total = total + 0.0 * (self.encoder.cls_token.sum() * 0.0).sqrt()
        return StepOutput(total, terms, out)


def test_nonfinite_gradients_under_a_finite_loss_skip_the_step(tmp_path, caplog):
    torch.manual_seed(0)
    module = tiny_module(NaNGradients, img_size=32, patch_size=8, decoder_dim=32, warmup_steps=1, base_lr=1e-2)
    module.objective.poison = frozenset({2})
    snapshots = []

    class Snap(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            snapshots.append({k: v.clone() for k, v in pl_module.state_dict().items()})

    batches = synthetic_batches(module.objective, batch=4, count=3, seed=1)
    trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False, callbacks=[Snap()],
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0)  # fmt: skip
    with caplog.at_level("WARNING", logger="pacofr.training.nonfinite"):
        trainer.fit(module, datamodule=PremadeBatches(batches, 6))
    assert trainer.global_step == 4
    assert module.nonfinite.total == 1 and module.nonfinite.in_row == 0
    before, after = snapshots[2], snapshots[3]  # around step 2
    assert all(torch.equal(before[k], after[k]) for k in before), "a step with NaN gradients changed the module"
    assert not torch.equal(snapshots[3]["objective.encoder.cls_token"], snapshots[1]["objective.encoder.cls_token"])
    assert any("1 step(s) skipped" in r.getMessage() for r in caplog.records)
