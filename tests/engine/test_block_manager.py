"""BlockManager: the pool of KV cache blocks: allocation, holds, and published (findable) full blocks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.engine.block_manager import BlockManager, OutOfBlocksError


def _state(manager: BlockManager) -> tuple:
    return manager.num_free, list(manager._free), list(manager._num_holders), dict(manager._key_of)


def test_allocate_hands_out_distinct_blocks_and_counts_them():
    manager = BlockManager(num_blocks=8, block_size=4)
    first = manager.allocate(3)
    second = manager.allocate(5)
    assert len(first) == 3 and len(second) == 5
    assert sorted(first + second) == list(range(8))
    assert manager.num_free == 0


def test_free_returns_blocks_for_reuse():
    manager = BlockManager(num_blocks=4, block_size=4)
    blocks = manager.allocate(4)
    manager.free(blocks[:2])
    assert manager.num_free == 2
    again = manager.allocate(2)
    assert sorted(again) == sorted(blocks[:2])
    assert manager.num_free == 0


def test_allocate_zero_is_a_no_op():
    manager = BlockManager(num_blocks=2, block_size=4)
    assert manager.allocate(0) == []
    assert manager.num_free == 2


@pytest.mark.parametrize("num_tokens, expected", [(0, 0), (1, 1), (4, 1), (5, 2), (8, 2), (9, 3)])
def test_blocks_for_rounds_up(num_tokens, expected):
    assert BlockManager(num_blocks=1, block_size=4).blocks_for(num_tokens) == expected


def test_double_free_is_rejected():
    manager = BlockManager(num_blocks=4, block_size=4)
    blocks = manager.allocate(2)
    manager.free(blocks)
    with pytest.raises(ValueError):
        manager.free(blocks[:1])
    assert manager.num_free == 4


def test_free_of_never_allocated_block_is_rejected():
    manager = BlockManager(num_blocks=4, block_size=4)
    with pytest.raises(ValueError):
        manager.free([2])
    assert manager.num_free == 4


def test_free_of_out_of_range_block_is_rejected():
    # -1 must not alias the last block through Python's negative indexing
    manager = BlockManager(num_blocks=4, block_size=4)
    manager.allocate(4)
    for bad in (-1, 4):
        with pytest.raises((ValueError, IndexError)):
            manager.free([bad])
    assert manager.num_free == 0
    assert -1 not in manager._free


def test_same_block_twice_in_one_free_is_rejected():
    manager = BlockManager(num_blocks=4, block_size=4)
    block = manager.allocate(1)[0]
    with pytest.raises(ValueError):
        manager.free([block, block])
    assert manager.num_free == 3  # all or nothing: the rejected free left the block allocated
    assert block not in manager.allocate(3)  # ... so it is never handed out a second time


def test_out_of_blocks_leaves_state_unchanged():
    manager = BlockManager(num_blocks=5, block_size=4)
    manager.allocate(3)
    before = _state(manager)
    with pytest.raises(OutOfBlocksError):
        manager.allocate(3)
    assert _state(manager) == before


def test_grow_extends_in_place_only_when_needed():
    manager = BlockManager(num_blocks=8, block_size=4)
    blocks: list[int] = []
    manager.grow(blocks, 4)
    assert len(blocks) == 1 and manager.num_free == 7
    original = list(blocks)
    manager.grow(blocks, 4)  # still fits
    manager.grow(blocks, 2)  # shrinking never frees
    assert blocks == original and manager.num_free == 7
    manager.grow(blocks, 9)
    assert len(blocks) == 3 and blocks[0] == original[0] and manager.num_free == 5
    assert len(set(blocks)) == 3


def test_grow_out_of_blocks_leaves_list_and_state_unchanged():
    manager = BlockManager(num_blocks=3, block_size=4)
    blocks = manager.allocate(1)
    manager.allocate(1)
    before_state, before_blocks = _state(manager), list(blocks)
    with pytest.raises(OutOfBlocksError):
        manager.grow(blocks, 4 * 3)  # needs 2 more, 1 free
    assert blocks == before_blocks
    assert _state(manager) == before_state


# An operation: ("alloc", n), ("free", index into the live allocations), ("grow", index, tokens)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(0, 6)),
        st.tuples(st.just("free"), st.integers(0, 50)),
        st.tuples(st.just("grow"), st.integers(0, 50), st.integers(0, 40)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(num_blocks=st.integers(1, 16), block_size=st.sampled_from([1, 2, 4, 8]), ops=_ops)
def test_random_allocate_free_keeps_accounting(num_blocks, block_size, ops):
    manager = BlockManager(num_blocks, block_size)
    live: list[list[int]] = []
    for op in ops:
        before = _state(manager)
        if op[0] == "alloc":
            if op[1] > manager.num_free:
                with pytest.raises(OutOfBlocksError):
                    manager.allocate(op[1])
                assert _state(manager) == before
            else:
                live.append(manager.allocate(op[1]))
        elif op[0] == "free" and live:
            manager.free(live.pop(op[1] % len(live)))
        elif op[0] == "grow" and live:
            blocks = live[op[1] % len(live)]
            snapshot = list(blocks)
            try:
                manager.grow(blocks, op[2])
            except OutOfBlocksError:
                assert blocks == snapshot and _state(manager) == before
            else:
                assert blocks[: len(snapshot)] == snapshot
                assert len(blocks) == max(len(snapshot), manager.blocks_for(op[2]))
        held = [b for blocks in live for b in blocks]
        assert len(held) == len(set(held)), "a block was handed out twice"
        assert all(0 <= b < num_blocks for b in held)
        assert manager.num_free + len(held) == num_blocks
        assert set(manager._free).isdisjoint(held)
    for blocks in live:
        manager.free(blocks)
    assert manager.num_free == num_blocks
    assert sorted(manager.allocate(num_blocks)) == list(range(num_blocks))


# ---- holds and published blocks (the prefix cache's part) ----


def test_a_published_block_is_found_again_after_its_holder_frees_it():
    manager = BlockManager(num_blocks=4, block_size=4)
    block = manager.allocate(1)[0]
    manager.publish(block, b"k1")
    manager.free([block])
    assert manager.num_free == 4  # free, and still findable
    assert manager.take_published([b"k1", b"k2"]) == [block]  # the run stops at the first unknown key
    assert manager.num_free == 3 and manager.num_reused == 1
    manager.free([block])
    assert manager.num_free == 4


def test_holders_are_counted_and_the_block_frees_with_the_last():
    manager = BlockManager(num_blocks=2, block_size=4)
    block = manager.allocate(1)[0]
    manager.publish(block, b"k")
    assert manager.take_published([b"k"]) == [block]  # a second holder while the first still holds it
    manager.free([block])
    assert manager.num_free == 1  # one holder left
    manager.free([block])
    assert manager.num_free == 2
    with pytest.raises(ValueError):
        manager.free([block])


def test_allocation_takes_unpublished_blocks_first_then_the_least_recently_freed():
    manager = BlockManager(num_blocks=4, block_size=4)
    a, b, c, d = manager.allocate(4)
    manager.publish(a, b"a")
    manager.publish(b, b"b")
    manager.free([b, a])  # published, freed in this order: b is the older
    manager.free([c])  # nothing findable: reused first
    assert manager.allocate(1) == [c]
    assert manager.allocate(1) == [b]  # forgets b's key
    assert manager.num_forgotten == 1
    assert manager.take_published([b"b"]) == [] and manager.take_published([b"a"]) == [a]
    manager.free([d])
    assert manager.num_free == 1


def test_a_key_keeps_its_first_block():
    manager = BlockManager(num_blocks=4, block_size=4)
    first, second = manager.allocate(2)
    manager.publish(first, b"k")
    manager.publish(second, b"k")  # the same content computed twice: the copy stays private
    manager.publish(first, b"other")  # and a block has one key
    manager.free([first, second])
    assert manager.take_published([b"k"]) == [first] and manager.take_published([b"other"]) == []
    assert manager.num_published == 1
