"""KV-cache block accounting: which physical blocks each sequence uses, with prefix caching.

The worker holds the physical cache; the scheduler decides which block holds which token and sends
the block table with every step. A sequence's table covers token positions 0..len(table)*block_size-1.

Prefix caching: once every slot of a block has been computed, the block is named by a hash chained
from its parent block's hash and its own tokens, so the hash names the whole prefix up to the
block's end. A new sequence whose prompt starts with the same full blocks shares them (a reference
count per block) and its prefill starts after them. A block whose count drops to zero keeps its
contents and its hash ("cached free"): it is handed out again on a hit, or evicted, least recently
used first, when a fresh block is needed and no never-hashed block is free. Shared blocks are only
ever read: a sequence writes at positions at or after its `num_computed`, never into a hit block.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque

BlockHash = bytes


def hash_block(parent: BlockHash | None, tokens: list[int]) -> BlockHash:
    """The hash of a full block: its parent's hash and its tokens (16 bytes of BLAKE2b, so a
    collision, which would silently serve another prompt's KV, is out of reach)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(parent or b"root")
    h.update(array("q", tokens).tobytes())
    return h.digest()


class BlockManager:
    """Fixed pool of `num_blocks` blocks of `block_size` token slots, handed out per sequence."""

    def __init__(
        self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False
    ) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"num_blocks and block_size must be >= 1, got {num_blocks} and {block_size}"
            )
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._free: deque[int] = deque(range(num_blocks))  # free blocks holding no hash
        self._cached_free: OrderedDict[int, None] = OrderedDict()  # free, hashed; LRU first
        self._ref_count: list[int] = [0] * num_blocks
        self._hash_of: list[BlockHash | None] = [None] * num_blocks
        self._block_of: dict[BlockHash, int] = {}
        self._tables: dict[int, list[int]] = {}
        self._seq_hashes: dict[int, list[BlockHash]] = {}  # hashes of the seq's full blocks
        # prefix-cache statistics: prompt tokens looked up and found, over every allocation
        self.num_queried_tokens = 0
        self.num_hit_tokens = 0

    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence uses (cached free ones included: they are evictable)."""
        return len(self._free) + len(self._cached_free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def num_cached_blocks(self) -> int:
        """Blocks whose contents are named by a hash (in use or cached free)."""
        return len(self._block_of)

    @property
    def hit_rate(self) -> float:
        """Share of looked-up prompt tokens whose KV was already cached (0 before any lookup)."""
        return self.num_hit_tokens / self.num_queried_tokens if self.num_queried_tokens else 0.0

    @property
    def num_sequences(self) -> int:
        """Sequences that hold blocks."""
        return len(self._tables)

    def num_blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold `num_tokens` token positions."""
        return -(-num_tokens // self.block_size)

    def can_allocate(self, num_tokens: int, token_ids: list[int] | None = None) -> bool:
        """Whether a new sequence of `num_tokens` positions fits in the free blocks now; with
        `token_ids`, blocks it would share with running sequences cost nothing."""
        hits = self._hits(token_ids, num_tokens) if token_ids is not None else []
        num_shared = sum(1 for b in hits if self._ref_count[b] > 0)
        return self.num_blocks_for(num_tokens) - num_shared <= self.num_free_blocks

    def count_hits(self, token_ids: list[int]) -> int:
        """Leading tokens a sequence of `token_ids` would find cached now (no side effects)."""
        return len(self._hits(token_ids, len(token_ids))) * self.block_size

    def has(self, seq_id: int) -> bool:
        return seq_id in self._tables

    def block_table(self, seq_id: int) -> list[int]:
        return self._tables[seq_id]

    def allocate(self, seq_id: int, num_tokens: int) -> list[int]:
        """Give a new sequence enough fresh blocks for `num_tokens` positions; returns its table."""
        assert seq_id not in self._tables, f"sequence {seq_id} already holds blocks"
        assert self.can_allocate(num_tokens), f"no room for {num_tokens} tokens"
        self._tables[seq_id] = []
        self._seq_hashes[seq_id] = []
        self._grow(seq_id, self.num_blocks_for(num_tokens))
        return self._tables[seq_id]

    def allocate_prefix(self, seq_id: int, token_ids: list[int]) -> int:
        """Give a new sequence blocks for `token_ids`, sharing the cached full blocks its tokens
        start with; returns how many leading tokens are already computed (a multiple of
        block_size, always below len(token_ids) so the last token is run and sampled)."""
        num_tokens = len(token_ids)
        assert seq_id not in self._tables, f"sequence {seq_id} already holds blocks"
        assert self.can_allocate(num_tokens, token_ids), f"no room for {num_tokens} tokens"
        hits = self._hits(token_ids, num_tokens)
        for block in hits:
            self._take(block)
        self._tables[seq_id] = list(hits)
        self._seq_hashes[seq_id] = [self._hash_of[b] for b in hits]  # type: ignore[misc]
        self._grow(seq_id, self.num_blocks_for(num_tokens) - len(hits))
        num_hit = len(hits) * self.block_size
        if self.enable_prefix_caching:
            self.num_queried_tokens += num_tokens
            self.num_hit_tokens += num_hit
        return num_hit

    def cache_full_blocks(self, seq_id: int, token_ids: list[int], num_computed: int) -> None:
        """Name the sequence's blocks that `num_computed` computed tokens now fill, so later
        sequences can share them. `token_ids` covers at least the first `num_computed` tokens."""
        if not self.enable_prefix_caching:
            return
        hashes = self._seq_hashes[seq_id]
        table = self._tables[seq_id]
        bs = self.block_size
        for index in range(len(hashes), num_computed // bs):
            parent = hashes[-1] if hashes else None
            block_hash = hash_block(parent, token_ids[index * bs : (index + 1) * bs])
            hashes.append(block_hash)
            block = table[index]
            if block_hash in self._block_of or self._hash_of[block] is not None:
                continue  # another sequence computed the same block first: keep that one
            self._hash_of[block] = block_hash
            self._block_of[block_hash] = block

    def has_unnamed_full_block(self, seq_id: int, num_computed: int) -> bool:
        """Whether `cache_full_blocks` has a block to name (cheap: no tokens needed)."""
        return num_computed // self.block_size > len(self._seq_hashes[seq_id])

    def num_missing_blocks(self, seq_id: int, num_tokens: int) -> int:
        """Blocks the sequence still needs so that its table covers `num_tokens` positions."""
        return max(0, self.num_blocks_for(num_tokens) - len(self._tables[seq_id]))

    def can_append_slot(self, seq_id: int, num_tokens: int) -> bool:
        """Whether the sequence can grow to cover `num_tokens` positions with the free blocks."""
        return self.num_missing_blocks(seq_id, num_tokens) <= self.num_free_blocks

    def append_slot(self, seq_id: int, num_tokens: int) -> list[int]:
        """Grow the sequence's table to cover `num_tokens` positions; returns the table."""
        missing = self.num_missing_blocks(seq_id, num_tokens)
        assert missing <= self.num_free_blocks, f"no free block for sequence {seq_id}"
        self._grow(seq_id, missing)
        return self._tables[seq_id]

    def free(self, seq_id: int) -> list[int]:
        """Drop the sequence's use of its blocks; returns its table. A block nobody uses any more
        keeps its hash (cached free, most recently used last) or goes back to the free pool."""
        assert seq_id in self._tables, f"sequence {seq_id} holds no blocks (double free?)"
        table = self._tables.pop(seq_id)
        del self._seq_hashes[seq_id]
        # the tail first: evicting a prefix's last blocks before its first keeps hits possible
        for block in reversed(table):
            assert self._ref_count[block] > 0, f"block {block} freed more often than taken"
            self._ref_count[block] -= 1
            if self._ref_count[block] > 0:
                continue
            if self._hash_of[block] is not None:
                self._cached_free[block] = None
            else:
                self._free.append(block)
        return table

    def reset_prefix_cache(self) -> None:
        """Forget every hash (the worker lost its cache). Only while no sequence holds blocks."""
        assert not self._tables, "reset_prefix_cache while sequences hold blocks"
        self._free.extend(self._cached_free)
        self._cached_free.clear()
        self._block_of.clear()
        self._hash_of = [None] * self.num_blocks

    def check(self) -> None:
        """Assert the accounting is consistent (for tests): every block is used xor free."""
        uses = [0] * self.num_blocks
        for table in self._tables.values():
            for block in table:
                uses[block] += 1
        assert uses == self._ref_count, "reference counts differ from the tables"
        free = list(self._free) + list(self._cached_free)
        assert len(set(free)) == len(free), "a block is free twice"
        assert all(self._ref_count[b] == 0 for b in free), "a used block is free"
        assert len(free) + sum(1 for c in uses if c > 0) == self.num_blocks, "a block leaked"
        assert all(self._hash_of[b] is not None for b in self._cached_free)
        assert all(self._hash_of[b] == h for h, b in self._block_of.items())

    # ---- internals -----------------------------------------------------------------------

    def _hits(self, token_ids: list[int] | None, num_tokens: int) -> list[int]:
        """Cached blocks the tokens start with; at most (num_tokens-1)//block_size of them, so
        at least one token is left to run."""
        if not self.enable_prefix_caching or token_ids is None:
            return []
        bs = self.block_size
        hits: list[int] = []
        parent: BlockHash | None = None
        for index in range((num_tokens - 1) // bs):
            parent = hash_block(parent, token_ids[index * bs : (index + 1) * bs])
            block = self._block_of.get(parent)
            if block is None:
                break
            hits.append(block)
        return hits

    def _take(self, block: int) -> None:
        if self._ref_count[block] == 0:
            del self._cached_free[block]
        self._ref_count[block] += 1

    def _grow(self, seq_id: int, num_new_blocks: int) -> None:
        table = self._tables[seq_id]
        for _ in range(num_new_blocks):
            table.append(self._fresh_block())

    def _fresh_block(self) -> int:
        if self._free:
            block = self._free.popleft()
        else:  # evict the least recently used cached block
            block, _ = self._cached_free.popitem(last=False)
            block_hash = self._hash_of[block]
            assert block_hash is not None
            del self._block_of[block_hash]
            self._hash_of[block] = None
        assert self._ref_count[block] == 0, f"block {block} handed out twice"
        self._ref_count[block] = 1
        return block
