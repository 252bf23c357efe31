"""The objective redesign changed no number: each method config's loss terms, gradients and post-step codebook
buffers on a fixed batch equal what the module before the redesign computed.

``recorded_step.json`` holds that step (written by ``tests/training/record_step.py``; its ``provenance`` says
from which commit, and how it continues the recording made by the pre-redesign module): each case is a
pretraining config's ``model`` section shrunk to a tiny ViT at 32 px (64 px for the demo), seeded with
``seed_everything(0)``, one batch of 4 random images with exact-count masks (seed 0), ``manual_seed(1)`` before
the step, on one CPU thread, then ``loss.backward()`` and the codebook update.

On a machine whose signature (torch, ATen's CPU capability, MKL and oneDNN versions, CPU model, the environment
variables that force kernels; ``recorded.machine_signature``) is the recording's, floats are compared by their
hex form and tensors by SHA-256 of their bytes, bit for bit. Elsewhere CPU kernels round differently, so one
warning says which fields differ and the step is compared within ``recorded.TOLERANCES`` (loss terms relative
to their value, tensors by norm and random projections relative to their norm). ``PACOFR_RECORDING_SIGNATURE=ignore``
forces that path. To re-record after an intended change of a number::

    .venv/bin/python tests/training/record_step.py --force --note "why the step changed"
"""

from __future__ import annotations

import json

import pytest
from record_step import RECORDING, run_step, summarise
from recorded import bitwise_here, compare_case

DATA = json.loads(RECORDING.read_text())
CASES = DATA["cases"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_step_equals_the_pre_redesign_module(case: str) -> None:
    rec = CASES[case]
    bitwise = bitwise_here(tuple(sorted(DATA["signature"].items())))
    measured = summarise(run_step(rec["args"], rec["phase"]))
    problems = compare_case(measured, rec, bitwise)
    mode = "bit for bit" if bitwise else "within tolerances"
    assert not problems, f"{case} differs from {RECORDING.name} ({mode}):\n" + "\n".join(problems[:40])
