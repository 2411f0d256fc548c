"""Drives the pure scheduler core: one step at a time against a worker, delivering each step's
tokens to the connections that asked for them (one delivery per connection per step).

It owns the spans of the scheduler: a Submit SERVER span per request (queue, prefill and
decode time) and a Step CLIENT span per step, linked to the requests it served.

Its loop is the synchronous one (schedule a step or multi-step run, send it, apply its answer).
Two collaborators hold the variants, called at named points: overlap.py (async scheduling: a
step built ahead while one runs) and kv_handoff.py (disaggregation: a prefill runner hands
finished prompts to a decode runner, which imports their KV; ARCHITECTURE.md "Roles and the
handoff").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from opentelemetry.trace import Link, Span, SpanKind

from protos import hopscope_pb2 as pb
from services.common import convert, spans
from services.common.errors import HopscopeError, UnavailableError
from services.common.metrics import ServiceMetrics
from services.common.types import Delivery, ModelInfo, StepOutput
from services.config import SchedulerSettings
from services.scheduler.cache_metrics import CacheMetrics
from services.scheduler.core import Scheduler
from services.scheduler.kv_handoff import KVHandoffs
from services.scheduler.overlap import OverlappedSteps, StepAnswer
from services.scheduler.request import Batch, Request, Update
from services.scheduler.worker_client import WorkerClient
from tracing import schema

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Receives, once per step, every delivery for the requests it submitted."""

    def deliver(self, deliveries: list[Delivery]) -> None: ...


@dataclass(slots=True)
class Tracked:
    request: Request
    sink: Sink
    span: Span
    link: Link | None = None  # to `span`, built once: every step of this request links to it
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    resume_span: Span | None = None  # hopscope.handoff_resume, ended by its first decode step


