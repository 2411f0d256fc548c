"""Prefill/decode disaggregation, the core's side (ARCHITECTURE.md, "Roles and the handoff"): two
collaborators on the core's hooks (hooks.py), as vLLM's scheduler calls its KV connector.

- `HandOff`, on a prefill worker's core (`hands_off`): a request whose step sampled a token (its
  prompt is done) leaves the running set for it (`takes_after_sample`); `take` gives it out with
  the blocks holding its KV, held until `release` (the decode worker has them by then).
- `KVImports`, on a decode worker's core: a prefilled request (`add`) waits for blocks, gets them
  in `start` when the cache and max_num_seqs have room, and leaves in `finish` once its KV is in
  them (it then decodes) or the transfer failed (it is recomputed).

Each is on the core's hook list only while it has a part to play (`hands_off` set, a first
prefilled request): a mixed worker's core calls neither.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from services.scheduler.hooks import CoreHooks
from services.scheduler.request import Request
from services.scheduler.sequence import Sequence

if TYPE_CHECKING:
    from services.scheduler.core import Scheduler


class HandOff(CoreHooks):
    """Prefill side: requests whose prompt is done, their blocks held for the decode side."""

    def __init__(self, core: Scheduler) -> None:
        self._core = core
        self._blocks = core.block_manager
        self._held: dict[str, Sequence] = {}
        self._new: list[str] = []  # added since the last `take`

    def runs_elsewhere(self, seq: Sequence) -> bool:
        return seq.req.request_id in self._held

    def takes_after_sample(self, seq: Sequence) -> bool:
        self._held[seq.req.request_id] = seq
        self._new.append(seq.req.request_id)
        return True

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

    def release(self, request_id: str) -> bool:
        """Free a handed-off request's blocks, and the core forgets it; False when they were no
        longer held (the worker was lost meanwhile: what the decode side pulled is not its KV)."""
        seq = self._held.pop(request_id, None)
        if seq is None:
            return False
        self._blocks.free(seq.seq_id)
        if self._core._seqs.get(request_id) is seq:
            del self._core._seqs[request_id]
        return True

    def drop(self, seq: Sequence) -> bool:
        return self.release(seq.req.request_id)

    def on_worker_lost(self) -> list[Sequence]:
        """The KV went with the worker: every held request is released (the decode side's
        import fails and recomputes it there); none is recomputed here."""
        for request_id in list(self._held):
            self.release(request_id)
        self._new.clear()
        return []


class KVImports(CoreHooks):
    """Decode side: prefilled requests waiting for blocks, then for their KV to arrive."""

    def __init__(self, core: Scheduler) -> None:
        self._core = core
        self._blocks = core.block_manager
        self._waiting: deque[Sequence] = deque()
        self._importing: dict[str, Sequence] = {}

    @property
    def num_importing(self) -> int:
        return len(self._importing) + len(self._waiting)

    def add(self, req: Request) -> None:
        """A request whose tokens but the last have their KV on a prefill worker; raises
        InvalidRequestError."""
        self._core._validate(req)
        self._waiting.append(self._core._register(req))
        self._core._use(self)

    def start(self) -> list[tuple[str, int, list[int]]]:
        """Blocks for the waiting requests the cache has room for, oldest first, while the
        running set and the imports stay within max_num_seqs: (request id, seq id, the blocks
        its KV goes into)."""
        core = self._core
        started = []
        while self._waiting and len(self._importing) < core.config.max_num_seqs - core.num_running:
            seq = self._waiting[0]
            if not self._blocks.can_allocate(seq.num_tokens):
                break
            self._waiting.popleft()
            table = self._blocks.allocate(seq.seq_id, seq.num_tokens)
            self._importing[seq.req.request_id] = seq
            num_blocks = self._blocks.num_blocks_for(seq.num_tokens - 1)
            started.append((seq.req.request_id, seq.seq_id, list(table[:num_blocks])))
        return started

    def finish(self, request_id: str, ok: bool) -> None:
        """A transfer from `start` ended: with `ok` the request decodes from the next step;
        otherwise its blocks are freed and its tokens recomputed. Nothing when it left already
        (aborted, finished or lost with the worker)."""
        seq = self._importing.pop(request_id, None)
        if seq is None:
            return
        if not ok:
            self._blocks.free(seq.seq_id)
            self._core._waiting.appendleft(seq)  # recomputed first
            return
        seq.num_computed = seq.num_prefill_tokens = seq.num_tokens - 1
        self._core._add_running(seq)

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
