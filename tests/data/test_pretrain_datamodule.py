"""PretrainDataModule: batch contract with a masker, explicit start, and a real Lightning stop/resume."""

from __future__ import annotations

import itertools
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from pacofr.data.batch import NO_COVERED_GROUP, MaskResult
from pacofr.data.datamodule import PretrainDataModule
from pacofr.data.format import NUM_REGIONS, label_to_region_lut
from pacofr.data.streams import STATS_KEY

SIZE, OUT, PATCH = 16, 16, 4  # 16 px crops, 4 px patches -> N = 16


class ExactCountRandomMasker:
    """MAE-style: hide exactly round(N * mask_ratio) patches chosen by the generator."""

    def __init__(self, patch_size: int = PATCH, mask_ratio: float = 0.75):
        self.patch_size, self.mask_ratio = patch_size, mask_ratio
        self._lut = torch.tensor(label_to_region_lut())

    def __call__(self, seg: torch.Tensor, generator: torch.Generator) -> MaskResult:
        p = self.patch_size
        gh, gw = seg.shape[0] // p, seg.shape[1] // p
        n = gh * gw
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.randperm(n, generator=generator)[: round(n * self.mask_ratio)]] = True
        onehot = torch.nn.functional.one_hot(self._lut[seg], NUM_REGIONS).float()
        hist = onehot.reshape(gh, p, gw, p, NUM_REGIONS).mean((1, 3)).reshape(n, NUM_REGIONS)
        return MaskResult(mask=mask, covered=NO_COVERED_GROUP, region_hist=hist)


def _module(root: Path, **kw) -> PretrainDataModule:
    defaults = dict(batch_size=2, num_workers=0, image_size=OUT, seed=5, shuffle_buffer=4)
    return PretrainDataModule(str(root), **{**defaults, **kw})


