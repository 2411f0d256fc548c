"""Sends one worker's share of a point's requests on an asyncio loop and records each timeline.

Open loop: a dispatcher sleeps until each request is due and starts it, whatever is in flight
(optionally under a cap). Closed loop: `concurrency` lanes each send the next request as soon as
their previous one ends. Ctrl-C (`stop()`) stops sending, waits `grace_s` for requests in flight,
then cancels them: they are recorded as incomplete.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Awaitable, Iterator, MutableSequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import trace

from loadgen.channel import open_channel
from loadgen.config import BenchConfig
from loadgen.metrics import STATUS_INCOMPLETE, STATUS_OK, RequestRecord
from loadgen.tracectx import RequestTrace, get_tracer, start_request_trace
from loadgen.workloads import RequestSpec, Workload
from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from loadgen.http_client import HttpFrontDoor

# counter slots shared with the progress display (a list, or a multiprocessing array)
SENT, OK, FAILED, INCOMPLETE, LAG_SUM_MS, LAG_MAX_MS = range(6)
NUM_COUNTERS = 6
_DISPATCH_SLACK_S = 0.0005  # start requests due within this instead of sleeping for it


@dataclass(slots=True)
class SlicePlan:
    """One worker's share of a point: request indices (and due times for an open loop)."""

    worker: int
    indices: list[int] | None  # None: unbounded (closed loop by duration)
    due_s: list[float] | None  # open loop only
    concurrency: int | None  # closed-loop lanes, or the open-loop cap; None: uncapped
    stride: int = 1  # unbounded indices: worker, worker + stride, ...


def now_s() -> float:
    return time.perf_counter()  # CLOCK_MONOTONIC: one clock for every worker process


def to_request(spec: RequestSpec, config: BenchConfig, request_id: str) -> pb.GenerateRequest:
    workload = config.workload
    request = pb.GenerateRequest(
        prompt=spec.prompt,
        prompt_token_ids=spec.prompt_token_ids,
        max_tokens=spec.max_tokens,
        ignore_eos=spec.ignore_eos,
        temperature=workload.temperature,
        seed=workload.seed,
        request_id=request_id,
    )
    if config.endpoint == "chat":  # the front door renders it with the model's chat template
        request.messages.add(role="user", content=request.prompt)
        request.prompt = ""
    return request


def request_id_of(config: BenchConfig, index: int) -> str:
    return f"{config.label or 'bench'}-{config.workload.seed}-{index}"


