"""The non-finite-loss guard decides on the device: a non-finite step changes nothing (weights, AdamW
moments and step count, codebook buffers, EMA teacher), the run goes on, ``max_in_row`` in a row stop it
with a clear message, all ranks decide together, and the training step reads no device value on the host."""

from __future__ import annotations

import contextlib
import copy
import socket
from unittest import mock

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from quiet_trainer import quiet_trainer
from tiny_training import PoisonedPaCoFR
from tiny_training import tiny_module as build_tiny_module

from pacofr.training.host_copies import LaggedHostReader
from pacofr.training.module import PretrainModule
from pacofr.training.nonfinite import (
    NonFiniteGuard,
    NonFiniteLossError,
    skips_on_device,
)
from pacofr.training.synthetic_batches import PremadeBatches, synthetic_batches

IMG = 32  # 4 x 4 patches of 8 px


def tiny_module(module_cls=PretrainModule, **overrides) -> PretrainModule:
    """A PaCo-FR (spatial loss on, re-seeding every step) whose loss is NaN at ``module.objective.poison``."""
    kwargs = dict(
        img_size=IMG,
        patch_size=8,
        decoder_dim=32,
        num_codes=16,
        code_dim=8,
        codebook_options={"proto_hidden": 16, "belief_hidden": 16, "dead_after": 1, "reseed_every": 1},
        spatial_weight=0.1,
        warmup_steps=1,
        base_lr=1e-2,
        max_nonfinite_steps=3,
    )
    kwargs.update(overrides)
    torch.manual_seed(0)
    return build_tiny_module(PoisonedPaCoFR, module_cls=module_cls, **kwargs)


def fit(module: PretrainModule, steps: int, callbacks=(), **kwargs) -> L.Trainer:
    trainer = quiet_trainer(
        max_steps=steps, num_sanity_val_steps=0, limit_val_batches=0, callbacks=list(callbacks), **kwargs
    )
    trainer.fit(
        module, datamodule=PremadeBatches(synthetic_batches(module.objective, batch=4, count=3, seed=1), steps + 2)
    )
    return trainer


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[tuple[int, str], torch.Tensor]:
    return {(i, k): v.clone() for i, s in enumerate(optimizer.state.values()) for k, v in s.items()}