class SchedulerRunner:
    def __init__(
        self,
        core_factory: Callable[[ModelInfo], Scheduler],
        worker: WorkerClient,
        settings: SchedulerSettings,
        on_health: Callable[[bool], None] = lambda is_serving: None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.metrics = metrics or ServiceMetrics("scheduler")
        self._cache_metrics = CacheMetrics(self.metrics)
        self._core_factory = core_factory
        self.core: Scheduler | None = None
        self.worker = worker
        self.worker_info: pb.WorkerInfo | None = None
        self._settings = settings
        self._on_health = on_health
        self._tracked: dict[str, Tracked] = {}
        self._wakeup = asyncio.Event()
        self._worker_down_since: float | None = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._overlap: OverlappedSteps | None = None  # async scheduling (made at start)
        # measured per step, read by the replica router
        self.num_steps = 0
        self.replica = "0"  # its index among worker replicas (a metrics label)
        self.hop_rtt_ms = 0.0
        self.tokens_per_ms = 0.0
        # disaggregation: the worker's role (from its Info), where a prefill runner's finished
        # prompts go, how KV blocks move, and the handoffs themselves
        self.role = "mixed"
        self.on_handoff: Callable[[SchedulerRunner, Tracked, list[int], int], None] | None = None
        self.kv_transport = "grpc"
        self._kv = KVHandoffs(self, self._tracked, self._fail, self._wakeup.set)
        worker.watch(self._wakeup.set)  # a stream lost while idle is noticed at once

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Connect to the worker (bounded by connect_timeout_s), then run the loop."""
        self.worker_info = await self.worker.connect(self._settings.worker_connect_timeout_s)
        info = convert.model_info_from_pb(
            self.worker_info.model, list(self.worker_info.eos_token_ids)
        )
        self.core = self._core_factory(info)
        self.role = self.worker_info.service.role or "mixed"
        # all free before the first step (an unset gauge reads 0 free: a full cache)
        self.metrics.set_kv_blocks(num_used=0, num_free=self.core.block_manager.num_blocks)
        self._worker_down_since = None
        self._on_health(True)
        if self.core.config.async_scheduling:
            log.info("async scheduling: each step is built while the previous one runs")
            self._overlap = OverlappedSteps(
                self.core, self._step, self._apply, self._on_step_error, self._wait_for_work
            )
        self._task = asyncio.create_task(self._run(), name="scheduler-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._kv.stop()
        self._drop_sent()
        for rid in list(self._tracked):
            self._fail(rid, UnavailableError("the scheduler is shutting down"))
        await self.worker.close()
        self.metrics.stop_server()

    @property
    def is_worker_up(self) -> bool:
        return self._worker_down_since is None

    @property
    def replicas(self) -> list[SchedulerRunner]:
        """A bare runner is its only replica (`RequestRunner`, as a `ReplicaSet` of one)."""
        return [self]

    # ------------------------------------------------------------------ requests
    def submit(
        self,
        request: Request,
        sink: Sink,
        transport: str,
        attributes: Mapping[str, str | int | float] | None = None,
    ) -> None:
        """Queue a request; raises a domain error (mapped to a status) if it cannot be taken.
        `attributes` go on its Submit SERVER span (e.g. the routing decision)."""
        assert self.core is not None, "submit before start"
        span = spans.start_rpc_span(
            spans.SUBMIT,
            SpanKind.SERVER,
            transport,
            parent=request.context if isinstance(request.context, Mapping) else {},
            attributes={
                schema.REQUEST_ID: request.request_id,
                schema.NUM_PROMPT_TOKENS: len(request.prompt_token_ids),
                **dict(attributes or {}),
            },
        )
        try:
            if self._is_worker_given_up():
                raise UnavailableError(f"the model worker at {self.worker.address} is unavailable")
            self.core.add(request)
        except HopscopeError as exc:
            spans.end_span(span, exc)
            raise
        self._tracked[request.request_id] = Tracked(request, sink, span, spans.link_to(span))
        self._wakeup.set()

    def abort(self, request_id: str) -> None:
        """The caller went away or matched a stop string: free its blocks now."""
        tracked = self._tracked.pop(request_id, None)
        self._kv.drop(request_id)
        if self.core is not None:
            self.core.abort(request_id)
        if tracked is not None:
            self._close_span(tracked, "abort", None)

    # ------------------------------------------------------------------ loop
    async def _run(self) -> None:
        assert self.core is not None
        while True:
            try:
                await self._iterate()
            except Exception as exc:  # a bug must not leave callers hanging
                log.exception("scheduler loop failed; failing every request in flight")
                for rid in list(self._tracked):
                    self._fail(rid, HopscopeError(f"the scheduler failed: {exc}"))
                await asyncio.sleep(0.1)

    async def _iterate(self) -> None:
        """One turn: expire deadlines, build a batch, run it, deliver its tokens."""
        assert self.core is not None
        if not self.is_worker_up:
            await self._reconnect()
            return
        if not self.worker.is_connected:
            log.warning("worker lost: the step stream to %s ended", self.worker.address)
            self._lose_worker()
            return
        now = time.monotonic()
        self._deliver(self.core.expire(now))
        self._kv.start_imports()
        if self._overlap is not None:
            await self._overlap.turn(now)
            return
        run = self.core.schedule_run(now)  # one step, or a multi-step run of decodes
        if not run:
            await self._wait_for_work(now)
            return
        try:
            sampled, step_ms = await self._step(run[0], run[1:])
        except Exception as exc:  # noqa: BLE001 -- _on_step_error logs it, the loop goes on
            self._on_step_error(exc, run[0])
            return
        self._apply(run, sampled, step_ms, now)

    def _on_step_error(self, exc: Exception, batch: Batch) -> None:
        """A step that got no answer: a lost worker (UnavailableError: every running sequence
        is recomputed once it is back) or a failed step (its requests fail, not the loop)."""
        if isinstance(exc, UnavailableError):
            log.warning("worker lost: %s", exc)
            self._lose_worker()
            return
        log.error("step failed: %s", exc, exc_info=exc)
        for rid in set(batch.request_ids):
            self._fail(rid, HopscopeError(f"the model worker failed a step: {exc}"))

    def _apply(
        self, run: list[Batch], sampled: list[dict[int, int]], step_ms: float, started_s: float
    ) -> None:
        """A step's (or a multi-step run's) answer: to the core, step by step, then out."""
        assert self.core is not None
        self._measure_hop(run[0], started_s, step_ms)
        updates: list[Update] = []
        for each, each_sampled in zip(run, sampled, strict=True):
            self._account(each, step_ms / len(run))
            updates += self.core.on_step(each, each_sampled, time.monotonic())
        # a run's tokens leave together: one delivery per request, not one per step
        self._deliver(_merged(updates) if len(run) > 1 else updates)
        self._kv.hand_off()
        self._record(run[0], started_s)

    def _drop_sent(self) -> None:
        if self._overlap is not None:
            self._overlap.drop()

    async def _step(self, batch: Batch, later: Sequence[Batch] = ()) -> StepAnswer:
        """Run `batch` (and the decode steps chained behind it, multi-step); the tokens each
        sampled, in order, and the worker's time for all of them."""
        # Links carry no attributes (the SDK re-validates each link's attributes on every span,
        # which dominated tracing's cost): prefill links come first and their count is an
        # attribute of the step span instead.
        prefill_links: list[Link] = []
        decode_links: list[Link] = []
        for rid, phase in zip(batch.request_ids, batch.phases):
            tracked = self._tracked.get(rid)
            if tracked is not None and tracked.resume_span is not None:
                tracked.resume_span.end()  # its first step after the KV hop is on its way
                tracked.resume_span = None
            if tracked is not None and tracked.link is not None:
                (prefill_links if phase == "prefill" else decode_links).append(tracked.link)
        span = spans.start_rpc_span(
            spans.STEP,
            SpanKind.CLIENT,
            self.worker.transport,
            # a step serves many requests: a child of the oldest one's span (so a request
            # alone is one trace through all three services), linked to every one of them
            parent=self._parent_of(batch),
            links=prefill_links + decode_links,
            attributes={
                schema.NUM_PREFILL_LINKS: len(prefill_links),
                schema.STEP_ID: batch.step_id,
                schema.BATCH_SIZE: batch.num_seqs,
                schema.NUM_PREFILL_TOKENS: batch.num_prefill_tokens,
                schema.NUM_DECODE_TOKENS: batch.num_decode_tokens,
                **_swap_attributes(batch),
                **({schema.NUM_STEPS: 1 + len(later)} if later else {}),
            },
        )
        try:
            out = await self._bounded_step(batch, later, spans.carrier_of(span))
            if len(out.later_sampled) != len(later):
                raise HopscopeError(
                    f"the worker ran {1 + len(out.later_sampled)} of {1 + len(later)} steps"
                )
        except BaseException as exc:  # also a step dropped (cancelled) with a lost worker
            spans.end_span(span, exc)
            raise
        span.set_attribute(schema.WORKER_STEP_MS, out.step_ms)
        span.end()
        return [out.sampled, *out.later_sampled], out.step_ms

    async def _bounded_step(
        self, batch: Batch, later: Sequence[Batch], carrier: dict[str, str]
    ) -> StepOutput:
        """One step within step_timeout_s, whatever the client: a worker that does not answer
        in time is treated as lost (reconnected, its requests recomputed)."""
        timeout_s = self._settings.step_timeout_s
        try:
            return await asyncio.wait_for(
                self.worker.step(
                    batch.seq_steps, carrier, batch.swaps, [b.seq_steps for b in later]
                ),
                timeout_s * (1 + len(later)),
            )
        except TimeoutError as exc:
            raise UnavailableError(
                f"the model worker at {self.worker.address} did not finish a step "
                f"within {timeout_s:g} s"
            ) from exc

    def _record(self, batch: Batch, started_s: float) -> None:
        assert self.core is not None
        round_trip_ms = (time.monotonic() - started_s) * 1e3
        self.metrics.observe_step(batch_size=batch.num_seqs, step_ms=round_trip_ms)
        self.metrics.set_queue(num_waiting=self.core.num_waiting, num_running=self.core.num_running)
        num_free = self.core.num_free_blocks
        self.metrics.set_kv_blocks(
            num_used=self.core.block_manager.num_blocks - num_free, num_free=num_free
        )
        self._cache_metrics.record(self.core, self.replica)

    def _parent_of(self, batch: Batch) -> dict[str, str]:
        for rid in batch.request_ids:
            if (tracked := self._tracked.get(rid)) is not None:
                return spans.carrier_of(tracked.span)
        return {}

    def _measure_hop(self, batch: Batch, started_s: float, step_ms: float) -> None:
        """Running estimates the router reads: the hop's round trip (step round trip minus the
        worker's own time) and the worker's tokens per ms of step time."""
        round_trip_ms = (time.monotonic() - started_s) * 1e3
        self.num_steps += 1
        self.hop_rtt_ms = _ewma(self.hop_rtt_ms, max(0.0, round_trip_ms - step_ms))
        if step_ms > 0:
            self.tokens_per_ms = _ewma(self.tokens_per_ms, batch.num_tokens / step_ms)

    def take_all(self) -> list[Tracked]:
        """Hand over every request (its worker is gone): dropped from this core, unfinished,
        with its sink and span, for another replica to `adopt`."""
        taken = []
        for rid, tracked in list(self._tracked.items()):
            del self._tracked[rid]
            self._kv.drop(rid)
            if self.core is not None:
                self.core.abort(rid)
            tracked.request.finish_reason = ""
            taken.append(tracked)
        return taken

    def adopt(self, tracked: Tracked) -> None:
        """Continue a request another replica held: its tokens so far are recomputed here."""
        assert self.core is not None, "adopt before start"
        self._tracked[tracked.request.request_id] = tracked
        try:
            self.core.add(tracked.request)
        except HopscopeError as exc:  # e.g. this replica's queue is full
            self._fail(tracked.request.request_id, exc)
        self._wakeup.set()

    # ------------------------------------------------------------------ disaggregation
    def release_handoff(self, request_id: str) -> bool:
        """Prefill side: the decode worker has the request's KV (or gave up): free its blocks.
        False when they were gone already (this worker was lost meanwhile)."""
        if self.core is None:
            return False
        released = self.core.release_handoff(request_id)
        self._wakeup.set()
        return released

    def adopt_prefilled(
        self, tracked: Tracked, source: SchedulerRunner, source_blocks: list[int], done_ns: int
    ) -> None:
        """Decode side: continue a request whose prompt `source` ran (kv_handoff.py)."""
        self._kv.adopt(tracked, source, source_blocks, done_ns)

    @property
    def num_kv_imports(self) -> int:
        """Decode side: KV hops done, cumulative."""
        return self._kv.num_imports

    @property
    def kv_bytes_imported(self) -> int:
        return self._kv.num_bytes_imported

    @property
    def num_kv_import_failures(self) -> int:
        """Decode side: KV hops failed (their requests recomputed here), cumulative."""
        return self._kv.num_import_failures

    def is_tracking(self, request_id: str) -> bool:
        return request_id in self._tracked

    def set_health_callback(self, on_health: Callable[[bool], None]) -> None:
        self._on_health = on_health

    def _account(self, batch: Batch, step_ms: float) -> None:
        for rid, phase in zip(batch.request_ids, batch.phases):
            tracked = self._tracked.get(rid)
            if tracked is None:
                continue
            if phase == "prefill":
                tracked.prefill_ms += step_ms
            else:
                tracked.decode_ms += step_ms

    async def _wait_for_work(self, now: float) -> None:
        assert self.core is not None
        timeouts = [
            t
            for t in (
                self.core.time_until_static_batch(now),
                None if self.core.next_deadline_s is None else self.core.next_deadline_s - now,
            )
            if t is not None
        ]
        self._wakeup.clear()
        try:
            await asyncio.wait_for(
                self._wakeup.wait(), max(0.0, min(timeouts)) if timeouts else None
            )
        except TimeoutError:
            pass

    # ------------------------------------------------------------------ delivery
    def _deliver(self, updates: list[Update]) -> None:
        by_sink: dict[int, tuple[Sink, list[Delivery]]] = {}
        for update in updates:
            tracked = self._tracked.get(update.request_id)
            if tracked is None:
                continue
            delivery = _to_delivery(update)
            by_sink.setdefault(id(tracked.sink), (tracked.sink, []))[1].append(delivery)
            if delivery.is_finished:
                del self._tracked[update.request_id]
                self._close_span(tracked, update.finish_reason, update.error)
        for sink, deliveries in by_sink.values():
            sink.deliver(deliveries)

    def _fail(self, request_id: str, error: HopscopeError) -> None:
        tracked = self._tracked.pop(request_id, None)
        self._kv.drop(request_id)
        if self.core is not None:
            self.core.abort(request_id)
        if tracked is None:
            return
        tracked.sink.deliver(
            [Delivery(request_id, [], "abort", error_status=error.status, error_message=str(error))]
        )
        self._close_span(tracked, "abort", error)

    def _close_span(self, tracked: Tracked, finish_reason: str, error: Exception | None) -> None:
        req, span = tracked.request, tracked.span
        if tracked.resume_span is not None:
            tracked.resume_span.end()
            tracked.resume_span = None
        if req.first_scheduled_s is not None:
            span.set_attribute(schema.QUEUE_MS, (req.first_scheduled_s - req.arrival_s) * 1e3)
        span.set_attribute(schema.PREFILL_MS, tracked.prefill_ms)
        span.set_attribute(schema.DECODE_MS, tracked.decode_ms)
        span.set_attribute(schema.NUM_OUTPUT_TOKENS, req.num_output_tokens)
        span.set_attribute(schema.NUM_PREEMPTIONS, req.num_preemptions)
        span.set_attribute(schema.FINISH_REASON, finish_reason)
        spans.end_span(span, error)

    # ------------------------------------------------------------------ worker loss
    def _lose_worker(self) -> None:
        assert self.core is not None
        self._worker_down_since = time.monotonic()
        self._on_health(False)
        self._drop_sent()  # their stream is gone; the core forgets them too
        self._kv.on_worker_lost()  # adopted requests are recomputed here once it is back
        self.core.on_worker_lost()  # running sequences will be recomputed once it is back

    def _is_worker_given_up(self) -> bool:
        down = self._worker_down_since
        return (
            down is not None and time.monotonic() - down > self._settings.worker_restart_timeout_s
        )

    async def _reconnect(self) -> None:
        try:
            self.worker_info = await self.worker.connect(timeout_s=1.0)
        except UnavailableError:
            if self._is_worker_given_up():
                for rid in list(self._tracked):
                    self._fail(
                        rid,
                        UnavailableError(
                            f"the model worker at {self.worker.address} is unavailable"
                        ),
                    )
            await asyncio.sleep(0.2)
            return
        log.warning(
            "worker back (instance %s); recomputing %d requests",
            self.worker_info.instance_id,
            len(self._tracked),
        )
        self._worker_down_since = None
        self._on_health(True)


