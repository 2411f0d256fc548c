"""The front door: `hopscope.v1.Tokenizer`. Converts protobuf to the core's objects and back,
and streams one message per scheduler step with the text that step completed."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc
from services.common import convert, spans
from services.common.errors import error_for_status
from services.common.identity import ServiceIdentity
from services.common.metrics import ServiceMetrics
from services.tokenizer.core import GenerateParams, PreparedRequest, StopMatcher, TokenizerCore
from services.tokenizer.scheduler_client import RequestStream

if TYPE_CHECKING:
    from services.tokenizer.server import TokenizerServiceConfig

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


@dataclass(slots=True)
class _Progress:
    started_s: float = 0.0
    first_token_s: float | None = None
    num_output_tokens: int = 0
    detokenize_s: float = 0.0
    is_finished: bool = False


class TokenizerServicer(pb_grpc.TokenizerServicer):
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

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        async for response in self.generate(_params_from_pb(request), context.time_remaining()):
            yield response

    async def generate(
        self, params: GenerateParams, remaining_s: float | None
    ) -> AsyncIterator[pb.GenerateResponse]:
        """The pipeline path of one request, for every front door (gRPC Generate, HTTP):
        validate and encode, submit, stream; abort and free its KV blocks if it is cancelled."""
        request_id = params.request_id or uuid.uuid4().hex
        with _tracer.start_as_current_span(
            "tokenizer.encode", attributes={"hopscope.request_id": request_id}
        ):
            prepared = self.core.prepare(params, request_id)
        timeout_s = min(
            self.config.request_timeout_s, remaining_s if remaining_s is not None else math.inf
        )
        span = spans.start_rpc_span(
            spans.SUBMIT,
            SpanKind.CLIENT,
            self.scheduler.transport,
            attributes={
                "hopscope.request_id": request_id,
                "server.address": self.scheduler.address,
            },
        )
        progress = _Progress(started_s=time.perf_counter())
        try:
            stream = await self.scheduler.submit(prepared, timeout_s, spans.carrier_of(span))
            async for response in self._responses(prepared, stream, progress):
                yield response
        finally:
            if not progress.is_finished:  # cancelled by the client, deadline, or an error
                self.scheduler.abort(request_id)
            self._record(progress)
            span.set_attribute("hopscope.detokenize_ms", progress.detokenize_s * 1e3)
            span.set_attribute("hopscope.num_output_tokens", progress.num_output_tokens)
            span.end()

    async def _responses(
        self, req: PreparedRequest, stream: RequestStream, progress: _Progress
    ) -> AsyncIterator[pb.GenerateResponse]:
        detokenizer = self.core.detokenizer()
        stop = StopMatcher(req.stop)
        async for delivery in stream:
            if delivery.error_status:
                raise error_for_status(delivery.error_status, delivery.error_message)
            if delivery.token_ids and progress.first_token_s is None:
                progress.first_token_s = time.perf_counter()
            progress.num_output_tokens += len(delivery.token_ids)
            started = time.perf_counter()
            text = stop.push(detokenizer.push(delivery.token_ids))
            if delivery.is_finished and not stop.is_stopped:
                text += stop.push(detokenizer.flush()) + (
                    stop.flush() if not stop.is_stopped else ""
                )
            progress.detokenize_s += time.perf_counter() - started
            response = pb.GenerateResponse(
                text=text, token_ids=delivery.token_ids, request_id=req.request_id
            )
            if stop.is_stopped:
                self.scheduler.abort(req.request_id)
                response.finish_reason = "stop"
            elif delivery.is_finished:
                response.finish_reason = delivery.finish_reason
            else:
                yield response
                continue
            progress.is_finished = True
            response.usage.prompt_tokens = len(req.prompt_token_ids)
            response.usage.completion_tokens = progress.num_output_tokens
            response.prompt_token_ids.extend(req.prompt_token_ids)
            yield response
            return

    def _record(self, progress: _Progress) -> None:
        e2e_ms = (time.perf_counter() - progress.started_s) * 1e3
        self.metrics.observe_rpc("Generate", e2e_ms)
        if not progress.is_finished or progress.first_token_s is None:
            return
        ttft_ms = (progress.first_token_s - progress.started_s) * 1e3
        n = progress.num_output_tokens
        tpot_ms = (e2e_ms - ttft_ms) / (n - 1) if n >= 2 else None
        self.metrics.observe_request(ttft_ms=ttft_ms, tpot_ms=tpot_ms, e2e_ms=e2e_ms)

    async def Describe(
        self, request: pb.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DescribeResponse:
        downstream = await self.scheduler.describe()
        response = pb.DescribeResponse(
            placement=self.config.placement, batching=downstream.batching, ray=self.config.is_ray
        )
        response.services.append(convert.identity_to_pb(self.identity))
        response.services.extend(downstream.services)
        response.edges.append(
            pb.Edge(
                **{
                    "from": "tokenizer",
                    "to": "scheduler",
                    "transport": self.scheduler.transport,
                    "link": self.config.scheduler_link,
                }
            )
        )
        response.edges.extend(downstream.edges)
        response.model.CopyFrom(downstream.model)
        response.scheduler_stats.CopyFrom(downstream.scheduler_stats)
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
    )
