"""The paged KV cache: per layer, K and V for `num_blocks * block_size` token slots.

A sequence's token at position p lives in slot `block_table[p // block_size] * block_size +
p % block_size`; the scheduler owns which blocks belong to which sequence."""

from __future__ import annotations

import torch

from services.models.config import ModelConfig


class KVCacheTooSmallError(RuntimeError):
    """The memory budget does not hold even one block per sequence of maximal length."""


def bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    element_bytes = torch.empty((), dtype=dtype).element_size()
    return (
        2 * config.num_layers * block_size * config.num_kv_heads * config.head_dim * element_bytes
    )


class KVCache:
    def __init__(
        self,
        config: ModelConfig,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
        has_scratch_block: bool = False,
    ) -> None:
        self.num_blocks = num_blocks  # the blocks the scheduler hands out: 0..num_blocks-1
        self.block_size = block_size
        # One more block, never handed out, where the padding rows of a fixed-shape decode batch
        # write and read (services/worker/static_decode.py): block `num_blocks`.
        self.scratch_block = num_blocks if has_scratch_block else None
        num_slots = (num_blocks + has_scratch_block) * block_size
        # Head-major: a gather of blocks yields [kv_heads, blocks, ...], ready for batched
        # matmuls over (kv head, sequence) without a transposing copy.
        shape = (config.num_layers, 2, config.num_kv_heads, num_slots, config.head_dim)
        self.data = torch.zeros(shape, dtype=dtype, device=device)

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of one layer, each [kv_heads, num_slots, head_dim]."""
        return self.data[index, 0], self.data[index, 1]

    @property
    def num_bytes(self) -> int:
        return self.data.numel() * self.data.element_size()


def num_blocks_for_budget(
    config: ModelConfig, block_size: int, dtype: torch.dtype, budget_bytes: int, max_context: int
) -> int:
    num_blocks = budget_bytes // bytes_per_block(config, block_size, dtype)
    needed = -(-max_context // block_size)
    if num_blocks < needed:
        needed_mib = -(-needed * bytes_per_block(config, block_size, dtype) // 2**20)
        raise KVCacheTooSmallError(
            f"KV-cache budget of {budget_bytes / 2**20:.1f} MiB holds {num_blocks} blocks of "
            f"{block_size} tokens, fewer than the {needed} one sequence of {max_context} tokens "
            f"needs; raise --kv-cache-mb (to at least {needed_mib}) or lower --max-model-len"
        )
    return int(num_blocks)
