"""A ``DataLoader`` whose forked workers cannot hang in OpenCV's thread pool.

OpenCV's pthreads thread pool does not survive ``fork()`` (opencv/opencv#5150): once the parent process has run a
parallel OpenCV call (a resize, a warp, a blur on a large enough image: a probe, an evaluation or a data step run
with ``num_workers: 0`` does), a forked worker that touches the pool blocks for ever, in ``cv2.setNumThreads`` (in
``pthread_cond_destroy``) or in the next parallel call, waiting for threads that exist only in the parent. The
loader's main process then waits for a batch that never comes, with no error: the whole rank hangs.

:class:`WorkerLoader` forks its workers while the parent's OpenCV pool is at one thread (no pool threads, nothing
to inherit) and puts the parent's setting back once they are started; :func:`one_opencv_thread_in_worker` then
has nothing to reconfigure in a forked worker, and sets one thread in a worker started by ``spawn`` or
``forkserver`` (a fresh OpenCV). One OpenCV thread per worker is what a data worker wants anyway: the loader's
parallelism is its workers.

:func:`freeze_inherited_heap` moves the objects a worker starts with (the parent's whole heap: torch, Lightning,
the model's modules; ~470 k objects) out of the garbage collector's reach. Without it a worker's periodic full
collection walks all of them (~0.2 s each, about once per thousand samples: the samples' parsed JSON objects
are what promotes the collection) although none can be garbage of the worker's making: ~0.18 ms of CPU per
image in ``bench/data.py``. It also stops those walks from writing into pages shared with the parent.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import cv2
from torch.utils.data import DataLoader, get_worker_info


@contextmanager
def opencv_threads(count: int) -> Iterator[None]:
    """OpenCV's thread count set to ``count`` inside the block, the previous one restored after it."""
    previous = cv2.getNumThreads()
    if previous == count:
        yield
        return
    cv2.setNumThreads(count)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def one_opencv_thread_in_worker() -> None:
    """In a DataLoader worker: OpenCV at one thread. A worker forked by :class:`WorkerLoader` already is (and is
    left alone: reconfiguring a pool inherited through fork is what hangs); a spawned worker's fresh OpenCV is
    set to one thread."""
    if get_worker_info() is not None and cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


_frozen_in: int | None = None  # the process whose heap freeze_inherited_heap froze


def freeze_inherited_heap(in_worker_only: bool = True) -> bool:
    """``gc.freeze()`` once per process, in a DataLoader worker (or anywhere with ``in_worker_only=False``: the
    benchmarks that run a worker's loop in-process); True if it froze now. The objects alive at that point are
    never collected afterwards; a worker's own objects (samples, batches) are collected as before."""
    global _frozen_in
    if _frozen_in == os.getpid() or (in_worker_only and get_worker_info() is None):
        return False
    gc.freeze()
    _frozen_in = os.getpid()
    return True


class WorkerLoader(DataLoader):
    """``torch.utils.data.DataLoader`` that starts its worker processes with OpenCV's pool at one thread (see the
    module docstring). Everything else is DataLoader's."""

    def __iter__(self) -> Any:
        if self.num_workers == 0:
            return super().__iter__()
        # Workers start in the iterator's constructor (and, with persistent workers, only the first time).
        with opencv_threads(1):
            return super().__iter__()
