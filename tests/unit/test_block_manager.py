import pytest

from services.scheduler.block_manager import BlockManager


def test_allocate_gives_enough_distinct_blocks_and_free_returns_them() -> None:
    blocks = BlockManager(num_blocks=8, block_size=4)
    table_a = blocks.allocate(seq_id=1, num_tokens=9)  # 3 blocks
    table_b = blocks.allocate(seq_id=2, num_tokens=4)  # 1 block
    assert len(table_a) == 3 and len(table_b) == 1
    assert not set(table_a) & set(table_b)
    assert blocks.num_free_blocks == 4
    assert sorted(blocks.free(1)) == sorted(table_a)
    assert blocks.num_free_blocks == 7


def test_append_slot_grows_only_at_block_boundaries() -> None:
    blocks = BlockManager(num_blocks=4, block_size=4)
    blocks.allocate(seq_id=1, num_tokens=4)
    assert blocks.num_missing_blocks(1, 4) == 0
    blocks.append_slot(1, 4)
    assert blocks.num_free_blocks == 3
    table = blocks.append_slot(1, 5)
    assert len(table) == 2 and blocks.num_free_blocks == 2


def test_can_allocate_and_can_append_slot_tell_when_the_cache_is_full() -> None:
    blocks = BlockManager(num_blocks=2, block_size=4)
    assert blocks.can_allocate(8) and not blocks.can_allocate(9)
    blocks.allocate(seq_id=1, num_tokens=8)
    assert not blocks.can_allocate(1)
    assert blocks.can_append_slot(1, 8) and not blocks.can_append_slot(1, 9)


def test_double_free_is_an_assertion_error() -> None:
    blocks = BlockManager(num_blocks=2, block_size=4)
    blocks.allocate(seq_id=1, num_tokens=3)
    blocks.free(1)
    with pytest.raises(AssertionError, match="double free"):
        blocks.free(1)


def test_freed_blocks_are_reused() -> None:
    blocks = BlockManager(num_blocks=2, block_size=1)
    first = blocks.allocate(seq_id=1, num_tokens=2)
    blocks.free(1)
    assert sorted(blocks.allocate(seq_id=2, num_tokens=2)) == sorted(first)


def test_rejects_an_empty_pool() -> None:
    with pytest.raises(ValueError, match="num_blocks"):
        BlockManager(num_blocks=0, block_size=4)