class Runner:
    """Runs one SlicePlan against a Tokenizer front door; `run()` returns the records."""

    def __init__(
        self,
        config: BenchConfig,
        plan: SlicePlan,
        counters: MutableSequence[float] | None = None,
        is_tracing: bool = False,
    ) -> None:
        self._config = config
        self._plan = plan
        self._counters = counters if counters is not None else [0.0] * NUM_COUNTERS
        self._is_tracing = is_tracing
        self._workload = Workload(config.workload)
        self._prepared: dict[int, pb.GenerateRequest] = {}
        self._records: list[RequestRecord] = []
        self._stop = asyncio.Event()
        self._tracer = get_tracer()
        self._t0 = 0.0
        self._http: HttpFrontDoor | None = None
        api_key = os.environ.get("HOPSCOPE_API_KEY", "")  # `serve --api-key`; never recorded
        self._auth = (("authorization", f"Bearer {api_key}"),) if api_key else ()

    def prepare(self) -> None:
        """Build every known request before the clock starts, off the hot path."""
        for index in self._plan.indices or []:
            self._prepared[index] = self._build(index)

    @property
    def is_stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Stop sending; requests in flight get `grace_s` to finish."""
        self._stop.set()

    async def run(self, start_at_s: float | None = None) -> list[RequestRecord]:
        self._install_sigint()
        if self._config.url:  # the OpenAI-compatible HTTP front door
            from loadgen.http_client import HttpFrontDoor

            async with HttpFrontDoor(self._config, self._is_tracing) as http:
                self._http = http
                await self._dispatch(start_at_s)
        else:
            channel = open_channel(
                self._config.address, self._config.tls_ca, is_traced=self._is_tracing
            )
            async with channel as ch:
                self._stub = pb_grpc.TokenizerStub(ch)
                await self._dispatch(start_at_s)
        # a request cancelled before it was sent never happened; it is not a record
        return [r for r in self._records if r.t_send is not None]

    async def _dispatch(self, start_at_s: float | None) -> None:
        self._t0 = start_at_s if start_at_s is not None else now_s()
        await _sleep_until(self._t0)
        tasks: set[asyncio.Task[None]] = set()
        if self._plan.due_s is not None:
            await self._open_loop(tasks)
        else:
            await self._closed_loop(tasks)
        await self._drain(tasks)

    # dispatch

    async def _open_loop(self, tasks: set[asyncio.Task[None]]) -> None:
        assert self._plan.indices is not None and self._plan.due_s is not None
        cap = asyncio.Semaphore(self._plan.concurrency) if self._plan.concurrency else None
        for index, due_s in zip(self._plan.indices, self._plan.due_s, strict=True):
            delay_s = self._t0 + due_s - now_s()
            if delay_s > _DISPATCH_SLACK_S:
                await _wait_or_stop(self._stop, delay_s)
            if cap is not None:
                await _acquire_or_stop(cap, self._stop)
            if self._stop.is_set():
                return
            task = asyncio.create_task(self._send(index, due_s, cap))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _closed_loop(self, tasks: set[asyncio.Task[None]]) -> None:
        indices = self._index_stream()
        duration_s = self._config.load.duration_s

        async def lane() -> None:
            while not self._stop.is_set():
                t_sched = now_s() - self._t0
                if duration_s is not None and t_sched >= duration_s:
                    return
                index = next(indices, None)
                if index is None:
                    return
                await self._send(index, t_sched, None)

        lanes = [asyncio.create_task(lane()) for _ in range(self._plan.concurrency or 1)]
        tasks.update(lanes)
        await _wait_or_stop(self._stop, None, asyncio.gather(*lanes, return_exceptions=True))

    def _index_stream(self) -> Iterator[int]:
        if self._plan.indices is not None:
            return iter(self._plan.indices)
        return iter(range(self._plan.worker, 1 << 62, self._plan.stride))

    async def _drain(self, tasks: set[asyncio.Task[None]]) -> None:
        if tasks and not self._stop.is_set():
            await _wait_or_stop(self._stop, None, asyncio.gather(*tasks, return_exceptions=True))
        if tasks and self._stop.is_set():
            await asyncio.wait(set(tasks), timeout=self._config.load.grace_s)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # one request

    def _build(self, index: int) -> pb.GenerateRequest:
        request_id = request_id_of(self._config, index)
        return to_request(self._workload.request(index), self._config, request_id)

    async def _send(self, index: int, t_sched: float, cap: asyncio.Semaphore | None) -> None:
        request = self._prepared.pop(index, None) or self._build(index)
        req_trace = start_request_trace(self._tracer, request.request_id, self._config.label)
        record = RequestRecord(index, request.request_id, req_trace.trace_id, t_sched)
        record.worker = self._plan.worker
        self._records.append(record)
        try:
            await self._stream(request, record, req_trace)
        except asyncio.CancelledError:
            record.status, record.error = STATUS_INCOMPLETE, "cancelled after Ctrl-C grace"
        finally:
            req_trace.end(record.status, record.error)
            self._count_end(record)
            if cap is not None:
                cap.release()

    async def _stream(
        self, request: pb.GenerateRequest, record: RequestRecord, req_trace: RequestTrace
    ) -> None:
        span_scope = (
            trace.use_span(req_trace.span) if self._is_tracing else contextlib.nullcontext()
        )
        with span_scope:
            if self._http is not None:
                body = self._http.body(request)
                record.t_send = now_s() - self._t0
                self._count_send(record)
                await self._http.send(body, record, req_trace.metadata, self._t0)
                return
            record.t_send = now_s() - self._t0
            self._count_send(record)
            call = self._stub.Generate(
                request,
                metadata=req_trace.metadata + self._auth,
                timeout=self._config.load.request_timeout_s,
            )
            try:
                async for message in call:
                    _on_message(record, message, now_s() - self._t0)
            except grpc.aio.AioRpcError as exc:
                record.t_end = now_s() - self._t0
                record.status, record.error = exc.code().name, exc.details() or ""
                return
        record.t_end = now_s() - self._t0
        record.status = STATUS_OK
        if not record.num_output_tokens:  # no usage from the server: count what it streamed
            record.num_output_tokens = sum(record.tokens_per_message)

    def _count_send(self, record: RequestRecord) -> None:
        lag_ms = (record.t_send - record.t_sched) * 1e3 if record.t_send is not None else 0.0
        self._counters[SENT] += 1
        self._counters[LAG_SUM_MS] += lag_ms
        self._counters[LAG_MAX_MS] = max(self._counters[LAG_MAX_MS], lag_ms)

    def _count_end(self, record: RequestRecord) -> None:
        if record.t_send is None:
            return  # cancelled before it was sent: never counted as sent
        slot = OK if record.is_ok else INCOMPLETE if record.status == STATUS_INCOMPLETE else FAILED
        self._counters[slot] += 1

    def _install_sigint(self) -> None:
        if threading.current_thread() is threading.main_thread():
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self.stop)


def _on_message(record: RequestRecord, message: pb.GenerateResponse, t: float) -> None:
    num_tokens = len(message.token_ids)
    if num_tokens:
        if record.t_first is None:
            record.t_first = t
        record.message_times.append(t)
        record.tokens_per_message.append(num_tokens)
    if message.HasField("usage"):
        record.num_prompt_tokens = message.usage.prompt_tokens
        record.num_output_tokens = message.usage.completion_tokens


async def _sleep_until(t_s: float) -> None:
    delay_s = t_s - now_s()
    if delay_s > 0:
        await asyncio.sleep(delay_s)


async def _wait_or_stop(
    stop: asyncio.Event, timeout_s: float | None, work: Awaitable[Any] | None = None
) -> None:
    """Wait for `work` (or `timeout_s`) unless stop is set first."""
    stopper = asyncio.ensure_future(stop.wait())
    waiting = {stopper} if work is None else {stopper, asyncio.ensure_future(work)}
    await asyncio.wait(waiting, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()


async def _acquire_or_stop(cap: asyncio.Semaphore, stop: asyncio.Event) -> None:
    acquire = asyncio.ensure_future(cap.acquire())
    await _wait_or_stop(stop, None, acquire)
    if not acquire.done():
        acquire.cancel()
    elif stop.is_set():
        cap.release()
