"""New probe settings re-probe finished cells from their checkpoints: the cell key changes, pretraining does not
run again."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import DEFAULT_STUDY

from pacofr.study import runner
from pacofr.study.runner import cell_config, is_done, max_steps, run_cell
from pacofr.study.spec import load_study


def test_changed_probe_settings_reprobe_without_pretraining(tmp_path, monkeypatch):
    data = tmp_path / "faces"
    data.mkdir()
    (data / "_info.json").write_text("{}")  # run_cell only checks that the dataset is there
    spec = load_study(DEFAULT_STUDY, quick=True, root=tmp_path / "runs", data_root=str(data))
    cell = next(c for c in spec.cells() if c.arm.pretrain)
    last = cell.run_dir / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"global_step": max_steps(cell_config(spec, cell))}, last)  # a finished pretraining

    def no_pretraining(*args, **kwargs):
        raise AssertionError("pretraining ran again")

    probed = []

    def fake_probe(encoder, root, settings, seed, size):
        probed.append(settings)
        return {"parsing": {"clean": 0.5, "occluded": 0.4}, "views": {}}, {}

    monkeypatch.setattr(runner, "run_forwarding_signals", no_pretraining)
    monkeypatch.setattr(runner, "encoder_for", lambda spec, cell, checkpoint: (torch.nn.Identity(), 128))
    monkeypatch.setattr(runner, "run_probe", fake_probe)

    first = run_cell(spec, cell)
    assert first["pretrain"]["checkpoint"] == str(last) and is_done(spec, cell)
    run_cell(spec, cell)
    assert len(probed) == 1  # done: skipped

    for change in ({"views": ("full",)}, {"visible_fraction": 0.5}, {"subset_covers": 2}, {"train_faces": 99}):
        other = dataclasses.replace(spec, probe=dataclasses.replace(spec.probe, **change))
        assert other.cell_key(cell) != spec.cell_key(cell), change
        assert not is_done(other, cell)
    other = dataclasses.replace(spec, probe=dataclasses.replace(spec.probe, views=("full",)))
    second = run_cell(other, cell)
    assert len(probed) == 2 and probed[-1].views == ("full",)  # probed again ...
    assert second["pretrain"]["steps"] == first["pretrain"]["steps"]  # ... from the same checkpoint
    assert is_done(other, cell) and not is_done(spec, cell)


def test_an_unfinished_checkpoint_would_pretrain(tmp_path, monkeypatch):
    """The other side: a checkpoint short of max_steps goes back to `pacofr fit` (here: refused)."""
    data = tmp_path / "faces"
    data.mkdir()
    (data / "_info.json").write_text("{}")
    spec = load_study(DEFAULT_STUDY, quick=True, root=tmp_path / "runs", data_root=str(data))
    cell = next(c for c in spec.cells() if c.arm.pretrain)
    last = cell.run_dir / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"global_step": 1}, last)
    monkeypatch.setattr(runner, "run_forwarding_signals", lambda command, log: 1)
    with pytest.raises(runner.CellError, match="pretraining of"):
        run_cell(spec, cell)


def test_probe_spreads_separate_seeds_from_budgets():
    runs = [
        {"probe_seed": seed, "train_faces": faces, "scores": {"parsing_r2": 0.1 + 0.01 * seed + 0.001 * faces / 100}}
        for faces in (100, 200)
        for seed in (0, 1)
    ]
    spreads = runner.probe_spreads(runs, ["parsing_r2"])
    assert spreads["seed_spread"]["parsing_r2"] == pytest.approx(0.01)
    assert spreads["budget_change"]["parsing_r2"] == pytest.approx(0.001)
    assert spreads["spread"]["parsing_r2"] == pytest.approx(0.011)
    assert "budget change" in runner.format_probe_check({"cell": "x", "runs": runs, **spreads})
