"""The device image path's ordering and transfers, on CPU: the decode runs under a side stream that the caller's
stream waits on before any kernel reads the images (fake streams record the order); the per-sample values go in
one pinned, non-blocking copy; the device side reads no value back (no op that would make the host wait on a GPU);
grouping by source size and kind of resize changes no pixel."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pacofr.data import device_images
from pacofr.data.device_images import (
    StreamOrder,
    apply_plan,
    augment_on_device,
    decode_jpegs,
    decode_on_side_stream,
    nvjpeg_ordering_check,
    plan_on_host,
    send_plan,
)


class Recorder:
    """Fake streams, events and images that write what is done to them, in order, into one log."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def stream(self, name: str) -> Any:
        log = self.log

        class Stream:
            def wait_event(self, event: Any) -> None:
                log.append(f"{name} waits for {event.name}")

            def __repr__(self) -> str:
                return name

        return Stream()

    def event(self) -> Any:
        log = self.log

        class Event:
            name = f"event{sum(line.startswith('new event') for line in log)}"

            def record(self, stream: Any) -> None:
                log.append(f"{self.name} recorded on {stream!r}")

        self.log.append("new event")
        return Event()

    def image(self, name: str) -> Any:
        log = self.log

        class Image:
            def record_stream(self, stream: Any) -> None:
                log.append(f"{name} used on {stream!r}")

        return Image()

    def order(self) -> StreamOrder:
        @contextmanager
        def use(stream: Any):
            self.log.append(f"enter {stream!r}")
            yield
            self.log.append(f"exit {stream!r}")

        return StreamOrder(self.stream("side"), self.stream("main"), use, self.event)


def test_the_decode_runs_on_the_side_stream_and_the_main_stream_waits_for_it() -> None:
    rec = Recorder()

    def decode() -> list[Any]:
        rec.log.append("decode")
        return [rec.image("img0"), rec.image("img1")]

    images = decode_on_side_stream(decode, rec.order())
    rec.log.append("first consumer kernel on main")
    assert len(images) == 2
    assert rec.log == [
        "enter side",  # the decoder allocates its outputs from the side stream's pool
        "decode",
        "new event",
        "event0 recorded on side",  # after the decode was enqueued
        "exit side",
        "main waits for event0",  # before any kernel of main reads an image
        "img0 used on main",  # the allocator keeps each block until main's kernels have read it
        "img1 used on main",
        "first consumer kernel on main",
    ]


def test_a_cuda_decode_goes_through_the_side_stream_also_image_by_image(monkeypatch) -> None:
    """decode_jpegs on a CUDA device: the batched call, and after it fails the per-image retries, each ordered."""
    rec = Recorder()
    calls: list[int] = []

    def fake_decode(blobs: list[torch.Tensor], device: torch.device) -> list[Any]:
        assert device.type == "cuda"
        calls.append(len(blobs))
        rec.log.append(f"decode {len(blobs)}")
        if len(blobs) > 1 or int(blobs[0][0]) == 0:  # the batch fails, as does its first image alone
            raise RuntimeError("bad JPEG")
        return [rec.image(f"img{int(blobs[0][0])}")]

    monkeypatch.setattr(device_images, "_decode", fake_decode)
    monkeypatch.setattr(device_images, "cuda_stream_order", lambda device: rec.order())
    images, failures = decode_jpegs([torch.tensor([0]), torch.tensor([1])], "cuda")
    assert failures == 1 and images[0] is None and images[1] is not None
    assert calls == [2, 1, 1]
    tail = rec.log[rec.log.index("decode 1", rec.log.index("decode 1") + 1) - 1 :]
    assert tail == ["enter side", "decode 1", "new event", "event0 recorded on side", "exit side"] + [
        "main waits for event0",
        "img1 used on main",
    ]


def test_the_plan_goes_in_one_pinned_non_blocking_copy(monkeypatch) -> None:
    calls: list[Any] = []
    buffer = torch.arange(10, dtype=torch.float32)
    assert torch.equal(send_plan(buffer, torch.device("cpu")), buffer)  # no CUDA: neither pinned nor copied
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: False)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append("pin") or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *args, **kwargs: calls.append(("to", args, kwargs)) or self)
    cuda = torch.device("cuda")
    send_plan(buffer, cuda, pin=True)
    assert calls == ["pin", ("to", (cuda,), {"non_blocking": True})]


class Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


# ops that read a value back (a host sync on a GPU) or build a tensor from Python data (a host-to-device copy)
SYNCING = {"aten._local_scalar_dense", "aten.nonzero", "aten.lift_fresh", "aten.lift_fresh_copy", "aten.equal"}
SYNCING |= {"aten.masked_select", "aten.is_nonzero", "aten._unique2", "aten.unique_dim", "aten.item"}


def batch_of_draws(
    seed: int = 0, hue: bool = False
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two source sizes, crops enlarged and shrunk: two size groups, each with both kinds of resize."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 64, 64), (3, 40, 52), (3, 64, 64), (3, 40, 52), (3, 64, 64), (3, 64, 64)]
    images = [torch.randint(0, 256, s, dtype=torch.uint8, generator=g) for s in shapes]
    boxes = torch.tensor([[0, 0, 64, 64], [2, 3, 20, 22], [5, 1, 20, 22], [0, 0, 40, 52], [8, 8, 50, 40], [1, 2, 9, 9]])
    flip = torch.tensor([True, False, True, True, False, False])
    jitter = torch.cat([0.7 + 0.6 * torch.rand(6, 3, generator=g), torch.zeros(6, 1)], 1)
    if hue:
        jitter[2, 3] = 0.05
    return images, boxes, flip, jitter


@pytest.mark.parametrize("hue", [False, True])
def test_the_device_side_reads_nothing_back(hue: bool) -> None:
    images, boxes, flip, jitter = batch_of_draws(hue=hue)
    plan = plan_on_host([tuple(i.shape) for i in images], boxes, flip, jitter, 24)
    assert plan.reordered and len(plan.groups) == 2 and len(plan.chunks) == 4  # every branch of apply_plan runs
    buffer = send_plan(plan.buffer, torch.device("cpu"))
    apply_plan(images, plan, buffer)  # builds the per-device constants (grey weights, mean/std) once
    with Ops() as ops:
        apply_plan(images, plan, buffer)
    assert "torchvision.roi_align" in ops.names
    # the hue shift (off by default) runs torchvision's adjust_hue, which sends a constant table with a
    # non_blocking copy each call: a copy that does not wait for the device
    allowed = {"aten.lift_fresh"} if hue else set()
    assert not (SYNCING - allowed) & set(ops.names), SYNCING & set(ops.names)


def test_grouping_by_size_and_resize_kind_changes_no_pixel() -> None:
    """The batch, grouped and reordered, gives each sample exactly what it gets alone."""
    images, boxes, flip, jitter = batch_of_draws(seed=1, hue=True)
    together = augment_on_device(images, boxes, flip, jitter, 24)
    for i, image in enumerate(images):
        alone = augment_on_device([image], boxes[i : i + 1], flip[i : i + 1], jitter[i : i + 1], 24)
        assert torch.equal(together[i], alone[0]), i


def test_the_gpu_check_says_it_was_skipped_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is there: bench/gpu_check.sh runs the check")
    assert nvjpeg_ordering_check() == {"check": "nvjpeg_ordering", "ok": None, "skipped": "needs a CUDA device"}