def test_batches_follow_the_contract_with_a_masker(tmp_path: Path, make_shards) -> None:
    root = make_shards(tmp_path, {"train": [5, 4], "val": [3]}, size=SIZE)
    dm = _module(root, batch_size=3, masker=ExactCountRandomMasker())
    batch = next(iter(dm.train_dataloader()))
    n = (OUT // PATCH) ** 2
    # the workers hand over uint8; the model gets float32 / int64 after the device transfer hook
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (3, 3, OUT, OUT)
    assert batch["seg"].dtype == torch.uint8 and batch["seg"].shape == (3, OUT, OUT)
    pixels = batch["image"].clone()
    batch = dm.on_after_batch_transfer(batch, 0)
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (3, 3, OUT, OUT)
    assert batch["image"].is_contiguous()
    assert batch["seg"].dtype == torch.int64 and batch["seg"].shape == (3, OUT, OUT)
    mean, std = torch.tensor(dm.augment.mean).view(3, 1, 1), torch.tensor(dm.augment.std).view(3, 1, 1)
    torch.testing.assert_close(batch["image"], (pixels.float() / 255 - mean) / std)
    assert isinstance(batch["key"], list) and len(batch["key"]) == 3
    assert batch["mask"].dtype == torch.bool and batch["mask"].shape == (3, n)
    assert batch["mask"].sum(1).tolist() == [12, 12, 12]
    assert batch["covered"].dtype == torch.int64 and batch["covered"].shape == (3,)
    assert batch["region_hist"].dtype == torch.float32 and batch["region_hist"].shape == (3, n, NUM_REGIONS)
    assert torch.allclose(batch["region_hist"].sum(-1), torch.ones(3, n))
    # the mask must be built on the *augmented* label map the batch carries
    lut = torch.tensor(label_to_region_lut())
    skin = lut[batch["seg"]] == 1
    skin_share = skin.float().reshape(3, OUT // PATCH, PATCH, OUT // PATCH, PATCH).mean((2, 4)).reshape(3, n)
    assert torch.allclose(batch["region_hist"][..., 1], skin_share)
    val = next(iter(dm.val_dataloader()))
    assert val["valid"].dtype == torch.bool and val["mask"].shape == (3, n)
    dm.on_before_batch_transfer(batch, 0)
    assert STATS_KEY not in batch and dm.data_stats.samples_read > 0


def test_masks_are_identical_after_resume(tmp_path: Path, make_shards) -> None:
    root = make_shards(tmp_path, {"train": [5, 4]}, size=SIZE)
    reference = list(itertools.islice(iter(_module(root, masker=ExactCountRandomMasker()).train_dataloader()), 6))
    dm = _module(root, masker=ExactCountRandomMasker())
    dm.set_start_batch(4)
    resumed = list(itertools.islice(iter(dm.train_dataloader()), 2))
    for a, b in zip(resumed, reference[4:]):
        assert a["key"] == b["key"] and torch.equal(a["mask"], b["mask"]) and torch.equal(a["image"], b["image"])


def test_state_dict_round_trip_sets_the_start(tmp_path: Path, make_shards) -> None:
    root = make_shards(tmp_path, {"train": [5, 4]}, size=SIZE)
    dm = _module(root)
    dm.set_start_batch(3)
    state = dm.state_dict()
    assert state["batches_consumed"] == 3 and state["num_workers"] == 0 and state["world_size"] == 1
    other = _module(root)
    other.load_state_dict(state)
    assert other.train_dataloader().dataset.start_batch == 3
    with pytest.raises(ValueError):
        dm.set_start_batch(-1)


def test_resume_warns_when_the_shuffle_buffer_changed(tmp_path: Path, make_shards, caplog) -> None:
    """The data state holds the shuffle buffer's size: resuming with another warns that the samples differ (as for
    a changed seed or world size); the same config, or a checkpoint that predates the entry, resumes silently."""
    root = make_shards(tmp_path, {"train": [5, 4]}, size=SIZE)
    state = _module(root).state_dict()
    assert state["shuffle_buffer"] == 4
    older = {k: v for k, v in state.items() if k != "shuffle_buffer"}
    for saved, buffer, expected in ((state, 4, None), (older, 8, None), (state, 8, "shuffle_buffer: 4 -> 8")):
        caplog.clear()
        dm = _module(root, shuffle_buffer=buffer)
        dm.load_state_dict(saved)
        with caplog.at_level("WARNING", logger="pacofr.data.datamodule"):
            dm.train_dataloader()
        changed = [r.getMessage() for r in caplog.records if "config changed" in r.getMessage()]
        assert (changed == []) if expected is None else (len(changed) == 1 and expected in changed[0]), changed


class KeyRecorder(L.LightningModule):
    """Trivial model: one weight, records the keys of every training batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[str]] = []
        self.leaked_stats = False
        self.input_dtypes: set[tuple[torch.dtype, torch.dtype]] = set()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen.append(list(batch["key"]))
        self.leaked_stats |= STATS_KEY in batch
        self.input_dtypes.add((batch["image"].dtype, batch["seg"].dtype))
        return ((self.weight - batch["image"].mean()) ** 2).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(root: Path, ckpt_dir: Path, max_steps: int, workers: int, ckpt_path: str | None = None):
    model = KeyRecorder()
    dm = _module(root, num_workers=workers, val_split=None)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        accumulate_grad_batches=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, filename="{step}", every_n_train_steps=2, save_top_k=-1)],
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model, dm, trainer


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", [0, 2])
def test_lightning_stop_and_resume_sees_exactly_the_remaining_samples(
    tmp_path: Path, make_shards, workers: int
) -> None:
    root = make_shards(tmp_path / "data", {"train": [5, 4, 3]}, size=SIZE)  # 12 samples: 6 (w0) / 4 (w2) batches/epoch
    full, dm_full, _ = _fit(root, tmp_path / "ckpt", max_steps=7, workers=workers)
    assert len(full.seen) == 14 and not full.leaked_stats  # 7 optimizer steps x 2 accumulated batches
    assert full.input_dtypes == {(torch.float32, torch.int64)}, "the transfer hook must hand the model floats"
    ckpt = tmp_path / "ckpt" / "step=4.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    assert saved["PretrainDataModule"]["batches_consumed"] == 8
    resumed, dm_resumed, trainer = _fit(root, tmp_path / "ckpt2", max_steps=7, workers=workers, ckpt_path=str(ckpt))
    assert trainer.global_step == 7
    assert dm_resumed.train_stream is not None and dm_resumed.train_stream.start_batch == 8
    # none repeated, none skipped: the resumed run sees exactly batches 8..13 of the uninterrupted one
    assert resumed.seen == full.seen[8:]


class RankKeyRecorder(KeyRecorder):
    """Writes each rank's keys to ``out_dir/rank{r}.txt`` at the end (ddp_spawn runs in child processes)."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = out_dir

    def on_train_end(self) -> None:
        rank = torch.distributed.get_rank()
        lines = [",".join(keys) for keys in self.seen]
        Path(self.out_dir, f"rank{rank}.txt").write_text("\n".join(lines))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_ranks_get_disjoint_equal_streams(tmp_path: Path, make_shards) -> None:
    root = make_shards(tmp_path / "data", {"train": [4, 4, 4, 4]}, size=SIZE)  # 16 = 2 ranks x 4 batches x 2
    dm = _module(root, num_workers=0, val_split=None)
    trainer = L.Trainer(
        accelerator="cpu",
        strategy="ddp_spawn",
        devices=2,
        max_steps=4,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(RankKeyRecorder(str(tmp_path)), datamodule=dm)
    per_rank = [[line.split(",") for line in (tmp_path / f"rank{r}.txt").read_text().splitlines()] for r in (0, 1)]
    assert [len(batches) for batches in per_rank] == [4, 4]
    seen = [key for batches in per_rank for keys in batches for key in keys]
    assert len(seen) == 16 and len(set(seen)) == 16, "one epoch over both ranks covers every sample once"
