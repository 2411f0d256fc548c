"""The scheduler's pure core: waiting queue, running set, KV-block accounting and batching.

Synchronous and transport-free: a runner calls `add` / `abort` / `expire` as requests come and
go, and loops `schedule(now)` -> worker step -> `on_step(batch, sampled, now)`. Batches are
answered in order. A batch whose step failed is simply not answered: the next `schedule()` drops
every unanswered batch and their sequences run again (the worker only rewrites the same KV
slots), and a late `on_step` for one is ignored.

`Scheduler` holds the one policy: continuous or static batching, chunked prefill, the token
budget, preemption. The variants act only through the hooks of hooks.py, called at named points
on whichever are on, as vLLM's scheduler calls its KV connector (ARCHITECTURE.md, "The scheduler
core and its collaborators"):

- swap.py: preemption="swap", a preempted sequence's KV to the worker's host pool and back;
- handoff.py: disaggregation, a prefill core hands finished prompts off, a decode core imports
  them;
- run_ahead.py: multi-step runs and steps built ahead (async scheduling), which build with the
  core's batch builders and need no hook.

The one-line entry points at the end of the class are the variants' public face (the runner,
the replica set and the seeded tests call them on the core); their code is in those files.
"""

from __future__ import annotations

import bisect
from collections import deque

from services.common.types import ModelInfo, SeqStep
from services.config import SchedulerSettings
from services.scheduler.block_manager import BlockManager
from services.scheduler.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    QueueFullError,
    SchedulerError,
)
from services.scheduler.handoff import HandOff, KVImports
from services.scheduler.hooks import CoreHooks
from services.scheduler.request import Batch, Request, Update
from services.scheduler.run_ahead import RunAhead
from services.scheduler.sequence import Sequence
from services.scheduler.swap import HostSwap

__all__ = [
    "Batch",
    "DeadlineExceededError",
    "InvalidRequestError",
    "QueueFullError",
    "Request",
    "Scheduler",
    "SchedulerError",
    "SchedulerSettings",
    "Update",
]


