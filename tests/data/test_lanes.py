"""Lane planning: the epoch's shard order, each lane's equal share of the samples, the bisecting plan, and the
lane's shuffle windows."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from pacofr.data.lanes import Piece, plan_epoch, shard_order, shuffle_windows, window_order


def _shard_sequence(plan: list) -> list[int]:
    """Shards in the order the lanes (taken in order) read them, consecutive repeats merged."""
    seq = [piece.shard for lane in plan for piece in lane]
    return [s for i, s in enumerate(seq) if i == 0 or seq[i - 1] != s]


def test_shard_order_depends_only_on_seed_and_epoch() -> None:
    assert shard_order(50, seed=3, epoch=2) == shard_order(50, seed=3, epoch=2)
    assert sorted(shard_order(50, 3, 2)) == list(range(50))
    assert shard_order(50, 3, 2) != shard_order(50, 3, 3)
    assert shard_order(50, 3, 2) != shard_order(50, 4, 2)
    # the plan walks the shards in that order whatever the number of lanes (ranks x workers)
    lengths = [5 + i % 4 for i in range(50)]
    for slots in (1, 2, 3, 6, 64):
        assert _shard_sequence(plan_epoch(lengths, slots, seed=3, epoch=2)) == shard_order(50, 3, 2)


@pytest.mark.parametrize(("lengths", "slots"), [([7, 5], 6), ([7, 5, 3], 2), ([100, 1, 1, 40], 7), ([3], 3)])
def test_plan_gives_each_lane_an_equal_share_of_every_sample_once(lengths: list[int], slots: int) -> None:
    plan = plan_epoch(lengths, num_slots=slots, seed=0, epoch=1)
    sizes = [sum(p.length for p in lane) for lane in plan]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) == sum(lengths) // slots
    covered = Counter((p.shard, i) for lane in plan for p in lane for i in range(p.start, p.stop))
    assert len(covered) == sum(lengths) and set(covered.values()) == {1}, "each sample in exactly one lane"


def test_plan_with_fewer_samples_than_lanes_shares_samples() -> None:
    tiny = plan_epoch([2], num_slots=5, seed=0, epoch=0)
    assert [[(p.start, p.stop) for p in lane] for lane in tiny] == [[(0, 1)], [(1, 2)], [(0, 1)], [(1, 2)], [(0, 1)]]


def _plan_by_scanning(lengths, num_slots, seed, epoch):
    """The plan as first written: every lane scans every shard (the reference the fast plan must equal)."""
    order = [s for s in shard_order(len(lengths), seed, epoch) if lengths[s] > 0]
    offsets = [0]
    for s in order:
        offsets.append(offsets[-1] + lengths[s])
    total = offsets[-1]

    def pieces_of(lo, hi):
        return [
            Piece(shard, max(lo, offsets[i]) - offsets[i], min(hi, offsets[i + 1]) - offsets[i])
            for i, shard in enumerate(order)
            if max(lo, offsets[i]) < min(hi, offsets[i + 1])
        ]

    if total < num_slots:
        return [pieces_of(lane % total, lane % total + 1) for lane in range(num_slots)]
    return [pieces_of(lane * total // num_slots, (lane + 1) * total // num_slots) for lane in range(num_slots)]


@pytest.mark.parametrize("case", range(40))
def test_plan_equals_the_scanning_plan(case):
    rng = np.random.default_rng(case)
    shards = int(rng.integers(1, 60))
    lengths = [int(x) for x in rng.integers(0, 40, shards)]
    lengths[int(rng.integers(shards))] += 1  # never all empty
    slots = int(rng.choice([1, 2, 3, 7, 16, 64, 97, 500]))
    assert plan_epoch(lengths, slots, seed=case, epoch=case % 3) == _plan_by_scanning(lengths, slots, case, case % 3)


@pytest.mark.parametrize(
    ("size", "window", "stripes"), [(0, 4, 8), (5, 8, 8), (8, 8, 8), (9, 8, 8), (240, 16, 8), (1000, 64, 3), (7, 2, 16)]
)
def test_shuffle_windows_partition_the_lane_and_mix_its_segments(size: int, window: int, stripes: int) -> None:
    windows = shuffle_windows(size, window, stripes)
    slots = [q for w in windows for lo, hi in w for q in range(lo, hi)]
    assert sorted(slots) == list(range(size)), "every slot of the lane in exactly one window"
    n = max(1, -(-size // window))
    assert len(windows) == n
    if n == 1:
        assert windows == [[(0, size)]], "a lane within one window is read as one run"
        return
    k = min(stripes, size)
    assert all(len(w) == k for w in windows) and max(sum(hi - lo for lo, hi in w) for w in windows) <= window + k - 1
    for segment in range(k):  # a segment's chunks follow each other: one sequential cursor reads them
        chunks = [w[segment] for w in windows]
        assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
    if size >= k * n:  # every window draws from every segment: k places of the lane, not one run
        assert all(hi > lo for w in windows for lo, hi in w)


def test_window_order_is_a_seeded_permutation() -> None:
    assert sorted(window_order(50, 0, 1, 2)) == list(range(50))
    assert window_order(50, 0, 1, 2) == window_order(50, 0, 1, 2)
    assert window_order(50, 0, 1, 2) != window_order(50, 0, 1, 3)
    assert window_order(0, 1) == []
