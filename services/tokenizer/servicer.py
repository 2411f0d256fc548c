"""The front door: `hopscope.v1.Tokenizer`. Converts protobuf to the core's objects and back,
and streams one message per scheduler step with the text that step completed."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc
from services.common import convert, spans
from services.common.errors import UnavailableError, error_for_status
from services.common.identity import ServiceIdentity
from services.common.metrics import ServiceMetrics
from services.tokenizer.core import (
    Chunk,
    GenerateParams,
    OutputStream,
    PreparedRequest,
    TokenizerCore,
)
from services.tokenizer.scheduler_client import RequestStream
from tracing import schema

if TYPE_CHECKING:
    from services.tokenizer.service_config import TokenizerServiceConfig

_tracer = trace.get_tracer("hopscope")


class SchedulerClient(Protocol):
    transport: str
    address: str

    @property
    def is_ready(self) -> bool: ...

    async def submit(
        self, req: PreparedRequest, timeout_s: float, carrier: dict[str, str]
    ) -> RequestStream: ...

    def abort(self, request_id: str) -> None: ...

    async def describe(self) -> pb.DescribeResponse: ...


class TokenizerServicer(pb_grpc.TokenizerServicer):
    """Converts and delegates: the core validates, encodes and turns deliveries into text; the
    scheduler client carries the request."""

    def __init__(
        self,
        core: TokenizerCore,
        scheduler: SchedulerClient,
        identity: ServiceIdentity,
        config: TokenizerServiceConfig,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.metrics = metrics or ServiceMetrics("tokenizer")
        self.core = core
        self.scheduler = scheduler
        self.identity = identity
        self.config = config

    def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        # returns generate's iterator rather than re-yielding it: one async-generator layer
        # less for every message (the server's wrapper iterates it)
        return self.generate(_params_from_pb(request), context.time_remaining())

    async def generate(
        self, params: GenerateParams, remaining_s: float | None
    ) -> AsyncIterator[pb.GenerateResponse]:
        """The pipeline path of one request, for every front door (gRPC Generate, HTTP):
        validate and encode, submit, stream; abort and free its KV blocks if it is cancelled."""
        started_s = time.perf_counter()
        request_id = params.request_id or uuid.uuid4().hex
        with _tracer.start_as_current_span(
            schema.ENCODE, attributes={schema.REQUEST_ID: request_id}
        ):
            # off the event loop: a long prompt must not stall every other stream
            prepared = await asyncio.to_thread(self.core.prepare, params, request_id)
        timeout_s = min(
            self.config.settings.tokenizer.request_timeout_s,
            remaining_s if remaining_s is not None else math.inf,
        )
        span = spans.start_rpc_span(
            spans.SUBMIT,
            SpanKind.CLIENT,
            self.scheduler.transport,
            attributes={
                schema.REQUEST_ID: request_id,
                schema.SERVER_ADDRESS: self.scheduler.address,
            },
        )
        output = self.core.output_stream(prepared)
        timing = _Timing(started_s)
        stream: RequestStream | None = None
        interval = self.config.settings.tokenizer.stream_interval
        catch_up = self.config.settings.tokenizer.stream_catch_up
        pending: Chunk | None = None  # tokens held for the next message (stream_interval > 1)
        try:
            stream = await self.scheduler.submit(prepared, timeout_s, spans.carrier_of(span))
            async for delivery in stream:
                if delivery.error_status:
                    if pending is not None:  # what the client was owed, then the error
                        yield _response(request_id, pending, output)
                    raise error_for_status(delivery.error_status, delivery.error_message)
                if delivery.token_ids and timing.first_token_s is None:
                    timing.first_token_s = time.perf_counter()
                chunk = output.push(delivery)
                if chunk.is_stopped_by_string:
                    self.scheduler.abort(request_id)
                if pending is not None:
                    chunk = pending.extend(chunk)
                # the first token goes at once (TTFT), then every `interval` tokens, and the last;
                # tokens already queued behind this one join it (catch-up: they are late anyway)
                if (
                    chunk.is_final
                    or not timing.num_messages
                    or (len(chunk.token_ids) >= interval and not (catch_up and stream.has_queued))
                ):
                    pending = None
                    timing.num_messages += 1
                    yield _response(request_id, chunk, output)
                    if chunk.is_final:
                        return
                else:
                    pending = chunk
                # wake this task again only when the next message can go (one wake-up per message)
                stream.wake_at_tokens = interval - (len(pending.token_ids) if pending else 0)
        finally:
            # cancelled by the client, deadline, or an error: free the scheduler's share (only
            # of a request this call submitted: a refused duplicate id is another's)
            if stream is not None and not output.is_finished:
                self.scheduler.abort(request_id)
            self._record(timing, output)
            span.set_attribute(schema.DETOKENIZE_MS, output.detokenize_s * 1e3)
            span.set_attribute(schema.NUM_OUTPUT_TOKENS, output.num_output_tokens)
            span.end()

    def _record(self, timing: _Timing, output: OutputStream) -> None:
        e2e_ms = (time.perf_counter() - timing.started_s) * 1e3
        self.metrics.observe_rpc("Generate", e2e_ms)
        if not output.is_finished or timing.first_token_s is None:
            return
        ttft_ms = (timing.first_token_s - timing.started_s) * 1e3
        n = output.num_output_tokens
        tpot_ms = (e2e_ms - ttft_ms) / (n - 1) if n >= 2 else None
        self.metrics.observe_request(ttft_ms=ttft_ms, tpot_ms=tpot_ms, e2e_ms=e2e_ms)

    async def Describe(
        self, request: pb.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DescribeResponse:
        try:
            downstream = await self.scheduler.describe()
        except UnavailableError:  # it is being restarted: say so rather than fail Describe
            restarting = pb.ServiceInfo(
                name="scheduler", address=self.scheduler.address, state="restarting"
            )
            downstream = pb.DescribeResponse(services=[restarting])
        response = pb.DescribeResponse(
            placement=self.config.settings.deploy.placement,
            batching=downstream.batching,
            ray=self.config.is_ray,
        )
        front_doors = _front_doors(convert.identity_to_pb(self.identity), downstream)
        response.services.extend(front_doors)
        response.services.extend(s for s in downstream.services if not _is_front_door(s.name))
        for front_door in front_doors:  # each replica has its own stream to the scheduler
            edge: dict[str, Any] = {
                "from": front_door.name,  # a Python keyword: passed by dict
                "to": "scheduler",
                "transport": self.scheduler.transport,
                "link": self.config.scheduler_link,
                "delay_ms": self.config.scheduler_link_delay_ms,
                "rate_mbit": self.config.scheduler_link_rate_mbit,
            }
            response.edges.append(pb.Edge(**edge))
        response.edges.extend(downstream.edges)
        response.model.CopyFrom(downstream.model)
        response.model.has_chat_template = self.core.chat_template is not None
        response.scheduler_stats.CopyFrom(downstream.scheduler_stats)
        return response


def _is_front_door(name: str) -> bool:
    return name == "tokenizer" or name.startswith("tokenizer-")


def _front_doors(me: pb.ServiceInfo, downstream: pb.DescribeResponse) -> list[pb.ServiceInfo]:
    """This front door and the other replicas the scheduler has a Connect stream from
    (`--tokenizer-replicas`), in replica order: `tokenizer`, `tokenizer-1`, ... They all listen
    where this one does (one shared port)."""
    by_name = {s.name: s for s in downstream.services if _is_front_door(s.name)}
    by_name[me.name] = me
    for info in by_name.values():
        info.address = me.address
    return sorted(by_name.values(), key=lambda s: (len(s.name), s.name))


@dataclass(slots=True)
class _Timing:
    started_s: float
    first_token_s: float | None = None
    num_messages: int = 0


def _response(request_id: str, chunk: Chunk, output: OutputStream) -> pb.GenerateResponse:
    response = pb.GenerateResponse(
        text=chunk.text, token_ids=chunk.token_ids, request_id=request_id
    )
    if chunk.is_final:
        response.finish_reason = chunk.finish_reason
        response.usage.prompt_tokens, response.usage.completion_tokens = output.usage
        response.prompt_token_ids.extend(output.request.prompt_token_ids)
    return response


def _params_from_pb(request: pb.GenerateRequest) -> GenerateParams:
    return GenerateParams(
        prompt=request.prompt,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        seed=request.seed if request.HasField("seed") else None,
        ignore_eos=request.ignore_eos,
        stop=list(request.stop),
        request_id=request.request_id,
        prompt_token_ids=list(request.prompt_token_ids),
        messages=[{"role": m.role, "content": m.content} for m in request.messages],
    )