class Scheduler:
    """Continuous (or static) batching over a KV cache of `model.num_blocks` blocks."""

    def __init__(self, config: SchedulerSettings, model: ModelInfo) -> None:
        self.config = config
        self.model = model
        self._eos_token_ids = frozenset(model.eos_token_ids)
        self._blocks = BlockManager(model.num_blocks, model.block_size, config.prefix_caching)
        self._seqs: dict[str, Sequence] = {}  # every unfinished request, waiting or running
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []  # sorted by priority
        self._static_batch: set[str] = set()  # static mode: request ids of the batch in progress
        self._in_flight: list[Batch] = []  # sent, unanswered, oldest first
        self._next_seq_id = 0
        self._next_step_id = 0
        self.num_preemptions = 0
        # the variants (module docstring); each is on the hook list only while it acts
        self._hooks: list[CoreHooks] = []
        # the hooks on that act at the per-token points (a plain or swap core: none)
        self._takers: list[CoreHooks] = []
        self._elsewhere: list[CoreHooks] = []
        self._run_ahead = RunAhead(self)
        self._swap = HostSwap(model.num_swap_blocks, self._blocks, self._seqs)
        if config.preemption == "swap":
            self._use(self._swap)
        self._handoff = HandOff(self)  # on while `hands_off`: a prefill worker's core
        self._imports = KVImports(self)  # on from the first `add_prefilled`: a decode worker's

    # ---- requests in and out -------------------------------------------------------------

    def add(self, req: Request) -> None:
        """Queue a request; raises InvalidRequestError or QueueFullError (at once)."""
        self._validate(req)
        if len(self._waiting) >= self.config.max_queue_len:
            raise QueueFullError(
                f"the scheduler's waiting queue is full ({self.config.max_queue_len} requests); "
                "retry later or raise max_queue_len"
            )
        self._waiting.append(self._register(req))

    def abort(self, request_id: str) -> Update | None:
        """Drop a request and free its blocks now; None when the id is unknown (or finished)."""
        seq = self._seqs.get(request_id)
        if seq is None:
            return None
        self._finish(seq, "abort", finished_s=None)
        return Update(request_id, [], "abort")

    def expire(self, now_s: float) -> list[Update]:
        """Abort every request whose deadline is at or before `now_s`."""
        expired = [
            s
            for s in self._seqs.values()
            if s.req.deadline_s is not None
            and s.req.deadline_s <= now_s
            and not self._runs_elsewhere(s)  # a prefill core's handed-off requests
        ]
        updates = []
        for seq in expired:
            req = seq.req
            error = DeadlineExceededError(
                f"request {req.request_id!r} missed its deadline after "
                f"{now_s - req.arrival_s:.3f} s with {req.num_output_tokens} of "
                f"{req.max_tokens} tokens generated; allow a longer deadline or fewer tokens"
            )
            self._finish(seq, "abort", finished_s=now_s)
            updates.append(Update(req.request_id, [], "abort", error))
        return updates

    def get(self, request_id: str) -> Request | None:
        seq = self._seqs.get(request_id)
        return None if seq is None else seq.req

    # ---- state ---------------------------------------------------------------------------

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_free_blocks(self) -> int:
        return self._blocks.num_free_blocks

    @property
    def has_unfinished(self) -> bool:
        return bool(self._seqs)

    @property
    def next_deadline_s(self) -> float | None:
        deadlines = [s.req.deadline_s for s in self._seqs.values() if s.req.deadline_s is not None]
        return min(deadlines, default=None)

    @property
    def num_pending_tokens(self) -> int:
        """Tokens still to run for every unfinished request: prompt (or recompute) tokens not
        yet in the cache plus outputs still to generate. The router's load."""
        total = 0
        for seq in self._seqs.values():
            if self._runs_elsewhere(seq):
                continue  # the decode side runs the rest
            to_prefill = seq.num_prefill_tokens - seq.num_computed if seq.is_running else 0
            if not seq.is_running and self._kv_holder(seq) is None:
                to_prefill = seq.num_tokens
            total += max(0, to_prefill) + seq.req.max_tokens - seq.req.num_output_tokens
        return total

    def num_cached_prompt_tokens(self, prompt_token_ids: list[int]) -> int:
        """Leading prompt tokens whose KV this replica holds now (prefix-cache hits)."""
        return self._blocks.count_hits(prompt_token_ids)

    @property
    def block_manager(self) -> BlockManager:
        return self._blocks

    def time_until_static_batch(self, now_s: float) -> float | None:
        """Static mode only: seconds until the next batch may start (0: now); None when no wait
        applies (continuous mode, a batch in progress, or nothing waiting)."""
        if not self.config.is_static or self._static_batch or not self._waiting:
            return None
        if len(self._waiting) >= self.config.max_num_seqs:
            return 0.0
        oldest_arrival_s = self._waiting[0].req.arrival_s
        return max(0.0, oldest_arrival_s + self.config.static_batch_timeout_s - now_s)

    # ---- stepping ------------------------------------------------------------------------

    def schedule(self, now_s: float) -> Batch | None:
        """Build the next step: running decodes, then prompt chunks, then new prefills (FCFS)."""
        for unanswered in self._in_flight:  # failed steps: their sequences go again
            for hook in self._hooks:
                hook.on_unanswered(unanswered)
        self._in_flight = []
        batch = Batch(self._next_step_id)
        did_preempt = self._schedule_decodes(batch)
        budget = self.config.max_num_batched_tokens - batch.num_tokens
        budget = self._schedule_prompt_chunks(batch, budget)
        if not did_preempt:  # re-admitting now would only thrash the cache
            self._admit(batch, budget, now_s)
        if not batch.seq_steps:
            return None  # swap-outs stay pending: nothing writes into the freed blocks yet
        return self._hand_out(batch)

    def _hand_out(self, batch: Batch) -> Batch:
        """The batch goes to the worker and joins the steps in flight."""
        for hook in self._hooks:
            hook.before_send(batch)
        self._next_step_id += 1
        self._in_flight.append(batch)
        return batch

    @property
    def num_in_flight(self) -> int:
        """Batches handed out by schedule()/schedule_ahead() and not yet answered."""
        return len(self._in_flight)

    def on_step(self, batch: Batch, sampled: dict[int, int], now_s: float) -> list[Update]:
        """Take the worker's sampled tokens; one Update per request that got a token."""
        if not self._in_flight or batch is not self._in_flight[0]:
            return []  # dropped by on_worker_lost() or a later schedule(): it runs again
        missing = [
            s.seq_id for s in batch.seq_steps if s.sampling is not None and s.seq_id not in sampled
        ]
        if missing:
            raise SchedulerError(f"the worker returned no token for sequences {missing}")
        self._in_flight.pop(0)
        updates = []
        for step, request_id in zip(batch.seq_steps, batch.request_ids):
            seq = self._seqs.get(request_id)
            if seq is None or seq.seq_id != step.seq_id:
                continue  # aborted or finished (async: a wasted slot) while it was in flight
            seq.num_computed = step.num_tokens_after
            self._cache_full_blocks(seq)
            if step.sampling is not None:
                updates.append(self._append_token(seq, sampled[step.seq_id], now_s))
        return updates

    def on_worker_lost(self) -> None:
        """The worker restarted with an empty cache: recompute every running sequence."""
        self._in_flight = []
        recompute = list(self._running)
        for seq in self._running:
            self._release(seq)
        for hook in self._hooks:
            recompute += hook.on_worker_lost()
        self._waiting.extendleft(reversed(recompute))
        self._running = []
        self._blocks.reset_prefix_cache()  # the cached blocks' contents are gone too

    # ---- internals -----------------------------------------------------------------------

    def _validate(self, req: Request) -> None:
        num_prompt = len(req.prompt_token_ids)
        if req.request_id in self._seqs:
            raise InvalidRequestError(
                f"request id {req.request_id!r} is already in use by an unfinished request"
            )
        if num_prompt == 0:
            raise InvalidRequestError("the prompt is empty; give at least one token")
        if req.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be >= 1, got {req.max_tokens}")
        if num_prompt + req.max_tokens > self.model.max_context:
            raise InvalidRequestError(
                f"prompt has {num_prompt} tokens and max_tokens is {req.max_tokens}, but the "
                f"model's context is {self.model.max_context} tokens; shorten the prompt or "
                "lower max_tokens"
            )
        # the last sampled token is never fed back, so it needs no cache slot
        num_slots = num_prompt + req.max_tokens - 1
        num_blocks = self._blocks.num_blocks_for(num_slots)
        if num_blocks > self._blocks.num_blocks:
            raise InvalidRequestError(
                f"prompt ({num_prompt} tokens) plus max_tokens ({req.max_tokens}) needs "
                f"{num_blocks} KV blocks but the worker's cache has only "
                f"{self._blocks.num_blocks}; shorten the request or give the worker more memory"
            )
        if (
            not self.config.enable_chunked_prefill
            and num_slots > self.config.max_num_batched_tokens
        ):
            raise InvalidRequestError(
                f"prompt ({num_prompt} tokens) plus max_tokens ({req.max_tokens}) may need a "
                f"prefill of {num_slots} tokens, over max_num_batched_tokens "
                f"({self.config.max_num_batched_tokens}) with chunked prefill off"
            )

    def _schedule_decodes(self, batch: Batch) -> bool:
        """One token for every decoding sequence, oldest first, preempting the youngest when the
        cache is full. Returns whether anything was preempted."""
        did_preempt = False
        scheduled: set[int] = set()
        for seq in [s for s in self._running if not s.is_prefill]:
            if not seq.is_running:
                continue  # preempted to make room for an older one
            while not self._blocks.can_append_slot(seq.seq_id, seq.num_tokens):
                victim = next(s for s in reversed(self._running) if s.seq_id not in scheduled)
                self._preempt(victim)
                did_preempt = True
                if victim is seq:
                    break
            else:
                scheduled.add(seq.seq_id)
                self._add_decode(batch, seq, seq.last_token, seq.num_tokens - 1)
        return did_preempt

    def _schedule_prompt_chunks(self, batch: Batch, budget: int) -> int:
        """Next chunk of each running sequence whose prompt is not yet fully computed."""
        for seq in self._running:
            if budget == 0:
                break
            if seq.is_prefill:
                budget -= self._add_prefill(batch, seq, budget)
        return budget

    def _admit(self, batch: Batch, budget: int, now_s: float) -> None:
        """Start waiting sequences FCFS while budget, max_num_seqs, max_prefill_seqs and free
        blocks allow."""
        if self.config.is_static and not self._static_batch:
            self._start_static_batch(now_s)
        cap, admitted = self.config.max_prefill_seqs, 0
        while self._waiting and budget > 0 and len(self._running) < self.config.max_num_seqs:
            if 0 < cap <= admitted:
                break
            admitted += 1
            seq = self._waiting[0]
            if self.config.is_static and seq.req.request_id not in self._static_batch:
                break  # members of the batch in progress always queue ahead of newcomers
            if not self.config.enable_chunked_prefill and seq.num_tokens > budget:
                break
            holder = self._kv_holder(seq)
            if holder is not None:
                if not self._blocks.can_allocate(seq.num_tokens):
                    break
                self._waiting.popleft()
                budget -= self._resume(batch, seq, budget, holder)
                continue
            if not self._can_allocate(seq):
                break
            self._waiting.popleft()
            self._start(seq, now_s)
            budget -= self._add_prefill(batch, seq, budget)

    def _start_static_batch(self, now_s: float) -> None:
        if self.time_until_static_batch(now_s) != 0.0:
            return
        members = list(self._waiting)[: self.config.max_num_seqs]
        self._static_batch = {s.req.request_id for s in members}

    def _start(self, seq: Sequence, now_s: float) -> None:
        # blocks for the whole prompt now, so later chunks never wait for memory; with prefix
        # caching its leading full blocks may already be computed
        seq.num_computed = 0
        if self.config.prefix_caching:
            tokens = seq.tokens(0, seq.num_tokens)
            seq.num_computed = self._blocks.allocate_prefix(seq.seq_id, tokens)
        else:
            self._blocks.allocate(seq.seq_id, seq.num_tokens)
        seq.num_prefill_tokens = seq.num_tokens
        if seq.req.first_scheduled_s is None:
            seq.req.first_scheduled_s = now_s
        self._add_running(seq)

    def _can_allocate(self, seq: Sequence) -> bool:
        if not self.config.prefix_caching:
            return self._blocks.can_allocate(seq.num_tokens)
        return self._blocks.can_allocate(seq.num_tokens, seq.tokens(0, seq.num_tokens))

    def _cache_full_blocks(self, seq: Sequence) -> None:
        """Name the blocks this step filled, for later sequences to share."""
        blocks = self._blocks
        if blocks.enable_prefix_caching and blocks.has_unnamed_full_block(
            seq.seq_id, seq.num_computed
        ):
            blocks.cache_full_blocks(seq.seq_id, seq.tokens(0, seq.num_computed), seq.num_computed)

    def _add_prefill(self, batch: Batch, seq: Sequence, budget: int) -> int:
        """Add the sequence's next prompt chunk (at most `budget` tokens); returns its size."""
        return self._add_chunk(batch, seq, seq.num_computed, budget)

    def _add_chunk(self, batch: Batch, seq: Sequence, start: int, budget: int) -> int:
        stop = min(seq.num_prefill_tokens, start + budget)
        is_last_chunk = stop == seq.num_prefill_tokens
        step = SeqStep(
            seq.seq_id,
            seq.tokens(start, stop),
            start,
            list(self._blocks.block_table(seq.seq_id)),
            seq.req.sampling if is_last_chunk else None,
        )
        batch.add(step, seq.req.request_id, "prefill")
        return stop - start

    def _append_token(self, seq: Sequence, token: int, now_s: float) -> Update:
        req = seq.req
        req.output_token_ids.append(token)
        if req.first_token_s is None:
            req.first_token_s = now_s
        reason = ""
        if token in self._eos_token_ids and not req.ignore_eos:
            reason = "stop"
        elif req.num_output_tokens >= req.max_tokens:
            reason = "length"
        if reason:
            self._finish(seq, reason, now_s)
        elif self._takers and any(hook.takes_after_sample(seq) for hook in self._takers):
            self._running.remove(seq)  # e.g. its prompt is done: it decodes elsewhere
            seq.is_running = False
        return Update(req.request_id, [token], reason)

    def _preempt(self, seq: Sequence) -> None:
        """Free the sequence's blocks and queue it first; it is recomputed from its tokens, or,
        when a hook keeps its KV (preemption="swap"), resumes where it was."""
        self._running.remove(seq)
        is_kept = any(hook.on_preempt(seq) for hook in self._hooks)
        num_computed, num_prefill_tokens = seq.num_computed, seq.num_prefill_tokens
        self._release(seq)
        if is_kept:
            seq.num_computed, seq.num_prefill_tokens = num_computed, num_prefill_tokens
        seq.req.num_preemptions += 1
        self.num_preemptions += 1
        self._waiting.appendleft(seq)

    def _resume(self, batch: Batch, seq: Sequence, budget: int, holder: CoreHooks) -> int:
        """Bring back a sequence whose KV `holder` kept: fresh blocks, its KV restored before
        the step, and its next chunk or decode in this batch; returns the tokens it adds."""
        table = self._blocks.allocate(seq.seq_id, seq.num_tokens)
        holder.restore(seq, table, batch)
        self._add_running(seq)
        if seq.is_prefill:
            return self._add_prefill(batch, seq, budget)
        self._add_decode(batch, seq, seq.last_token, seq.num_tokens - 1)
        return 1

    def _add_decode(self, batch: Batch, seq: Sequence, token: int, position: int) -> None:
        """The one decode step of a sequence: `token` at `position`, a slot for it allocated
        (the one place a decode SeqStep is built, whichever path schedules it)."""
        table = self._blocks.append_slot(seq.seq_id, position + 1)
        step = SeqStep(seq.seq_id, [token], position, list(table), seq.req.sampling)
        batch.add(step, seq.req.request_id, "decode")

    def _release(self, seq: Sequence) -> None:
        self._blocks.free(seq.seq_id)
        seq.is_running = False
        seq.recompute()

    def _add_running(self, seq: Sequence) -> None:
        seq.is_running = True
        bisect.insort(self._running, seq, key=lambda s: s.priority)

    def _finish(self, seq: Sequence, reason: str, finished_s: float | None) -> None:
        req = seq.req
        del self._seqs[req.request_id]
        self._static_batch.discard(req.request_id)
        if seq.is_running:
            self._running.remove(seq)
            self._release(seq)
            req.finish_reason, req.finished_s = reason, finished_s
            return
        runs_elsewhere = self._runs_elsewhere(seq)
        is_held = False
        for hook in self._hooks:  # each frees what it holds of it
            is_held |= hook.drop(seq)
        if not is_held:
            self._waiting.remove(seq)
        if not runs_elsewhere:  # else its state is not this core's to end
            req.finish_reason, req.finished_s = reason, finished_s

    def _register(self, req: Request) -> Sequence:
        """A new unfinished request: its sequence, under a fresh id."""
        seq = Sequence(req, self._next_seq_id)
        self._next_seq_id += 1
        self._seqs[req.request_id] = seq
        return seq

    # ---- the hooks (hooks.py) ------------------------------------------------------------

    def _use(self, hook: CoreHooks, is_on: bool = True) -> None:
        """Put a variant's hooks on (or take them off) the list the core calls."""
        if is_on and hook not in self._hooks:
            self._hooks.append(hook)
        elif not is_on and hook in self._hooks:
            self._hooks.remove(hook)
        self._takers = _overriding(self._hooks, "takes_after_sample")
        self._elsewhere = _overriding(self._hooks, "runs_elsewhere")

    def _runs_elsewhere(self, seq: Sequence) -> bool:
        return bool(self._elsewhere) and any(h.runs_elsewhere(seq) for h in self._elsewhere)

    def _kv_holder(self, seq: Sequence) -> CoreHooks | None:
        if not self._hooks:
            return None
        return next((hook for hook in self._hooks if hook.holds_kv(seq)), None)

    # ---- the variants' entry points: one line each (their code: run_ahead.py, handoff.py,
    # swap.py) ------------------------------------------------------------------------------

    def schedule_run(self, now_s: float) -> list[Batch]:
        """`schedule()` and, with multi-step, the decode steps chained behind it."""
        return self._run_ahead.schedule_run(now_s)

    def schedule_ahead(self, now_s: float) -> Batch | None:
        """Async scheduling: the step after the ones in flight."""
        return self._run_ahead.schedule_ahead(now_s)

    def schedule_run_ahead(self, now_s: float) -> list[Batch]:
        """Async scheduling with multi-step: `schedule_ahead()`, extended."""
        return self._run_ahead.schedule_run_ahead(now_s)

    @property
    def num_scheduled_ahead(self) -> int:
        return self._run_ahead.num_scheduled_ahead

    @property
    def hands_off(self) -> bool:
        """A prefill worker's core: requests whose prompt is done leave for `take_handoffs`."""
        return self._handoff in self._hooks

    @hands_off.setter
    def hands_off(self, is_prefill_side: bool) -> None:
        self._use(self._handoff, is_prefill_side)

    def take_handoffs(self) -> list[tuple[str, list[int]]]:
        """Prefill side: the requests whose prompt is done since the last call, each with the
        blocks holding its computed tokens' KV (held until `release_handoff`)."""
        return self._handoff.take()

    def release_handoff(self, request_id: str) -> bool:
        """Prefill side: free a handed-off request's blocks; False when they were no longer
        held (the worker was lost meanwhile: what the decode side pulled is not its KV)."""
        return self._handoff.release(request_id)

    def add_prefilled(self, req: Request) -> None:
        """Decode side: a request whose tokens but the last have their KV on a prefill worker;
        it waits for blocks (`start_imports`). Raises InvalidRequestError."""
        self._imports.add(req)

    def start_imports(self) -> list[tuple[str, int, list[int]]]:
        """Decode side: blocks for the prefilled requests the cache and max_num_seqs have room
        for, oldest first: (request id, seq id, the blocks its KV goes into)."""
        return self._imports.start()

    def finish_import(self, request_id: str, ok: bool) -> None:
        """Decode side: the KV of a request from `start_imports` is in its blocks (`ok`): it
        decodes from the next step; or the transfer failed: its tokens are recomputed here."""
        self._imports.finish(request_id, ok)

    @property
    def num_importing(self) -> int:
        return self._imports.num_importing

    @property
    def num_swapped(self) -> int:
        """Waiting sequences whose KV is in the worker's host pool."""
        return self._swap.num_swapped

    @property
    def num_swapped_out(self) -> int:
        """Preemptions whose KV went to the worker's host pool, cumulative."""
        return self._swap.num_swapped_out

    @property
    def num_free_host_blocks(self) -> int:
        return self._swap.num_free_blocks


def _overriding(hooks: list[CoreHooks], point: str) -> list[CoreHooks]:
    """The hooks that act at `point` (override its do-nothing default)."""
    return [h for h in hooks if getattr(type(h), point) is not getattr(CoreHooks, point)]
