"""preemption="swap": a preempted sequence's KV is copied to the worker's host pool and back when
it resumes, instead of being recomputed (vLLM's KV offload). The core's hooks (hooks.py) are
where it acts: `on_preempt` queues the copy out, `holds_kv` / `restore` bring it back at
admission, `before_send` puts the queued copies on the next batch, `on_unanswered` distrusts the
copies of a lost batch, `drop` and `on_worker_lost` forget them."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from services.scheduler.block_manager import BlockManager
from services.scheduler.hooks import CoreHooks
from services.scheduler.request import Batch
from services.scheduler.sequence import Sequence


class HostSwap(CoreHooks):
    """The worker's host pool of `num_host_blocks` blocks, as the core sees it; `seqs` is the
    core's unfinished requests by id."""

    def __init__(
        self, num_host_blocks: int, blocks: BlockManager, seqs: Mapping[str, Sequence]
    ) -> None:
        self._blocks = blocks
        self._seqs = seqs
        self._free: deque[int] = deque(range(num_host_blocks))
        self._held: dict[str, list[int]] = {}  # request id -> host blocks of its KV
        # swap-outs not yet sent to the worker (request id -> (device, host) block pairs)
        self._pending_out: dict[str, list[tuple[int, int]]] = {}
        self.num_swapped_out = 0  # preemptions whose KV went to the host pool, cumulative

    @property
    def num_swapped(self) -> int:
        """Waiting sequences whose KV is in the host pool."""
        return len(self._held)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def holds_kv(self, seq: Sequence) -> bool:
        return seq.req.request_id in self._held

    def on_preempt(self, seq: Sequence) -> bool:
        """Host blocks for its computed blocks, the copy queued. False when there is nothing to
        keep or no room: it is recomputed instead."""
        num_blocks = self._blocks.num_blocks_for(seq.num_computed)
        if num_blocks == 0 or num_blocks > len(self._free):
            return False
        host_blocks = [self._free.popleft() for _ in range(num_blocks)]
        table = self._blocks.block_table(seq.seq_id)
        self._pending_out[seq.req.request_id] = list(zip(table, host_blocks))
        self._held[seq.req.request_id] = host_blocks
        self.num_swapped_out += 1
        return True

    def restore(self, seq: Sequence, table: list[int], batch: Batch) -> None:
        host_blocks = self._held.pop(seq.req.request_id)
        batch.swaps.swap_in.extend(zip(host_blocks, table))
        batch.swapped_in.append(seq.req.request_id)
        # free now: a swap-out reusing them comes in a later step (none is queued while a
        # schedule() preempts, and the worker copies out before in within a step)
        self._free.extend(host_blocks)

    def before_send(self, batch: Batch) -> None:
        """The batch carries every swap-out queued so far (its copies run before the step writes
        into the freed blocks)."""
        for request_id, pairs in self._pending_out.items():
            batch.swaps.swap_out.extend(pairs)
            batch.swapped_out.append(request_id)
        self._pending_out.clear()

    def on_unanswered(self, batch: Batch) -> None:
        """Its copies may not have happened, so the sequences it swapped out or in are
        recomputed."""
        for request_id in batch.swapped_out:
            seq = self._seqs.get(request_id)
            if seq is not None and not seq.is_running:
                self.drop(seq)
        for request_id in batch.swapped_in:
            seq = self._seqs.get(request_id)
            if seq is not None and seq.is_running:  # its blocks cover every token: rerun them
                seq.num_computed = 0
                seq.num_prefill_tokens = seq.num_tokens

    def drop(self, seq: Sequence) -> bool:
        """Forget a waiting sequence's host copy (it ended, or the copy cannot be trusted); it
        stays in the waiting queue, so always False."""
        host_blocks = self._held.pop(seq.req.request_id, None)
        if host_blocks is not None:
            self._free.extend(host_blocks)
            self._pending_out.pop(seq.req.request_id, None)
            seq.recompute()
        return False

    def on_worker_lost(self) -> list[Sequence]:
        """The host pool went with the worker: swapped sequences are recomputed (they stay
        where they are in the waiting queue)."""
        self._pending_out.clear()
        for request_id in list(self._held):
            self.drop(self._seqs[request_id])
        return []
