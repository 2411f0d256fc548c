"""KV-cache block accounting: which physical blocks each sequence owns.

The worker holds the physical cache; the scheduler decides which block holds which token and sends
the block table with every step. A sequence's table covers token positions 0..len(table)*block_size-1.
"""

from __future__ import annotations

from collections import deque


class BlockManager:
    """Fixed pool of `num_blocks` blocks of `block_size` token slots, handed out per sequence."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"num_blocks and block_size must be >= 1, got {num_blocks} and {block_size}"
            )
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))
        self._owner: list[int | None] = [None] * num_blocks
        self._tables: dict[int, list[int]] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_sequences(self) -> int:
        """Sequences that hold blocks."""
        return len(self._tables)

    def num_blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold `num_tokens` token positions."""
        return -(-num_tokens // self.block_size)

    def can_allocate(self, num_tokens: int) -> bool:
        """Whether a new sequence of `num_tokens` positions fits in the free blocks now."""
        return self.num_blocks_for(num_tokens) <= len(self._free)

    def has(self, seq_id: int) -> bool:
        return seq_id in self._tables

    def block_table(self, seq_id: int) -> list[int]:
        return self._tables[seq_id]

    def allocate(self, seq_id: int, num_tokens: int) -> list[int]:
        """Give a new sequence enough blocks for `num_tokens` positions; returns its table."""
        assert seq_id not in self._tables, f"sequence {seq_id} already holds blocks"
        assert self.can_allocate(num_tokens), f"no room for {num_tokens} tokens"
        self._tables[seq_id] = []
        self._grow(seq_id, self.num_blocks_for(num_tokens))
        return self._tables[seq_id]

    def num_missing_blocks(self, seq_id: int, num_tokens: int) -> int:
        """Blocks the sequence still needs so that its table covers `num_tokens` positions."""
        return max(0, self.num_blocks_for(num_tokens) - len(self._tables[seq_id]))

    def can_append_slot(self, seq_id: int, num_tokens: int) -> bool:
        """Whether the sequence can grow to cover `num_tokens` positions with the free blocks."""
        return self.num_missing_blocks(seq_id, num_tokens) <= len(self._free)

    def append_slot(self, seq_id: int, num_tokens: int) -> list[int]:
        """Grow the sequence's table to cover `num_tokens` positions; returns the table."""
        missing = self.num_missing_blocks(seq_id, num_tokens)
        assert missing <= len(self._free), f"no free block for sequence {seq_id}"
        self._grow(seq_id, missing)
        return self._tables[seq_id]

    def free(self, seq_id: int) -> list[int]:
        """Return every block of the sequence to the pool; returns the freed block ids."""
        assert seq_id in self._tables, f"sequence {seq_id} holds no blocks (double free?)"
        table = self._tables.pop(seq_id)
        for block in table:
            assert self._owner[block] == seq_id, f"block {block} is not owned by {seq_id}"
            self._owner[block] = None
            self._free.append(block)
        return table

    def _grow(self, seq_id: int, num_new_blocks: int) -> None:
        table = self._tables[seq_id]
        for _ in range(num_new_blocks):
            block = self._free.popleft()
            assert self._owner[block] is None, f"block {block} handed out twice"
            self._owner[block] = seq_id
            table.append(block)
