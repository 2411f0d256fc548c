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


def _prefix_manager(num_blocks: int = 8) -> BlockManager:
    return BlockManager(num_blocks, 4, enable_prefix_caching=True)


def test_a_computed_prefix_is_shared_by_the_next_sequence() -> None:
    blocks = _prefix_manager()
    prompt = list(range(1, 11))  # 10 tokens: 2 full blocks and a partial one
    assert blocks.allocate_prefix(0, prompt) == 0
    blocks.cache_full_blocks(0, prompt, 10)
    assert blocks.num_cached_blocks == 2
    other = prompt[:8] + [99, 98, 97]
    assert blocks.allocate_prefix(1, other) == 8
    assert blocks.block_table(1)[:2] == blocks.block_table(0)[:2]
    assert blocks.block_table(1)[2] != blocks.block_table(0)[2]
    assert blocks.num_used_blocks == 4  # 3 + 1 fresh: the shared two are counted once
    assert blocks.hit_rate == 8 / 21
    blocks.check()


def test_a_fully_cached_prompt_still_runs_its_last_block() -> None:
    blocks = _prefix_manager()
    prompt = list(range(1, 9))  # exactly 2 blocks
    blocks.allocate_prefix(0, prompt)
    blocks.cache_full_blocks(0, prompt, 8)
    # the last token must run to be sampled; its block is not shared (it would be written)
    assert blocks.allocate_prefix(1, prompt) == 4
    assert blocks.block_table(1)[1] != blocks.block_table(0)[1]
    blocks.check()


def test_freed_cached_blocks_are_kept_then_evicted_least_recently_used_first() -> None:
    blocks = _prefix_manager(num_blocks=4)
    a, b = [1] * 9, [2] * 9  # 3 blocks each, 2 of them full
    blocks.allocate_prefix(0, a)
    blocks.cache_full_blocks(0, a, 8)
    blocks.free(0)
    assert blocks.num_free_blocks == 4 and blocks.num_cached_blocks == 2
    blocks.allocate_prefix(1, b)  # needs 3: takes the 2 never-hashed free... and evicts one
    blocks.cache_full_blocks(1, b, 8)
    blocks.free(1)
    # a's second block was freed first (tail first) and evicted; its first block survives
    assert blocks.allocate_prefix(2, a) == 4
    blocks.check()
    blocks.free(2)
    blocks.check()


def test_shared_blocks_return_to_the_pool_only_when_the_last_user_frees() -> None:
    blocks = _prefix_manager()
    prompt = list(range(1, 10))
    blocks.allocate_prefix(0, prompt)
    blocks.cache_full_blocks(0, prompt, 9)
    blocks.allocate_prefix(1, prompt)
    blocks.free(0)
    assert blocks.num_used_blocks == 3  # seq 1 still uses the two shared blocks and its own
    blocks.free(1)
    assert blocks.num_used_blocks == 0
    blocks.reset_prefix_cache()
    assert blocks.num_cached_blocks == 0 and blocks.allocate_prefix(2, prompt) == 0
    blocks.check()


def test_prefix_caching_off_shares_nothing() -> None:
    blocks = BlockManager(8, 4)
    prompt = list(range(1, 10))
    blocks.allocate_prefix(0, prompt)
    blocks.cache_full_blocks(0, prompt, 9)
    assert blocks.allocate_prefix(1, prompt) == 0
    assert blocks.num_cached_blocks == 0
