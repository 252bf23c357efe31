"""The loaders' forked workers do not hang after the main process used OpenCV's thread pool.

OpenCV's pthreads pool does not survive ``fork()``: a worker forked from a process whose pool has run blocks for
ever when it reconfigures the pool (``cv2.setNumThreads``) or runs a parallel call. CI hit it as two 600-s hangs:
a ``num_workers: 0`` fit (OpenCV in the main process) followed, in the same pytest process, by a fit with one
worker. Each case runs in a subprocess with a deadline, so a regression fails in seconds instead of hanging.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import pytest
from conftest import write_synthetic_dataset

from pacofr.data.worker_loader import opencv_threads

# the main process runs OpenCV on several threads first (as a probe, an evaluation or a num_workers: 0 fit does)
WARM_POOL = """
import cv2, numpy as np
cv2.setNumThreads(2)
image = np.random.default_rng(0).random((1500, 1500), dtype=np.float32)
for _ in range(3):
    cv2.resize(image, (1100, 1100)); cv2.GaussianBlur(image, (9, 9), 2.0)
"""


def run_after_warm_pool(body: str, deadline: float = 90.0) -> subprocess.CompletedProcess:
    script = WARM_POOL + textwrap.dedent(body)
    # its own process group: on a hang the script and its stuck workers are killed together, none left behind
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        pytest.fail(f"hung for {deadline:.0f} s (a forked worker blocked in OpenCV's pool?): {stdout!r}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("faces"), {"train": [6, 6], "val": [6]}, size=48)


def test_datamodule_workers_deliver_after_the_main_process_used_opencv(shards):
    proc = run_after_warm_pool(f"""
        from pacofr.data.datamodule import PretrainDataModule
        dm = PretrainDataModule({str(shards)!r}, batch_size=2, num_workers=1, image_size=32, shuffle_buffer=4)
        dm.setup("fit")
        val = next(iter(dm.val_dataloader()))
        train = next(iter(dm.train_dataloader()))
        print("batches", tuple(val["image"].shape), tuple(train["image"].shape), "threads", cv2.getNumThreads())
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # both loaders delivered, and the main process's OpenCV setting is its own again
    assert "batches (2, 3, 32, 32) (2, 3, 32, 32) threads 2" in proc.stdout, proc.stdout


def test_eval_loaders_fork_safely_too():
    proc = run_after_warm_pool("""
        import torch
        from torch.utils.data import Dataset
        from pacofr.data.worker_loader import WorkerLoader, one_opencv_thread_in_worker

        class Resized(Dataset):  # a dataset that uses OpenCV in the worker, as the eval readers' crops do
            def __len__(self):
                return 4
            def __getitem__(self, i):
                one_opencv_thread_in_worker()
                image = np.full((600, 600), float(i), dtype=np.float32)
                return torch.from_numpy(cv2.resize(image, (300, 300))).mean(), cv2.getNumThreads()

        values, threads = zip(*WorkerLoader(Resized(), batch_size=None, num_workers=2))
        print("values", [float(v) for v in values], "worker threads", set(int(t) for t in threads))
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "values [0.0, 1.0, 2.0, 3.0] worker threads {1}" in proc.stdout, proc.stdout


def test_opencv_threads_restores_the_setting():
    before = cv2.getNumThreads()
    with opencv_threads(1):
        assert cv2.getNumThreads() == 1
    assert cv2.getNumThreads() == before


class _FreezeCounts(__import__("torch").utils.data.IterableDataset):
    """Yields the process's frozen-object count before and after what a batch builder does at start."""

    def __iter__(self):
        import gc

        from pacofr.data.worker_loader import freeze_inherited_heap

        before = gc.get_freeze_count()
        froze = freeze_inherited_heap()
        yield {"before": before, "after": gc.get_freeze_count(), "froze": froze, "again": freeze_inherited_heap()}


def test_workers_freeze_the_heap_they_inherit_and_the_main_process_does_not():
    """A worker's full collections would walk the parent's whole heap: each worker freezes it once, at start;
    a loop run in the main process (num_workers=0) leaves the main process's collector alone."""
    from pacofr.data.worker_loader import WorkerLoader

    (in_main,) = list(WorkerLoader(_FreezeCounts(), batch_size=None, num_workers=0))
    assert not in_main["froze"] and in_main["after"] == in_main["before"]
    (in_worker,) = list(WorkerLoader(_FreezeCounts(), batch_size=None, num_workers=1))
    assert in_worker["froze"] and not in_worker["again"]
    assert int(in_worker["after"]) > int(in_worker["before"]) + 10_000  # the inherited heap: torch and the rest
