"""A tiny dataset drawn by the real synthetic generator, shared by the study tests."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_STUDY = REPO / "configs" / "study" / "default.yaml"


@pytest.fixture(scope="session")
def study_faces(tmp_path_factory) -> Path:
    pytest.importorskip("cv2")
    from data_prep.cli import main

    root = tmp_path_factory.mktemp("study") / "faces"
    args = [
        "synth",
        "--out",
        str(root),
        "--n",
        "120",
        "--size",
        "128",
        "--seed",
        "3",
        "--val-fraction",
        "0.3",
        "--quiet",
    ]
    assert main(args) == 0
    return root