class StepSnapshot(L.Callback):
    """Module state and AdamW state just before and just after global step ``step``."""

    def __init__(self, step: int):
        self.step = step
        self.before = self.after = None

    def _take(self, trainer, pl_module):
        return copy.deepcopy(pl_module.state_dict()), optimizer_state(trainer.optimizers[0])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            self.before = self._take(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step + 1:  # the optimiser step and the bookkeeping are done
            self.after = self._take(trainer, pl_module)


def assert_same(before: dict, after: dict, what: str) -> None:
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"{what} {k} changed on a skipped step"


def assert_moved(before: dict, after: dict, keys: list) -> None:
    for k in keys:
        assert not torch.equal(before[k], after[k]), f"{k} did not change on a finite step"


# --- the guard itself ---------------------------------------------------------------------------------------
def test_guard_counts_on_device_and_stops_at_the_kth_in_a_row():
    guard = NonFiniteGuard(max_in_row=3)
    nan, one = torch.tensor(float("nan")), torch.tensor(1.0)
    assert guard.observe(one, 0).item() == 1.0
    assert guard.observe(nan, 1).item() == 0.0
    assert guard.observe(torch.tensor(float("inf")), 2).item() == 0.0
    assert (guard.in_row, guard.total) == (2, 2)
    assert guard.observe(one, 3).item() == 1.0  # a finite step resets the run, not the total
    assert (guard.in_row, guard.total) == (0, 2)
    guard.observe(nan, 4)
    guard.observe(nan, 5)
    with pytest.raises(NonFiniteLossError, match=r"for 3 steps in a row \(last at step 6\)"):
        guard.observe(nan, 6)
    assert guard.total_tensor.item() == 5
    # the host path gives the same decision as a bool
    fresh = NonFiniteGuard(max_in_row=2)
    assert fresh.check(one, 0) is True and fresh.check(nan, 1) is False
    with pytest.raises(NonFiniteLossError, match="2 steps in a row"):
        fresh.check(nan, 2)


def test_lagged_reader_reads_the_copy_of_n_steps_ago():
    reader = LaggedHostReader(keep=3)
    assert reader.latest() is None and reader.lagged(0) is None
    value = torch.zeros(2, dtype=torch.long)
    for step in range(5):
        value.fill_(step)
        reader.push(value, tag=step)  # a copy: later in-place changes do not reach it
    host, tag = reader.lagged(2)
    assert tag == 2 and host.tolist() == [2, 2]
    assert reader.lagged(0)[1] == reader.latest()[1] == 4
    with pytest.raises(ValueError, match="lag must be in"):
        reader.lagged(3)


def test_guard_counters_can_be_restored():
    guard = NonFiniteGuard(max_in_row=3)
    guard.in_row, guard.total = 2, 7  # what on_load_checkpoint does
    assert (guard.in_row, guard.total) == (2, 7)
    with pytest.raises(NonFiniteLossError, match="3 steps in a row"):
        guard.observe(torch.tensor(float("nan")), 10)
    assert guard.total == 8


def test_fused_adamw_skips_bitwise_on_found_inf_and_others_refuse_it():
    """The torch mechanism the device path relies on, on this machine's fused CPU kernel."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    opt = torch.optim.AdamW(params, lr=0.1, weight_decay=0.05, fused=True)
    assert skips_on_device(opt)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.found_inf = torch.tensor(0.0)
    opt.step()  # a real step first, so the moments exist
    weights, state = [p.detach().clone() for p in params], optimizer_state(opt)
    for p in params:
        p.grad = torch.full_like(p, float("nan"))
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    for p, w in zip(params, weights):
        assert torch.equal(p.detach(), w)
    assert_same(state, optimizer_state(opt), "AdamW state")
    assert all(s["step"].item() == 1.0 for s in opt.state.values())
    assert not skips_on_device(torch.optim.AdamW(params, lr=0.1, foreach=True))
    assert not skips_on_device(torch.optim.SGD(params, lr=0.1))


# --- through Lightning ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides",
    [{}, {"codebook_update": "ema", "spatial_variant": "affinity"}],
    ids=["grad-codebook", "ema-codebook-affinity-teacher"],
)
def test_nonfinite_step_changes_nothing_and_the_run_goes_on(overrides):
    module = tiny_module(**overrides)
    module.objective.poison = frozenset({2})
    at_nan, after = StepSnapshot(2), StepSnapshot(3)
    trainer = fit(module, 5, [at_nan, after], gradient_clip_val=1.0)
    assert skips_on_device(trainer.optimizers[0]), "the module's AdamW is fused on CPU too"
    assert trainer.global_step == 5
    (mod_before, opt_before), (mod_after, opt_after) = at_nan.before, at_nan.after
    # nothing moved: weights, codebook buffers (usage, recent patches, EMA tables), teacher, AdamW state
    assert_same(mod_before, mod_after, "module state")
    assert_same(opt_before, opt_after, "AdamW state")
    assert any(k[1] == "exp_avg" for k in opt_before) and any(k[1] == "step" for k in opt_before)
    # the next, finite step trains again
    (mod_before, opt_before), (mod_after, opt_after) = after.before, after.after
    moved = [
        "objective.encoder.blocks.0.attn.qkv.weight",
        "objective.codebook.codes",
        "objective.codebook.recent_count",
    ]
    if "codebook_update" in overrides:
        moved += ["objective.codebook.ema_sum", "objective.teacher.blocks.0.attn.qkv.weight"]
    assert_moved(mod_before, mod_after, moved)
    assert all(opt_after[k].item() == opt_before[k].item() + 1 for k in opt_before if k[1] == "step")
    assert (module.nonfinite.in_row, module.nonfinite.total) == (0, 1)
    assert trainer.callback_metrics["loss/nonfinite_skipped"].item() == 1.0
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["pacofr_nonfinite"] == {"in_row": 0, "total": 1}


def test_k_nonfinite_steps_in_a_row_stop_the_run_with_nothing_changed():
    module = tiny_module()
    module.objective.poison_from = 1
    snapshot = StepSnapshot(1)
    with pytest.raises(NonFiniteLossError, match=r"3 steps in a row \(last at step 3\).*max_nonfinite_steps"):
        fit(module, 10, [snapshot])
    mod_before, _ = snapshot.before
    assert_same(mod_before, module.state_dict(), "module state")
    assert (module.nonfinite.in_row, module.nonfinite.total) == (3, 3)


class NoHostReads(PretrainModule):
    """Every optimiser step (training_step, backward, clipping, AdamW, codebook bookkeeping) runs with the
    tensor -> Python conversions that block on an accelerator turned into errors."""

    def optimizer_step(self, *args, **kwargs):
        def refuse(self, *a, **k):
            raise AssertionError("a device value was read on the host during the training step")

        with contextlib.ExitStack() as stack:
            for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
                stack.enter_context(mock.patch.object(torch.Tensor, name, refuse))
            super().optimizer_step(*args, **kwargs)


def test_the_training_step_reads_no_device_value_on_the_host():
    module = tiny_module(NoHostReads)
    module.objective.poison = frozenset({1})
    # log_every_n_steps=1: the logging path (grad norm, lr, monitors) runs on every step too
    trainer = fit(module, 3, gradient_clip_val=1.0, log_every_n_steps=1)
    assert trainer.global_step == 3
    assert module.nonfinite.total == 1
    # the progress bar shows a host copy of the loss
    assert trainer.progress_bar_metrics["loss"] == pytest.approx(trainer.callback_metrics["loss/total"].item())


def test_non_fused_optimiser_falls_back_to_the_host_decision():
    class Foreach(PretrainModule):
        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2, foreach=True)

    module = tiny_module(Foreach)
    module.objective.poison = frozenset({1})
    snapshot = StepSnapshot(1)
    trainer = fit(module, 3, [snapshot])
    assert not skips_on_device(trainer.optimizers[0])
    assert_same(snapshot.before[0], snapshot.after[0], "module state")
    assert_same(snapshot.before[1], snapshot.after[1], "AdamW state")
    assert module.nonfinite.total == 1


# --- two ranks -------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # the same weights on both ranks
        param = torch.nn.Parameter(torch.randn(4))
        opt = torch.optim.AdamW([param], lr=0.1, fused=True)
        guard = NonFiniteGuard(max_in_row=2)
        decisions = []
        for step in range(3):
            # rank 1 alone goes non-finite from step 1 on; rank 0 stays finite
            loss = (param * (step + 1)).sum() * (float("nan") if rank == 1 and step >= 1 else 1.0)
            try:
                finite = guard.observe(loss, step)
            except NonFiniteLossError as err:
                decisions.append(str(err))
                break
            param.grad = torch.ones_like(param) * (rank + 1)
            dist.all_reduce(param.grad)
            opt.found_inf = 1.0 - finite
            opt.step()
            decisions.append(finite.item())
        results[rank] = (decisions, param.detach().tolist())
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes, each importing torch
def test_two_ranks_skip_together_and_stop_together():
    results = mp.Manager().dict()
    mp.spawn(_rank_main, args=(_free_port(), results), nprocs=2, join=True)
    (decisions0, weights0), (decisions1, weights1) = results[0], results[1]
    assert decisions0[:2] == decisions1[:2] == [1.0, 0.0]  # rank 0's finite loss is skipped too
    assert "2 steps in a row" in decisions0[2] and "2 steps in a row" in decisions1[2]
    assert weights0 == weights1
