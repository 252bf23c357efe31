"""The tolerances that compare the recorded step across machines (``recorded.py``) are tight enough to see a real
change and loose enough for other CPU kernels.

A step of the recording's ``pacofr`` case is computed here and perturbed: one loss term moved by 1e-4 of itself,
one gradient (or codebook buffer) scaled by 1 + 1e-4 or with one element moved by 1e-3 of the tensor's norm must
be rejected; a few float32 ulps on a term, and noise of twice the relative size that other instruction sets
produce on a gradient, must pass (and fail bit for bit). Then ``test_recorded_step.py`` runs in a subprocess with
the kernels forced to other instruction sets: it must take the tolerance path and pass.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from record_step import RECORDING, REPO, Step, run_step, summarise
from recorded import (
    FALLBACK_MESSAGE,
    SIGNATURE_OVERRIDE_ENV,
    RecordingSignatureWarning,
    bitwise_here,
    compare_case,
    machine_signature,
    signature_differences,
    summarise_tensor,
)

CASE = "pacofr"  # loss terms of every kind, the codebook's buffers


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    return json.loads(RECORDING.read_text())


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tensor work on one thread: the perturbations are many small steps, which threads only slow down."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def step(recorded: dict[str, Any]) -> Step:
    case = recorded["cases"][CASE]
    return run_step(case["args"], case["phase"])


@pytest.fixture(scope="module")
def measured(step: Step) -> dict[str, Any]:
    return summarise(step)


def _with_term(measured: dict[str, Any], name: str, value: float) -> dict[str, Any]:
    changed = copy.deepcopy(measured)
    entry = changed["total"] if name == "total" else changed["terms"][name]
    entry.update(hex=value.hex(), value=value)
    return changed


def _with_tensor(measured: dict[str, Any], group: str, name: str, tensor: torch.Tensor) -> dict[str, Any]:
    changed = dict(measured)
    changed[group] = {**measured[group], name: summarise_tensor(tensor)}
    return changed


def _tensors(step: Step) -> list[tuple[str, str, torch.Tensor]]:
    floats = {n: v for n, v in step.codebook_buffers.items() if v.is_floating_point() and v.norm() > 0}
    return [("grads", n, g) for n, g in sorted(step.grads.items())] + [
        ("codebook_buffers", n, v) for n, v in sorted(floats.items())
    ]


def test_the_unperturbed_step_passes(measured: dict[str, Any], recorded: dict[str, Any]) -> None:
    rec = recorded["cases"][CASE]
    assert compare_case(measured, rec, bitwise=False) == []
    if bitwise_here(tuple(sorted(recorded["signature"].items()))):
        assert compare_case(measured, rec, bitwise=True) == []


@pytest.mark.parametrize("relative", [1e-4, -1e-4])
def test_a_loss_term_moved_by_1e_4_is_rejected(
    measured: dict[str, Any], recorded: dict[str, Any], relative: float
) -> None:
    rec = recorded["cases"][CASE]
    names = ["total", *measured["terms"]]
    for name in names:
        value = (measured["total"] if name == "total" else measured["terms"][name])["value"]
        if value == 0:
            continue
        problems = compare_case(_with_term(measured, name, value * (1 + relative)), rec, bitwise=False)
        assert problems and all(p.startswith(name if name == "total" else f"terms[{name}]") for p in problems), name


def test_a_few_ulps_on_a_term_pass_the_tolerance_not_the_bits(
    measured: dict[str, Any], recorded: dict[str, Any]
) -> None:
    rec = recorded["cases"][CASE]
    for name, entry in measured["terms"].items():
        if entry["value"] == 0:
            continue
        value = np.float32(entry["value"])
        for _ in range(4):  # 4 float32 ulps: more than other instruction sets were seen to move a term
            value = np.nextafter(value, np.float32(np.inf))
        changed = _with_term(measured, name, float(value))
        assert compare_case(changed, rec, bitwise=False) == [], name
        assert compare_case(changed, measured, bitwise=True) == [
            f"terms[{name}]: {float(value).hex()} != recorded {entry['hex']} (bitwise)"
        ]


def test_a_tensor_scaled_by_1_plus_1e_4_is_rejected(
    step: Step, measured: dict[str, Any], recorded: dict[str, Any]
) -> None:
    rec = recorded["cases"][CASE]
    for group, name, tensor in _tensors(step):
        problems = compare_case(_with_tensor(measured, group, name, tensor * (1 + 1e-4)), rec, bitwise=False)
        assert problems and all(p.startswith(f"{group}[{name}]") for p in problems), name


def test_one_element_moved_by_1e_3_of_the_norm_is_rejected(
    step: Step, measured: dict[str, Any], recorded: dict[str, Any]
) -> None:
    rec = recorded["cases"][CASE]
    tried = 0
    for group, name, tensor in _tensors(step):
        flat = tensor.numpy().reshape(-1)
        norm = float(np.linalg.norm(flat.astype(np.float64)))
        largest = int(np.abs(flat).argmax())
        # the largest element moves towards 0 (its norm changes least), the others either way
        tries = {(0, 1.0), (flat.size // 2, -1.0), (flat.size - 1, 1.0), (largest, -float(np.sign(flat[largest])))}
        for index, sign in sorted(tries):
            moved = flat.copy()
            moved[index] += sign * 1e-3 * norm
            changed = _with_tensor(measured, group, name, torch.from_numpy(moved.reshape(tensor.shape)))
            assert compare_case(changed, rec, bitwise=False), f"{name}[{index}] {sign:+}e-3 * norm passed"
            tried += 1
    assert tried > 500


def test_rounding_noise_of_other_instruction_sets_passes(
    step: Step, measured: dict[str, Any], recorded: dict[str, Any]
) -> None:
    """Noise of 3.4e-6 of the tensor's norm: twice the largest seen from other kernels (recorded.TOLERANCES)."""
    rec = recorded["cases"][CASE]
    rng = np.random.default_rng(0)
    for group, name, tensor in _tensors(step):
        values = tensor.numpy().astype(np.float64)
        noise = rng.standard_normal(values.shape)
        noisy = values + noise * (3.4e-6 * np.linalg.norm(values) / np.linalg.norm(noise))
        changed = _with_tensor(measured, group, name, torch.from_numpy(noisy.astype(np.float32)))
        assert compare_case(changed, rec, bitwise=False) == [], name


