"""``compile: true``: the objective's model forward and every loss of a step run as one compiled graph, train like
eager, and do not recompile as the trainer's step advances (the compiled part never reads ``global_step``).

The compiled module uses the ``aot_eager`` backend (dynamo and AOTAutograd, the parts that decide graph breaks,
guards and the backward graph, without inductor's C++ code generation, which takes minutes on a loaded 2-core CPU);
``bench/train_step.py`` measures the inductor build. ``fallback_random`` makes compiled random ops draw from
torch's generator as eager does (the candidate choice of replaced patches is random), so losses can be compared.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from tiny_training import tiny_module, trainer
from torch._dynamo.utils import counters

from pacofr.errors import UserError
from pacofr.strategies import BlockFSDPStrategy
from pacofr.training.module import PretrainModule
from pacofr.training.synthetic_batches import PremadeBatches, synthetic_batches

STEPS = 4
PACOFR = dict(spatial_weight=0.1, covered_weight=0.007, incubation_steps=1)


class LossRecorder(L.Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def fit(module: PretrainModule, tmp_path, name: str) -> list[float]:
    recorder = LossRecorder()
    torch.manual_seed(1)  # the same candidate choices in both runs
    with torch._inductor.config.patch(fallback_random=True):
        trainer(tmp_path / name, max_steps=STEPS, callbacks=[recorder]).fit(
            module, datamodule=PremadeBatches(synthetic_batches(module.objective, batch=4, count=STEPS, seed=7))
        )
    return recorder.losses


@pytest.mark.slow  # ~35 s on a loaded 2-core CPU: two short fits and one aot_eager compile (forward + backward)
def test_compiled_module_trains_like_eager_in_one_graph(tmp_path):
    torch.manual_seed(0)
    eager = tiny_module(**PACOFR)
    compiled = tiny_module(**PACOFR, compile=True)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_backend = "aot_eager"
    torch._dynamo.reset()
    counters.clear()

    got = fit(compiled, tmp_path, "compiled")
    # configure_model compiled it (compile=True)
    assert compiled.objective.losses_compiled and not eager.objective.losses_compiled
    # one graph for the forward + losses of steps 2..4 (step 1 incubates, eager): no graph break, and no
    # recompile while global_step, the lr schedule and the codebook buffers change from step to step
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1
    want = fit(eager, tmp_path, "eager")
    assert len(got) == len(want) == STEPS
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(compiled.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(("fsfm", {}), id="fsfm"),
        pytest.param(
            ("pacofr", {"spatial_weight": 0.1, "spatial_variant": "affinity", "candidate_mix": "gumbel"}),
            id="pacofr-affinity-gumbel",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_compiled_part_has_no_graph_breaks(overrides):
    """What ``compile_losses`` compiles (the objective's ``losses``) is one graph (dynamo's own count); PaCo-FR with
    the region loss, MAE and the EMA codebook: tests/losses/test_losses_compile.py."""
    kind, kwargs = overrides
    torch.manual_seed(0)
    objective = tiny_module(kind, **kwargs).objective.train()
    batch = synthetic_batches(objective, batch=4, count=1, seed=7)[0]
    tensors = {k: batch[k] for k in objective.batch_keys + objective.optional_batch_keys}
    explained = torch._dynamo.explain(objective.losses)(tensors)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_compile_under_fsdp_is_refused_with_one_line(tmp_path):
    """FSDP1 units gather their shards in hooks dynamo does not trace: ``compile: true`` under FSDP is refused with
    a user error that says what to do (it used to be dropped with an info line the user never saw)."""
    module = tiny_module(compile=True)
    module.compile_backend = "eager"
    module.trainer = trainer(tmp_path / "fsdp", strategy=BlockFSDPStrategy())
    with pytest.raises(UserError, match="compile: true is not supported under the FSDP preset") as err:
        module.configure_model()
    assert "\n" not in str(err.value) and "DDP" in str(err.value)
    assert not module.objective.losses_compiled
    module.trainer = trainer(tmp_path / "single")  # the same module on one device compiles
    module.configure_model()
    assert module.objective.losses_compiled


def test_compile_losses_runs_once():
    module = tiny_module(compile=True)
    module.objective.compile_losses(backend="eager")
    with pytest.raises(RuntimeError, match="already"):
        module.objective.compile_losses()
    module.configure_model()  # already compiled: a second configure_model (e.g. a second fit) keeps it
    assert module.objective.losses_compiled


def test_group_norms_under_no_shard_count_each_gradient_once(tmp_path, monkeypatch):
    """NO_SHARD keeps whole gradients on every rank: the group norms must not sum their squares over the ranks
    (that made every norm sqrt(world size) too large and clipped too hard); FULL_SHARD's shards are summed."""
    import pacofr.training.module as module_py

    seen = {}

    def spy(optimizer, replicated, group, sharded):
        seen["sharded"] = sharded
        return {}

    monkeypatch.setattr(module_py, "group_grad_norms", spy)
    for strategy, sharded in (("NO_SHARD", False), ("FULL_SHARD", True)):
        module = tiny_module()
        module.trainer = trainer(tmp_path / strategy, strategy=BlockFSDPStrategy(sharding_strategy=strategy))
        monkeypatch.setattr(
            type(module.trainer.strategy),
            "model",
            property(lambda self: type("M", (), {"process_group": None})()),
            raising=False,
        )
        module._group_grad_norms(torch.optim.SGD(module.parameters(), lr=0.1))
        assert seen["sharded"] is sharded, strategy


# in `make test-extended`: CI checks the compiled step in one process
# (test_compiled_module_trains_like_eager_in_one_graph) and 2-process DDP uncompiled (tests/test_cli.py)
@pytest.mark.extended
@pytest.mark.slow  # a 2-process DDP fit with the compiled step: ~1 min on 2 cores
def test_ddp_trains_the_compiled_step(tmp_path, make_shards):
    """``compile: true`` under DDP on 2 gloo processes: the compiled hot path (dynamo splits it at DDP's bucket
    boundaries) trains, checkpoints and ends finite (aot_eager: dynamo and autograd without code generation)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "checkpointing"))
    from test_exact_resume import finish, start_fit, tiny_config

    root = make_shards(tmp_path / "faces", {"train": [20, 20], "val": [8]}, size=72)
    cfg = tiny_config(tmp_path, root, tmp_path / "run", "ddp_compile")
    proc = start_fit(
        "--config", str(cfg), "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_steps", "4",
        "--model.compile", "true", "--model.compile_backend", "aot_eager",
    )  # fmt: skip
    code, out = finish(proc)
    assert code == 0, out[-4000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    assert ckpt["hyper_parameters"]["compile"] is True
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
