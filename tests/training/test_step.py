"""One training step: ``PretrainModule`` under ``Trainer.fit`` and ``pacofr.training.step.train_step`` (what
``bench/train_step.py`` times) compute the same thing, bit for bit, incubation end, per-group clipping, lr scales,
re-seeding and the EMA updates included; and a group's declared clip limit is its own."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from tiny_training import tiny_module, trainer

from pacofr.objectives import MAEParse, ParamGroup
from pacofr.optim import scaled_lr
from pacofr.training.group_gradients import group_grad_norms
from pacofr.training.nonfinite import NonFiniteGuard
from pacofr.training.step import build_optimizer, clip_groups, group_clip_limits, train_step
from pacofr.training.synthetic_batches import PremadeBatches, synthetic_batches

STEPS = 5


def bare_run(module, batches, clip: float) -> tuple[dict[str, torch.Tensor], list[list[float]], list[int]]:
    """``STEPS`` steps of ``train_step``: the final state, each step's learning rate per optimiser group, and the
    groups' AdamW step counters at the end."""
    groups = module.named_param_groups()
    for g in groups:
        del g["names"]
    hp = module.hparams
    optimizer, schedule = build_optimizer(
        module.objective, groups, lr=scaled_lr(hp.base_lr, batches[0]["image"].shape[0]), betas=tuple(hp.betas),
        warmup_steps=hp.warmup_steps, total_steps=STEPS, min_lr_ratio=hp.min_lr_ratio,
    )  # fmt: skip
    module.objective.configure_run(STEPS, None, batches[0]["image"].shape[0])
    guard = NonFiniteGuard(hp.max_nonfinite_steps)
    module.train()
    # as Lightning's epoch start: its DataLoader iterator draws a base seed from the global generator
    torch.empty((), dtype=torch.int64).random_()
    lrs = []
    for step in range(STEPS):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        train_step(module.objective, optimizer, schedule, batches[step % len(batches)], step, guard=guard,
                   max_grad_norm=clip)  # fmt: skip
    return {k: v.clone() for k, v in module.state_dict().items()}, lrs, adam_steps(optimizer)


def adam_steps(optimizer) -> list[int]:
    """Each group's AdamW step counter (a parameter that has one: a parameter without a gradient has no state)."""
    return [max(int(optimizer.state[p].get("step", 0)) for p in g["params"]) for g in optimizer.param_groups]


class LearningRates(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def both_paths(tmp_path, kind, **settings):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = tiny_module(kind, img_size=32, patch_size=8, decoder_dim=32, base_lr=1e-2, **settings)
    twin = copy.deepcopy(module)
    batches = synthetic_batches(module.objective, batch=4, count=2, seed=0)
    lrs = LearningRates()
    torch.manual_seed(1)
    fit = trainer(tmp_path, max_steps=STEPS, gradient_clip_val=0.5, callbacks=[lrs])
    fit.fit(module, datamodule=PremadeBatches(batches, STEPS))
    lightning = {k: v.clone() for k, v in module.state_dict().items()}
    torch.manual_seed(1)
    bare, bare_lrs, bare_steps = bare_run(twin, batches, clip=0.5)
    return (lightning, lrs.lrs, adam_steps(fit.optimizers[0])), (bare, bare_lrs, bare_steps)


@pytest.mark.parametrize(
    ("kind", "settings"),
    [("mae", {}), ("fsfm", {}), (MAEParse, {"prior_warmup_steps": 1})],
    ids=["mae", "fsfm-ema-pairs", "mae-parse-prior-group"],
)
def test_bare_step_equals_the_lightning_step(tmp_path, kind, settings):
    """Bit for bit: per-group clipping, the probe group's own warmup, FSFM's EMA target (momentum pairs)."""
    (lightning, lrs, steps), (bare, bare_lrs, bare_steps) = both_paths(tmp_path, kind, **settings)
    assert lrs == bare_lrs and steps == bare_steps
    different = [k for k in lightning if not torch.equal(lightning[k], bare[k])]
    assert not different, different[:5]


def test_bare_step_equals_the_lightning_step_for_pacofr(tmp_path):
    """PaCo-FR, bit for bit: the codebook group's own warmup and lr scale, the backbone waiting out the incubation
    and its AdamW counters restarting when it ends, dead codes re-seeded (and their moments reset), the fp32
    codebook."""
    (lightning, lrs, steps), (bare, bare_lrs, bare_steps) = both_paths(
        tmp_path, "pacofr", incubation_steps=2, spatial_weight=0.1, codebook_warmup_steps=1, codebook_lr_scale=2.0,
        codebook_options={"proto_hidden": 16, "belief_hidden": 16, "dead_after": 1, "reseed_every": 1},
    )  # fmt: skip
    assert lrs == bare_lrs
    assert steps == bare_steps == [STEPS, STEPS, STEPS - 2, STEPS - 2, STEPS]  # codebook x2, main x2 restarted, probe
    assert lrs[0][0] == 2 * lrs[0][4] > 0 and lrs[1][2] == 0.0  # the codebook at 2x the prior, the backbone waits
    assert int(lightning["objective.codebook.reseeded_total"]) > 0
    different = [k for k in lightning if not torch.equal(lightning[k], bare[k])]
    assert not different, different[:5]


def test_a_group_clip_limit_overrides_the_trainer_limit():
    module = tiny_module("mae", img_size=32, patch_size=8, decoder_dim=32)

    objective = module.objective
    objective.parameter_groups = lambda: [  # type: ignore[method-assign]
        ParamGroup("head", frozenset(n for n, _ in objective.named_parameters() if n.startswith("decoder.")), clip=0.1),
        ParamGroup("main"),
    ]
    groups = objective.named_param_groups(0.05)
    for g in groups:
        del g["names"]
    optimizer, _ = build_optimizer(objective, groups, lr=1e-3, betas=(0.9, 0.95), warmup_steps=1, total_steps=10,
                                   min_lr_ratio=0.0)  # fmt: skip
    for p in objective.parameters():
        p.grad = torch.ones_like(p)
    limits = group_clip_limits(objective, 5.0)
    assert limits == {"head": 0.1, "main": 5.0}
    clip_groups(optimizer, group_grad_norms(optimizer), limits)
    norms = group_grad_norms(optimizer)
    assert abs(norms["head"].item() - 0.1) < 1e-4 and abs(norms["main"].item() - 5.0) < 1e-3
