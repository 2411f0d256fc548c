"""How the front door reaches the scheduler: one long-lived `Scheduler.Connect` stream shared by
every request (adds and aborts out, one token batch per step in), or direct calls in-process.
Both hand each request an async iterator of `Delivery`s.

The gRPC client holds every request in flight (its prompt and the tokens generated so far): when
the stream breaks, whatever the cause, it reconnects and resubmits each one as prompt + generated
tokens with the remaining max_tokens and the same seed. Sampling randomness is keyed by (seed,
position), so the continuation is the same tokens a request would have generated uninterrupted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc
from services.common import convert
from services.common.channels import create_channel, transport_of
from services.common.errors import AlreadyExistsError, UnavailableError
from services.common.identity import ServiceIdentity
from services.common.peer_auth import token_metadata
from services.common.tls import TlsMaterial
from services.common.types import Delivery
from services.tokenizer.core import PreparedRequest

if TYPE_CHECKING:  # the tokenizer process imports no scheduler code at run time
    from services.scheduler.replicas import RequestRunner

log = logging.getLogger(__name__)
HealthCallback = Callable[[bool], None]
BACKOFF_FIRST_S = 0.1  # between attempts to reach a scheduler that is gone, doubling...
BACKOFF_MAX_S = 2.0  # ...up to this


class RequestStream:
    """The deliveries of one request, in order; ends after the finishing one.

    A deque and one future to wait on, not an asyncio.Queue: this runs once per token of every
    request, and the queue's bookkeeping (getters, putters, maxsize) was most of its cost. Both
    ends run on the event loop's thread.
    """

    __slots__ = ("_items", "_num_tokens", "_waiter", "request_id", "wake_at_tokens")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        # a waiting reader is woken once this many tokens are queued (or the request ended):
        # the front door's --stream-interval sets it, so a message of N tokens costs one wake-up
        self.wake_at_tokens = 1
        self._items: deque[Delivery] = deque()
        self._num_tokens = 0
        self._waiter: asyncio.Future[None] | None = None

    def put(self, delivery: Delivery) -> None:
        self._items.append(delivery)
        self._num_tokens += len(delivery.token_ids)
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        wake_at = self.wake_at_tokens
        if wake_at <= 1 or self._num_tokens >= wake_at or delivery.is_finished:
            waiter.set_result(None)

    @property
    def has_queued(self) -> bool:
        """Deliveries are waiting to be read: the reader is behind the scheduler."""
        return bool(self._items)

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Delivery]:
        items = self._items
        while True:
            if not items:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            delivery = items.popleft()
            self._num_tokens -= len(delivery.token_ids)
            yield delivery
            if delivery.is_finished:
                return


class _Router:
    """Routes each step's deliveries to the waiting request streams."""

    def __init__(self) -> None:
        self._streams: dict[str, RequestStream] = {}

    def open(self, request_id: str) -> RequestStream:
        if request_id in self._streams:
            raise _duplicate(request_id)
        stream = RequestStream(request_id)
        self._streams[request_id] = stream
        return stream

    def deliver(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            stream = self._streams.get(d.request_id)
            if stream is None:
                continue  # aborted by us meanwhile
            if d.is_finished:
                del self._streams[d.request_id]
            stream.put(d)

    def forget(self, request_id: str) -> bool:
        return self._streams.pop(request_id, None) is not None


def _duplicate(request_id: str) -> AlreadyExistsError:
    error = AlreadyExistsError(
        f"request_id {request_id!r} is already in use by a request in flight; "
        "give each request its own id (or none: one is drawn)"
    )
    error.param = "request_id"
    return error


class InprocSchedulerClient(_Router):
    """Direct calls into a SchedulerRunner in this process (the `inproc` placement)."""

    transport = "inproc"
    address = "inproc"

    def __init__(self, runner: RequestRunner, identity: ServiceIdentity) -> None:
        super().__init__()
        self.runner = runner
        self.identity = identity

    @property
    def is_ready(self) -> bool:
        return self.runner.is_worker_up

    async def submit(
        self, req: PreparedRequest, timeout_s: float, carrier: Mapping[str, str]
    ) -> RequestStream:
        from services.scheduler.request import Request

        now = time.monotonic()
        stream = self.open(req.request_id)
        request = Request(
            request_id=req.request_id,
            prompt_token_ids=req.prompt_token_ids,
            max_tokens=req.max_tokens,
            sampling=req.sampling,
            ignore_eos=req.ignore_eos,
            deadline_s=now + timeout_s if timeout_s > 0 else None,
            arrival_s=now,
            context=dict(carrier),
        )
        try:
            self.runner.submit(request, self, "inproc")
        except BaseException:
            self.forget(req.request_id)
            raise
        return stream

    def abort(self, request_id: str) -> None:
        if self.forget(request_id):
            self.runner.abort(request_id)

    async def describe(self) -> pb.DescribeResponse:
        from services.scheduler.servicer import describe_scheduler

        return describe_scheduler(self.runner, self.identity)

    async def close(self) -> None:
        return None


@dataclass(slots=True, eq=False)
class _InFlight:
    """What the front door holds of one request, to resubmit it to a restarted scheduler."""

    req: PreparedRequest
    stream: RequestStream
    deadline_s: float  # monotonic
    carrier: dict[str, str]
    wire_id: str  # the id on the scheduler stream: each resubmission is a new request there
    generated: list[int] = field(default_factory=list)
    attempt: int = 0

    def add(self, now_s: float) -> pb.SchedulerInput:
        """The AddRequest that continues this request from the tokens it already has."""
        return pb.SchedulerInput(
            add=pb.AddRequest(
                request_id=self.wire_id,
                prompt_token_ids=self.req.prompt_token_ids + self.generated,
                max_tokens=self.req.max_tokens - len(self.generated),
                sampling=convert.sampling_to_pb(self.req.sampling),
                ignore_eos=self.req.ignore_eos,
                timeout_s=max(self.deadline_s - now_s, 1e-3),
                trace_context=self.carrier,
            )
        )

    def finish(self, finish_reason: str, status: str = "", message: str = "") -> None:
        self.stream.put(Delivery(self.req.request_id, [], finish_reason, status, message))


class GrpcSchedulerClient:
    """Multiplexes every request over one `Connect` stream; reconnects and resubmits when it
    breaks. Reports its health (`on_health`) when it changes: ready = the stream is up and the
    scheduler itself reports SERVING (its worker is up)."""

    def __init__(
        self,
        address: str,
        on_health: HealthCallback,
        reconnect_timeout_s: float = 60.0,
        *,
        tls: TlsMaterial | None = None,
        internal_token: str = "",
        front_door: ServiceIdentity | None = None,
    ) -> None:
        """`front_door`: who opens the stream, told to the scheduler (its Describe lists it)."""
        self.address = address
        self._front_door = front_door
        self.transport = transport_of(address)
        self._on_health = on_health
        self._reconnect_timeout_s = reconnect_timeout_s
        self._channel = create_channel(address, tls=tls)
        self._metadata = token_metadata(internal_token)
        self._stub = pb_grpc.SchedulerStub(self._channel)
        self._outbox: asyncio.Queue[pb.SchedulerInput] = asyncio.Queue()
        self._in_flight: dict[str, _InFlight] = {}  # by the caller's request id
        self._by_wire_id: dict[str, _InFlight] = {}
        self._is_connected = False
        self._down_since_s: float | None = None
        self._is_scheduler_serving = False
        self._last_health: bool | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def is_ready(self) -> bool:
        return self._is_connected and self._is_scheduler_serving

    @property
    def num_in_flight(self) -> int:
        return len(self._in_flight)

    async def connect(self, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout_s)
        except TimeoutError as exc:
            raise UnavailableError(
                f"scheduler at {self.address} did not answer in {timeout_s:.0f} s"
            ) from exc
        self._tasks = [
            asyncio.create_task(self._stream_forever(), name="scheduler-stream"),
            asyncio.create_task(self._watch_health(), name="scheduler-health"),
        ]

    # ------------------------------------------------------------------ requests
    async def submit(
        self, req: PreparedRequest, timeout_s: float, carrier: Mapping[str, str]
    ) -> RequestStream:
        if not self._is_connected:
            raise UnavailableError(f"the scheduler at {self.address} is unavailable")
        rid = req.request_id
        if rid in self._in_flight or rid in self._by_wire_id:
            raise _duplicate(rid)
        now_s = time.monotonic()
        deadline_s = now_s + timeout_s if math.isfinite(timeout_s) else math.inf
        entry = _InFlight(req, RequestStream(rid), deadline_s, dict(carrier), wire_id=rid)
        self._in_flight[rid] = entry
        self._by_wire_id[rid] = entry
        self._outbox.put_nowait(entry.add(now_s))
        return entry.stream

    def abort(self, request_id: str) -> None:
        entry = self._in_flight.get(request_id)
        if entry is None:
            return
        self._forget(entry)
        if self._is_connected:
            abort = pb.AbortRequest(request_id=entry.wire_id)
            self._outbox.put_nowait(pb.SchedulerInput(abort=abort))

    def _forget(self, entry: _InFlight) -> None:
        self._in_flight.pop(entry.req.request_id, None)
        self._by_wire_id.pop(entry.wire_id, None)

    def _deliver(self, updates: Iterable[pb.RequestUpdate]) -> None:
        for update in updates:
            entry = self._by_wire_id.get(update.request_id)
            if entry is None:
                continue  # aborted by us meanwhile
            d = convert.delivery_from_pb(update)
            entry.generated.extend(d.token_ids)
            if d.is_finished:
                self._forget(entry)
            d.request_id = entry.req.request_id  # the caller's id, not the wire id
            entry.stream.put(d)

    async def describe(self) -> pb.DescribeResponse:
        try:
            return await self._stub.Describe(
                pb.DescribeRequest(), timeout=5.0, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise UnavailableError(
                f"the scheduler at {self.address} is unavailable: {exc.details()}"
            ) from exc

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for entry in list(self._in_flight.values()):
            entry.finish("abort", "UNAVAILABLE", "the front door is shutting down")
        self._in_flight.clear()
        self._by_wire_id.clear()
        await self._channel.close()

    # ------------------------------------------------------------------ the stream
    async def _stream_forever(self) -> None:
        """Keep one stream up, whatever ends it; one log line per change of state."""
        backoff_s = BACKOFF_FIRST_S
        while True:
            started_s = time.monotonic()
            try:
                reason = await self._stream_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means: reconnect, resubmit
                reason = f"{type(exc).__name__}: {exc}"
            if self._is_connected:
                self._set_connected(False)
                self._down_since_s = time.monotonic()
                log.warning(
                    "scheduler at %s unavailable (%s); holding %d requests to resubmit",
                    self.address,
                    reason,
                    len(self._in_flight),
                )
            lived_s = time.monotonic() - started_s
            backoff_s = BACKOFF_FIRST_S if lived_s > 5.0 else min(2 * backoff_s, BACKOFF_MAX_S)
            await asyncio.sleep(backoff_s)

    async def _stream_once(self) -> str:
        """Wait for the scheduler, open a stream, resubmit what is in flight, read until it ends;
        returns why it ended."""
        await self._wait_for_channel()
        outbox: asyncio.Queue[pb.SchedulerInput] = asyncio.Queue()
        metadata: tuple[tuple[str, str | bytes], ...] = self._metadata
        if self._front_door is not None:  # read now: its address is known once it listens
            metadata = (*metadata, convert.front_door_metadata(self._front_door))
        call = self._stub.Connect(self._outgoing(outbox), metadata=metadata)
        try:
            self._outbox = outbox
            self._resubmit(outbox)
            self._set_connected(True)
            async for output in call:
                self._deliver(output.updates)
            return "it closed the stream"
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        finally:
            call.cancel()

    async def _wait_for_channel(self) -> None:
        """Until the channel is ready; gives up the held requests after reconnect_timeout_s."""
        wait_s = BACKOFF_FIRST_S
        while True:
            try:
                await asyncio.wait_for(self._channel.channel_ready(), wait_s)
                return
            except TimeoutError:
                pass
            self._expire_held(time.monotonic())
            wait_s = min(2 * wait_s, BACKOFF_MAX_S)

    def _expire_held(self, now_s: float) -> None:
        down_s = now_s - (self._down_since_s or now_s)
        for entry in list(self._in_flight.values()):
            if down_s > self._reconnect_timeout_s:
                message = f"the scheduler at {self.address} has been unavailable for {down_s:.0f} s"
                entry.finish("abort", "UNAVAILABLE", message)
            elif entry.deadline_s <= now_s:
                message = f"request {entry.req.request_id!r} missed its deadline while the "
                message += f"scheduler at {self.address} was unavailable"
                entry.finish("abort", "DEADLINE_EXCEEDED", message)
            else:
                continue
            self._forget(entry)

    def _resubmit(self, outbox: asyncio.Queue[pb.SchedulerInput]) -> None:
        now_s = time.monotonic()
        self._expire_held(now_s)
        for entry in list(self._in_flight.values()):
            self._by_wire_id.pop(entry.wire_id, None)
            while True:  # an id of its own on the scheduler, apart from every other in flight
                entry.attempt += 1
                entry.wire_id = f"{entry.req.request_id}#{entry.attempt}"
                if entry.wire_id not in self._by_wire_id:
                    break
            self._by_wire_id[entry.wire_id] = entry
            outbox.put_nowait(entry.add(now_s))
        if self._down_since_s is not None:
            log.warning(
                "scheduler at %s is back; resubmitted %d requests",
                self.address,
                len(self._in_flight),
            )
            self._down_since_s = None

    async def _outgoing(
        self, outbox: asyncio.Queue[pb.SchedulerInput]
    ) -> AsyncIterator[pb.SchedulerInput]:
        while True:
            yield await outbox.get()

    def _set_connected(self, is_connected: bool) -> None:
        if not is_connected:
            # a stream that is gone takes its queue with it: nothing leaks into the next one
            self._outbox = asyncio.Queue()
        self._is_connected = is_connected
        self._publish_health()

    # ------------------------------------------------------------------ health
    async def _watch_health(self) -> None:
        stub = health_pb2_grpc.HealthStub(self._channel)
        backoff_s = BACKOFF_FIRST_S
        while True:
            try:
                async for response in stub.Watch(health_pb2.HealthCheckRequest(service="")):
                    backoff_s = BACKOFF_FIRST_S
                    is_serving = response.status == health_pb2.HealthCheckResponse.SERVING
                    self._set_scheduler_serving(is_serving)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the scheduler is gone or restarting: retry
                log.debug("health watch on %s ended: %s", self.address, exc)
            self._set_scheduler_serving(False)
            await asyncio.sleep(backoff_s)
            backoff_s = min(2 * backoff_s, BACKOFF_MAX_S)

    def _set_scheduler_serving(self, is_serving: bool) -> None:
        self._is_scheduler_serving = is_serving
        self._publish_health()

    def _publish_health(self) -> None:
        if self.is_ready != self._last_health:
            self._last_health = self.is_ready
            self._on_health(self.is_ready)
