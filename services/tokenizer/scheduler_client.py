"""How the front door reaches the scheduler: one long-lived `Scheduler.Connect` stream shared by
every request (adds and aborts out, one token batch per step in), or direct calls in-process.
Both hand each request an async iterator of `Delivery`s."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc
from services.common import convert
from services.common.channels import create_channel, transport_of
from services.common.errors import UnavailableError
from services.common.identity import ServiceIdentity
from services.common.types import Delivery
from services.tokenizer.core import PreparedRequest

log = logging.getLogger(__name__)
HealthCallback = Callable[[bool], None]


class RequestStream:
    """The deliveries of one request, in order; ends after the finishing one."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue()

    def put(self, delivery: Delivery) -> None:
        self._queue.put_nowait(delivery)

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Delivery]:
        while True:
            delivery = await self._queue.get()
            yield delivery
            if delivery.is_finished:
                return


class _Router:
    """Routes each step's deliveries to the waiting request streams."""

    def __init__(self) -> None:
        self._streams: dict[str, RequestStream] = {}

    def open(self, request_id: str) -> RequestStream:
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

    def fail_all(self, message: str) -> None:
        streams, self._streams = self._streams, {}
        for rid, stream in streams.items():
            stream.put(Delivery(rid, [], "abort", "UNAVAILABLE", message))


def _add_request(
    req: PreparedRequest, timeout_s: float, carrier: Mapping[str, str]
) -> pb.AddRequest:
    return pb.AddRequest(
        request_id=req.request_id,
        prompt_token_ids=req.prompt_token_ids,
        max_tokens=req.max_tokens,
        sampling=convert.sampling_to_pb(req.sampling),
        ignore_eos=req.ignore_eos,
        timeout_s=timeout_s,
        trace_context=dict(carrier),
    )


class InprocSchedulerClient(_Router):
    """Direct calls into a SchedulerRunner in this process (the `inproc` placement)."""

    transport = "inproc"
    address = "inproc"

    def __init__(self, runner: object, identity: ServiceIdentity) -> None:
        from services.scheduler.replicas import ReplicaSet
        from services.scheduler.runner import SchedulerRunner

        super().__init__()
        assert isinstance(runner, SchedulerRunner | ReplicaSet)
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


class GrpcSchedulerClient(_Router):
    """Multiplexes every request over one `Connect` stream; reconnects when it breaks."""

    def __init__(self, address: str, on_health: HealthCallback) -> None:
        super().__init__()
        self.address = address
        self.transport = transport_of(address)
        self._on_health = on_health
        self._channel = create_channel(address)
        self._stub = pb_grpc.SchedulerStub(self._channel)
        self._outbox: asyncio.Queue[pb.SchedulerInput] = asyncio.Queue()
        self._is_connected = False
        self._is_scheduler_serving = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def is_ready(self) -> bool:
        return self._is_connected and self._is_scheduler_serving

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

    async def submit(
        self, req: PreparedRequest, timeout_s: float, carrier: Mapping[str, str]
    ) -> RequestStream:
        if not self._is_connected:
            raise UnavailableError(f"the scheduler at {self.address} is unavailable")
        stream = self.open(req.request_id)
        self._outbox.put_nowait(pb.SchedulerInput(add=_add_request(req, timeout_s, carrier)))
        return stream

    def abort(self, request_id: str) -> None:
        if self.forget(request_id) and self._is_connected:
            self._outbox.put_nowait(pb.SchedulerInput(abort=pb.AbortRequest(request_id=request_id)))

    async def describe(self) -> pb.DescribeResponse:
        try:
            return await self._stub.Describe(pb.DescribeRequest(), timeout=5.0)
        except grpc.aio.AioRpcError as exc:
            raise UnavailableError(
                f"the scheduler at {self.address} is unavailable: {exc.details()}"
            ) from exc

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._channel.close()

    async def _stream_forever(self) -> None:
        while True:
            call = self._stub.Connect(self._outgoing())
            try:
                self._set_connected(True)
                async for output in call:
                    self.deliver([convert.delivery_from_pb(u) for u in output.updates])
                reason = "closed the stream"
            except grpc.aio.AioRpcError as exc:
                reason = f"{exc.code().name}: {exc.details()}"
            finally:
                call.cancel()
            self._set_connected(False)
            self.fail_all(f"the scheduler at {self.address} went away ({reason})")
            log.warning("scheduler stream ended (%s); reconnecting", reason)
            await asyncio.sleep(0.2)
            try:
                await asyncio.wait_for(self._channel.channel_ready(), 5.0)
            except TimeoutError:
                pass

    async def _outgoing(self) -> AsyncIterator[pb.SchedulerInput]:
        while True:
            yield await self._outbox.get()

    async def _watch_health(self) -> None:
        stub = health_pb2_grpc.HealthStub(self._channel)
        while True:
            try:
                async for response in stub.Watch(health_pb2.HealthCheckRequest(service="")):
                    self._is_scheduler_serving = (
                        response.status == health_pb2.HealthCheckResponse.SERVING
                    )
                    self._on_health(self.is_ready)
            except grpc.aio.AioRpcError:
                self._is_scheduler_serving = False
                self._on_health(False)
            await asyncio.sleep(0.5)

    def _set_connected(self, is_connected: bool) -> None:
        if not is_connected:
            # requests queued for a stream that is gone must not leak into the next one
            self._outbox = asyncio.Queue()
        self._is_connected = is_connected
        self._on_health(self.is_ready)
