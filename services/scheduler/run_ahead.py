"""Multi-step runs and steps built ahead (async scheduling): batches chained behind the ones in
flight before their tokens are known, each decode carrying PLACEHOLDER_TOKEN_ID for the token the
step before it samples (the worker fills it in).

A collaborator of the core in the manner of vLLM's `AsyncScheduler`, which is a subclass: it
reads the core's running set and steps in flight and builds with the core's batch builders; the
base policy (`Scheduler.schedule`) knows nothing of it. `schedule_run` with num_scheduler_steps 1
and no `schedule_ahead` call is the plain synchronous loop.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from services.common.types import PLACEHOLDER_TOKEN_ID
from services.scheduler.request import Batch
from services.scheduler.sequence import Sequence

if TYPE_CHECKING:
    from services.scheduler.core import Scheduler


class RunAhead:
    def __init__(self, core: Scheduler) -> None:
        self._core = core
        self.num_scheduled_ahead = 0  # steps built while another ran

    def schedule_run(self, now_s: float) -> list[Batch]:
        """`schedule()`, and when that step is decodes only (no prompt chunk, no swap), up to
        num_scheduler_steps - 1 further decode steps chained behind it: each sequence one
        position further with PLACEHOLDER_TOKEN_ID, unless max_tokens certainly finishes it
        first (EOS wastes the rest of its run, which on_step drops). The run is cut short where
        the cache has no block for the next position. Answer each batch with on_step, in order;
        [] when nothing can run."""
        first = self._core.schedule(now_s)
        return [] if first is None else self._extend_run(first)

    def schedule_run_ahead(self, now_s: float) -> list[Batch]:
        """Async scheduling with multi-step: `schedule_ahead()` (the step after every one in
        flight), extended like `schedule_run()`; [] when nothing can be built ahead."""
        first = self.schedule_ahead(now_s)
        return [] if first is None else self._extend_run(first)

    def schedule_ahead(self, now_s: float) -> Batch | None:
        """Async scheduling: build the step after the ones in flight before their tokens are
        known (one step, or with multi-step a run of them: the last one in flight counts).

        Each sequence the last step samples for decodes one position further with
        PLACEHOLDER_TOKEN_ID (the worker runs the token it sampled), unless the tokens in flight
        certainly finish it (max_tokens); one they finish on EOS wastes its slot, which on_step
        drops. Prompt chunks continue where the last step's end. None when nothing can run or
        the decodes would need a preemption: the caller then waits and calls `schedule()`."""
        core = self._core
        if not core._in_flight:
            return None
        decodes, chunk_starts = self._positions_after_flight()
        blocks = core._blocks
        missing = sum(blocks.num_missing_blocks(s.seq_id, pos + 1) for s, pos, _ in decodes)
        if missing > blocks.num_free_blocks:
            return None
        batch = Batch(core._next_step_id)
        for seq, pos, token in decodes:
            core._add_decode(batch, seq, token, pos)
        budget = core.config.max_num_batched_tokens - batch.num_tokens
        for seq, start in chunk_starts:
            if budget == 0:
                break
            budget -= core._add_chunk(batch, seq, start, budget)
        core._admit(batch, budget, now_s)
        if not batch.seq_steps:
            return None
        self.num_scheduled_ahead += 1
        return core._hand_out(batch)

    def _positions_after_flight(
        self,
    ) -> tuple[list[tuple[Sequence, int, int]], list[tuple[Sequence, int]]]:
        """Where each running sequence stands once the steps in flight are done: its decode
        (seq, position, token id) or the start of its next prompt chunk (seq, start)."""
        core = self._core
        running = {s.seq_id: s for s in core._in_flight[-1].seq_steps}
        in_flight = {s.seq_id for b in core._in_flight for s in b.seq_steps}
        pending = self._pending_samples()
        decodes: list[tuple[Sequence, int, int]] = []
        chunk_starts: list[tuple[Sequence, int]] = []
        for seq in core._running:
            step = running.get(seq.seq_id)
            if step is None:
                if seq.seq_id in in_flight:
                    continue  # in an earlier step in flight but not the last: it is ending
                if seq.is_prefill:
                    chunk_starts.append((seq, seq.num_computed))
                else:
                    decodes.append((seq, seq.num_tokens - 1, seq.last_token))
            elif step.sampling is None:
                chunk_starts.append((seq, step.num_tokens_after))
            elif core.hands_off:
                continue  # its prompt is done: it decodes on a decode worker
            elif seq.req.num_output_tokens + pending[seq.seq_id] < seq.req.max_tokens:
                decodes.append((seq, step.num_tokens_after, PLACEHOLDER_TOKEN_ID))
        return decodes, chunk_starts

    def _extend_run(self, first: Batch) -> list[Batch]:
        run = [first]
        is_decodes_only = all(p == "decode" for p in first.phases) and not first.swaps
        num_steps = self._core.config.num_scheduler_steps
        if not is_decodes_only or num_steps == 1:
            return run
        pending = self._pending_samples()
        while len(run) < num_steps:
            after = self._decode_after(run[-1], pending)
            if after is None:
                break
            run.append(after)
        return run

    def _pending_samples(self) -> Counter[int]:
        """seq_id -> steps in flight that sample a token for it (its tokens not yet known)."""
        return Counter(
            s.seq_id for b in self._core._in_flight for s in b.seq_steps if s.sampling is not None
        )

    def _decode_after(self, before: Batch, pending: Counter[int]) -> Batch | None:
        """The decode step after `before`, the last in flight; `pending` counts each sequence's
        samples in flight, and is updated with this step's."""
        core = self._core
        blocks = core._blocks
        decodes: list[tuple[Sequence, int]] = []  # (sequence, position)
        for step, request_id in zip(before.seq_steps, before.request_ids):
            seq = core._seqs[request_id]
            if seq.req.num_output_tokens + pending[seq.seq_id] < seq.req.max_tokens:
                decodes.append((seq, step.num_tokens_after))
        missing = sum(blocks.num_missing_blocks(s.seq_id, pos + 1) for s, pos in decodes)
        if not decodes or missing > blocks.num_free_blocks:
            return None
        batch = Batch(core._next_step_id)
        for seq, pos in decodes:
            core._add_decode(batch, seq, PLACEHOLDER_TOKEN_ID, pos)
            pending[seq.seq_id] += 1
        return core._hand_out(batch)