def test_a_different_signature_is_named_and_warned_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SIGNATURE_OVERRIDE_ENV, raising=False)
    here = machine_signature()
    assert signature_differences(here, here) == []
    other = {**here, "cpu_capability": "AVX512", "env.MKL_CBWR": "COMPATIBLE"}
    differences = signature_differences(other, here)
    assert [d.split(":")[0] for d in differences] == ["cpu_capability", "env.MKL_CBWR"]
    monkeypatch.setenv(SIGNATURE_OVERRIDE_ENV, "ignore")
    assert signature_differences(here, here) == [f"{SIGNATURE_OVERRIDE_ENV}=ignore"]

    monkeypatch.delenv(SIGNATURE_OVERRIDE_ENV)
    fake = tuple(sorted({**here, "cpu_model": "a CPU this test made up"}.items()))
    with pytest.warns(RecordingSignatureWarning, match="cpu_model.*a CPU this test made up.*" + FALLBACK_MESSAGE):
        assert not bitwise_here(fake)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not bitwise_here(fake)  # once: the answer is kept, no second warning


FORCED = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"}


@pytest.mark.slow
def test_the_recorded_step_passes_under_other_instruction_sets() -> None:
    """ATen's DEFAULT kernels and oneDNN's SSE4.1 ones round otherwise than the recording machine's (with AVX2
    they change the bits of nearly every gradient; MKL_ENABLE_INSTRUCTIONS changed none there): the recorded-step
    test must notice the other signature, warn, and pass within the tolerances."""
    env = {k: v for k, v in os.environ.items() if k not in (SIGNATURE_OVERRIDE_ENV, "PYTEST_ADDOPTS")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "always",
         "tests/training/test_recorded_step.py"],
        cwd=REPO, env={**env, **FORCED}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    cases = len(json.loads(RECORDING.read_text())["cases"])
    assert "failed" not in output and f"{cases} passed" in output, output[-6000:]
    assert output.count(FALLBACK_MESSAGE) == 1, output[-6000:]
    assert "env.ATEN_CPU_CAPABILITY: None -> 'default'" in output, output[-6000:]
