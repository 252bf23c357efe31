"""The worked example of docs/architecture.md ("how to add a method") is true: its file and its config, taken
from the page, train a tiny run through ``pacofr fit`` and log the new loss term."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch
import yaml

from pacofr.cli import main

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "architecture.md"
TINY = REPO / "configs" / "pretrain" / "tiny.yaml"  # the size file the page composes the method on


def page_files() -> dict[str, str]:
    """The page's code blocks that name a file (```lang file=<path>)."""
    return dict(re.findall(r"```\w+ file=(\S+)\n(.*?)```", PAGE.read_text(), flags=re.S))


def test_the_example_method_trains_from_the_page(tmp_path, make_shards, monkeypatch):
    files = page_files()
    assert {"my_methods/mae_l1.py", "my_methods/mae_l1.yaml"} <= files.keys()
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_methods", None)
    faces = make_shards(tmp_path / "faces", {"train": [16, 16], "val": [8]}, size=72)
    run_dir = tmp_path / "run"
    small = {
        "run_dir": str(run_dir),
        "data": {"root": str(faces), "image_size": 64, "batch_size": 4, "num_workers": 0, "shuffle_buffer": 8},
        "trainer": {
            "max_steps": 3,
            "limit_val_batches": 0,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "callbacks": [],
        },
        "checkpoint": {"every_n_train_steps": 3},
    }
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(small))
    args = ["fit", "--config", str(TINY), "--config", str(tmp_path / "my_methods/mae_l1.yaml")]
    assert main([*args, "--config", str(tmp_path / "small.yaml")]) == 0
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["hyper_parameters"]["objective"]["class_path"] == "my_methods.mae_l1.MAEL1"
    assert any(k.startswith("objective.encoder.") for k in ckpt["state_dict"])
    assert not any(k.startswith("objective.codebook.") for k in ckpt["state_dict"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((run_dir / "tb").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert "loss/rec_l1" in events.Tags()["scalars"]
