"""The worker's host pool for swapped-out KV blocks: the scheduler preempts a sequence, its blocks
are copied here (device -> host) at the start of the next step, and copied back into the blocks it
is given when it resumes, instead of recomputing its tokens.

On CUDA the pool is pinned memory and the copies run on their own stream (the default stream
waits for them before the step's forward pass); on CPU the "host" pool is simply a second tensor.
"""

from __future__ import annotations

import torch

from services.worker.kv_cache import KVCache


class HostKVPool:
    """`num_blocks` blocks laid out like the device cache, in host memory."""

    def __init__(self, cache: KVCache, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = cache.block_size
        self._device = cache.data.device
        self._is_cuda = self._device.type == "cuda"
        shape = list(cache.data.shape)
        shape[3] = num_blocks * cache.block_size
        self.data = torch.zeros(shape, dtype=cache.data.dtype, pin_memory=self._is_cuda)
        self._stream = torch.cuda.Stream(self._device) if self._is_cuda else None

    @property
    def num_bytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def _slots(self, blocks: list[int]) -> torch.Tensor:
        """Slot indices of the blocks, block by block (a block's slots are contiguous)."""
        offsets = torch.arange(self.block_size)
        return (torch.tensor(blocks, dtype=torch.long)[:, None] * self.block_size + offsets).ravel()

    def swap_out(self, cache: KVCache, pairs: list[tuple[int, int]]) -> None:
        """Copy device blocks to host blocks: pairs of (device block, host block)."""
        if not pairs:
            return
        device_slots = self._slots([d for d, _ in pairs]).to(self._device)
        host_slots = self._slots([h for _, h in pairs])
        gathered = cache.data.index_select(3, device_slots)
        if self._stream is None:
            self.data.index_copy_(3, host_slots, gathered)
            return
        staging = torch.empty(gathered.shape, dtype=gathered.dtype, pin_memory=True)
        self._stream.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(self._stream):
            gathered.record_stream(self._stream)
            staging.copy_(gathered, non_blocking=True)
        self._stream.synchronize()  # the host copy is read below, and the blocks reused next
        self.data.index_copy_(3, host_slots, staging)

    def swap_in(self, cache: KVCache, pairs: list[tuple[int, int]]) -> None:
        """Copy host blocks back into device blocks: pairs of (host block, device block)."""
        if not pairs:
            return
        host_slots = self._slots([h for h, _ in pairs])
        device_slots = self._slots([d for _, d in pairs]).to(self._device)
        gathered = self.data.index_select(3, host_slots)
        if self._stream is None:
            cache.data.index_copy_(3, device_slots, gathered)
            return
        staging = gathered.pin_memory()
        with torch.cuda.stream(self._stream):
            on_device = staging.to(self._device, non_blocking=True)
        current = torch.cuda.current_stream(self._device)
        current.wait_stream(self._stream)  # the forward pass reads these blocks
        on_device.record_stream(current)
        cache.data.index_copy_(3, device_slots, on_device)
        self._stream.synchronize()  # so the Swap span times the transfer itself
