"""Lane planning: the epoch's shard order, each lane's equal share of the samples, the bisecting plan, and the
shuffle buffer's order on slot numbers."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from webdataset.filters import _shuffle as wds_shuffle

from pacofr.data.lanes import BufferOrder, Piece, coalesce, merge_within_pieces, plan_epoch, shard_order


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


@pytest.mark.parametrize(("size", "bufsize"), [(0, 4), (1, 1), (7, 1), (9, 4), (10, 4), (300, 16), (50, 100)])
def test_buffer_order_is_webdatasets_shuffle_draw_for_draw(size: int, bufsize: int) -> None:
    """The stream used webdataset's buffer on samples; BufferOrder replays its draws on slot numbers alone."""
    expected = list(wds_shuffle(iter(range(size)), bufsize=bufsize, initial=bufsize, rng=random.Random(size)))
    order = BufferOrder(size, bufsize, random.Random(size))
    assert list(iter(order.step, None)) == expected and sorted(expected) == list(range(size))
    for position in range(size + 1):  # the state after any number of draws: what is held, and what follows
        order = BufferOrder(size, bufsize, random.Random(size))
        order.advance(position)
        assert len(order.buffer) <= bufsize and all(slot < order.next_slot for slot in order.buffer)
        assert sorted(order.buffer) == sorted(set(range(order.next_slot)) - set(expected[:position]))
        assert list(iter(order.step, None)) == expected[position:]


def test_coalesce_bridges_short_gaps_only() -> None:
    assert coalesce([9, 1, 2, 4, 30], gap=3) == [(1, 5), (9, 10), (30, 31)]
    assert coalesce([], gap=3) == [] and coalesce([5, 6, 7], gap=1) == [(5, 8)]
    slots = random.Random(0).sample(range(10_000), 300)
    for gap in (1, 4, 16):
        ranges = coalesce(slots, gap)
        assert sorted(q for lo, hi in ranges for q in range(lo, hi) if q in set(slots)) == sorted(slots)
        assert sum(hi - lo for lo, hi in ranges) <= len(slots) * gap


def test_ranges_in_a_piece_without_index_are_read_once() -> None:
    pieces = [Piece(0, 5, 15), Piece(1, 0, 10)]  # slots 0-9 in shard 0, 10-19 in shard 1
    ranges = [(0, 2), (4, 6), (8, 12), (14, 15), (17, 18)]
    assert merge_within_pieces(ranges, pieces, set()) == ranges
    assert merge_within_pieces(ranges, pieces, {0}) == [(0, 12), (14, 15), (17, 18)]
    assert merge_within_pieces(ranges, pieces, {1}) == [(0, 2), (4, 6), (8, 18)]  # (8, 12) ends in shard 1
