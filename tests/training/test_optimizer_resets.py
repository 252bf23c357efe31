"""AdamW state that starts afresh: the backbone after a codebook-only incubation (its step count restarts, so its
first update is a fresh Adam's, not ~0.44x of it) and re-seeded codebook rows (their moments are zeroed)."""

from __future__ import annotations

import lightning as L
import torch
from tiny_training import tiny_module

from pacofr.training.optimizer_resets import reset_rows, restart_group_steps
from pacofr.training.synthetic_batches import PremadeBatches, synthetic_batches


def fit(module, steps: int) -> L.Trainer:
    batches = synthetic_batches(module.objective, batch=4, count=2, seed=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, datamodule=PremadeBatches(batches, length=8))
    return trainer


def steps_by_schedule(optimizer: torch.optim.Optimizer) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p in optimizer.state:
                out.setdefault(group["schedule"], set()).add(int(optimizer.state[p]["step"]))
    return out


def test_the_backbone_counts_its_adam_steps_from_the_end_of_incubation(tmp_path):
    module = tiny_module(img_size=32, patch_size=8, decoder_dim=32, incubation_steps=3)
    trainer = fit(module, steps=5)
    counts = steps_by_schedule(trainer.optimizers[0])
    assert counts["codebook"] == {5}  # trained from step 0
    assert counts["main"] == {2}  # steps 3 and 4: a fresh AdamW at the end of incubation, not one 3 steps old


def test_restart_gives_exactly_a_fresh_adam_step():
    """After frozen steps (zero gradients, lr 0), a restarted AdamW moves a parameter exactly as a fresh one."""
    w0 = torch.randn(8)
    grad = torch.randn(8)

    def adam(frozen_steps: int, restart: bool) -> torch.Tensor:
        p = torch.nn.Parameter(w0.clone())
        opt = torch.optim.AdamW([{"params": [p], "schedule": "main"}], lr=0.1, betas=(0.9, 0.95))
        for _ in range(frozen_steps):
            p.grad = torch.zeros(8)
            opt.param_groups[0]["lr"] = 0.0
            opt.step()
        if restart:
            assert restart_group_steps(opt, "main") == (1 if frozen_steps else 0)
        opt.param_groups[0]["lr"] = 0.1
        p.grad = grad.clone()
        opt.step()
        return p.detach()

    fresh = adam(0, restart=False)
    assert torch.equal(adam(80, restart=True), fresh)
    stale = adam(80, restart=False) - w0
    ratio = (stale.norm() / (fresh - w0).norm()).item()
    assert 0.3 < ratio < 0.6  # what the stale count did: a first update of ~0.44x


def test_reset_rows_zeroes_only_the_reseeded_rows():
    p = torch.nn.Parameter(torch.randn(6, 3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.randn(6, 3)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[p].items()}
    rows = torch.tensor([False, True, False, False, True, False])
    reset_rows(opt, {"codes": p}, {"codes": rows, "missing": rows})
    for key in ("exp_avg", "exp_avg_sq"):
        assert opt.state[p][key][rows].eq(0).all()
        assert torch.equal(opt.state[p][key][~rows], before[key][~rows])
    assert torch.equal(opt.state[p]["step"], before["step"])


def test_reseeded_codes_lose_their_moments_in_training(tmp_path):
    """In a real fit, a re-seeding step leaves the re-seeded codes' AdamW moments at zero right after it."""
    module = tiny_module(img_size=32, patch_size=8, decoder_dim=32, incubation_steps=0)
    codebook = module.objective.codebook
    codebook.dead_after, codebook.reseed_every = 1, 2
    seen = []
    take = codebook.take_reseeded

    def spy():
        rows = take()
        if rows:
            seen.append(rows["codes"].clone())
        return rows

    codebook.take_reseeded = spy
    trainer = fit(module, steps=2)  # the re-seeding falls on the last step's update: nothing moved it since
    assert seen and seen[-1].any()
    state = trainer.optimizers[0].state[codebook.codes]
    assert state["exp_avg"][seen[-1]].eq(0).all() and state["exp_avg"][~seen[-1]].abs().sum() > 0
