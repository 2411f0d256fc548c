"""Prefill/decode disaggregation, the core's side (ARCHITECTURE.md, "Roles and the handoff"): two
collaborators the core calls at named points, as vLLM's scheduler calls its KV connector.

- `HandOff`, on a prefill worker's core (`hands_off`): a request whose step sampled a token (its
  prompt is done) leaves the running set for it (`add`); `take` gives it out with the blocks
  holding its KV, held until `release` (the decode worker has them by then).
- `KVImports`, on a decode worker's core: a prefilled request (`add`) waits for blocks, gets them
  in `start` when the cache and max_num_seqs have room, and leaves in `finish` once its KV is in
  them (the core then decodes it) or the transfer failed (the core recomputes it).
"""

from __future__ import annotations

from collections import deque

from services.scheduler.block_manager import BlockManager
from services.scheduler.sequence import Sequence


class HandOff:
    """Prefill side: requests whose prompt is done, their blocks held for the decode side."""

    def __init__(self, blocks: BlockManager) -> None:
        self._blocks = blocks
        self._held: dict[str, Sequence] = {}
        self._new: list[str] = []  # added since the last `take`

    def holds(self, request_id: str) -> bool:
        return request_id in self._held

    def add(self, seq: Sequence) -> None:
        self._held[seq.req.request_id] = seq
        self._new.append(seq.req.request_id)

    def take(self) -> list[tuple[str, list[int]]]:
        """The requests added since the last call, each with the blocks holding its computed
        tokens' KV."""
        out = []
        for request_id in self._new:
            seq = self._held.get(request_id)
            if seq is not None:
                num_blocks = self._blocks.num_blocks_for(seq.num_computed)
                out.append((request_id, list(self._blocks.block_table(seq.seq_id)[:num_blocks])))
        self._new.clear()
        return out

    def release(self, request_id: str) -> Sequence | None:
        """Free a request's blocks; None when they were no longer held."""
        seq = self._held.pop(request_id, None)
        if seq is not None:
            self._blocks.free(seq.seq_id)
        return seq

    def on_worker_lost(self) -> list[Sequence]:
        """The KV went with the worker: every held request is released (the decode side's
        import fails and recomputes it there)."""
        lost = list(self._held.values())
        for seq in lost:
            self._blocks.free(seq.seq_id)
        self._held.clear()
        self._new.clear()
        return lost


class KVImports:
    """Decode side: prefilled requests waiting for blocks, then for their KV to arrive."""

    def __init__(self, blocks: BlockManager) -> None:
        self._blocks = blocks
        self._waiting: deque[Sequence] = deque()
        self._importing: dict[str, Sequence] = {}

    @property
    def num_importing(self) -> int:
        return len(self._importing) + len(self._waiting)

    def add(self, seq: Sequence) -> None:
        self._waiting.append(seq)

    def start(self, max_importing: int) -> list[tuple[str, int, list[int]]]:
        """Blocks for the waiting requests the cache has room for, oldest first, while fewer
        than `max_importing` are importing: (request id, seq id, the blocks its KV goes into)."""
        started = []
        while self._waiting and len(self._importing) < max_importing:
            seq = self._waiting[0]
            if not self._blocks.can_allocate(seq.num_tokens):
                break
            self._waiting.popleft()
            table = self._blocks.allocate(seq.seq_id, seq.num_tokens)
            self._importing[seq.req.request_id] = seq
            num_blocks = self._blocks.num_blocks_for(seq.num_tokens - 1)
            started.append((seq.req.request_id, seq.seq_id, list(table[:num_blocks])))
        return started

    def finish(self, request_id: str, ok: bool) -> Sequence | None:
        """A transfer from `start` ended: the request leaves (its blocks freed unless `ok`);
        None when it left already (aborted, finished or lost with the worker)."""
        seq = self._importing.pop(request_id, None)
        if seq is not None and not ok:
            self._blocks.free(seq.seq_id)
        return seq

    def drop(self, seq: Sequence) -> bool:
        """The request ends here: free what it holds. False when it is not importing."""
        if self._importing.pop(seq.req.request_id, None) is not None:
            self._blocks.free(seq.seq_id)
            return True
        if seq in self._waiting:
            self._waiting.remove(seq)
            return True
        return False

    def on_worker_lost(self) -> list[Sequence]:
        """Every request here, its blocks freed, to be recomputed by the core."""
        for seq in self._importing.values():
            self._blocks.free(seq.seq_id)
        lost = [*self._importing.values(), *self._waiting]
        self._importing.clear()
        self._waiting.clear()
        return lost