def _swap_attributes(batch: Batch) -> dict[str, int]:
    if not batch.swaps:
        return {}
    return {
        schema.NUM_SWAP_OUT_BLOCKS: len(batch.swaps.swap_out),
        schema.NUM_SWAP_IN_BLOCKS: len(batch.swaps.swap_in),
    }


def _ewma(previous: float, sample: float, weight: float = 0.2) -> float:
    return sample if previous == 0.0 else (1 - weight) * previous + weight * sample


def _merged(updates: list[Update]) -> list[Update]:
    """One update per request, its tokens in order (a multi-step run's updates, step by step)."""
    by_request: dict[str, Update] = {}
    for update in updates:
        merged = by_request.get(update.request_id)
        if merged is None:
            by_request[update.request_id] = Update(
                update.request_id, list(update.token_ids), update.finish_reason, update.error
            )
        else:
            merged.token_ids += update.token_ids
            merged.finish_reason, merged.error = update.finish_reason, update.error
    return list(by_request.values())


def _to_delivery(update: Update) -> Delivery:
    if update.error is None:
        return Delivery(update.request_id, update.token_ids, update.finish_reason)
    return Delivery(
        update.request_id,
        update.token_ids,
        update.finish_reason or "abort",
        error_status=update.error.status,
        error_message=str(update.error),
    )
