"""Spans for the hops OpenTelemetry's gRPC interceptor cannot see: one request on the shared
tokenizer->scheduler stream, one step on the scheduler->worker stream, and in-process calls.

They follow the RPC semantic conventions so every placement yields spans of the same shape
(names and attribute keys come from tracing/schema.py, listed in ARCHITECTURE.md). Trace context travels in a plain dict
carrier (a `map<string,string>` on the wire).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from tracing import schema

SUBMIT = schema.SUBMIT_RPC
STEP = schema.STEP_RPC
_NET_TRANSPORT = {"uds": "unix", "tcp": "tcp", "inproc": "inproc"}

_tracer = trace.get_tracer("hopscope")


def start_rpc_span(
    rpc: tuple[str, str],
    kind: SpanKind,
    transport: str,
    *,
    parent: Mapping[str, str] | None = None,
    links: Sequence[Link] = (),
    attributes: Mapping[str, str | int | float] | None = None,
) -> Span:
    """Start (not activate) a CLIENT or SERVER span for an internal hop.

    `parent` is a carrier extracted as the parent context (SERVER side); without it the span
    is a child of the current context (CLIENT side).
    """
    service, method = rpc
    ctx = propagate.extract(parent) if parent is not None else otel_context.get_current()
    return _tracer.start_span(
        f"{service}/{method}",
        context=ctx,
        kind=kind,
        links=links,
        attributes={
            schema.RPC_SYSTEM: "inproc" if transport == "inproc" else "grpc",
            schema.RPC_SERVICE: service,
            schema.RPC_METHOD: method,
            schema.NETWORK_TRANSPORT: _NET_TRANSPORT.get(transport, transport),
            **dict(attributes or {}),
        },
    )


def carrier_of(span: Span) -> dict[str, str]:
    """The carrier that makes `span` the parent on the other side of a hop."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def link_to(span: Span) -> Link | None:
    """A link to `span`, or None when it is not recorded (tracing off, not sampled)."""
    if not span.is_recording():
        return None
    return Link(span.get_span_context())


SWAP = schema.SWAP_RPC


def record_swap_span(
    parent: Span, start_ns: int, swap_ms: float, num_out_blocks: int, num_in_blocks: int
) -> None:
    """The KV copies of one step (swap-out then swap-in) as a child INTERNAL span of its Step
    SERVER span, timed by the engine that made them."""
    span = _tracer.start_span(
        schema.SWAP,
        context=trace.set_span_in_context(parent),
        kind=SpanKind.INTERNAL,
        start_time=start_ns,
        attributes={
            schema.NUM_SWAP_OUT_BLOCKS: num_out_blocks,
            schema.NUM_SWAP_IN_BLOCKS: num_in_blocks,
            schema.SWAP_MS: swap_ms,
        },
    )
    span.end(end_time=start_ns + int(swap_ms * 1e6))


def start_internal_span(
    name: str, parent: Span, attributes: Mapping[str, str | int | float] | None = None
) -> Span:
    """An INTERNAL child of `parent` (e.g. a handoff phase under a Submit SERVER span), started
    now; the caller ends it."""
    return _tracer.start_span(
        name,
        context=trace.set_span_in_context(parent),
        kind=SpanKind.INTERNAL,
        attributes=dict(attributes or {}),
    )


def end_span(span: Span, error: BaseException | None) -> None:
    """End a span, marked failed with `error` when one is given."""
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, str(error)))
    span.end()


def record_internal_span(
    name: str,
    parent: Span,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, str | int | float] | None = None,
) -> None:
    """An INTERNAL child of `parent` over a time already past (wall clock, ns)."""
    span = _tracer.start_span(
        name,
        context=trace.set_span_in_context(parent),
        kind=SpanKind.INTERNAL,
        start_time=start_ns,
        attributes=dict(attributes or {}),
    )
    span.end(end_time=max(start_ns, end_ns))


def start_kv_transfer_span(
    kind: SpanKind,
    transport: str,
    kv_transport: str,
    *,
    parent: Mapping[str, str] | None = None,
    attributes: Mapping[str, str | int | float] | None = None,
) -> Span:
    """`hopscope.kv_transfer`: the KV hop worker -> worker, CLIENT on the destination (its parent
    the scheduler's carrier), SERVER on the source (its parent the destination's CLIENT span)."""
    service, method = schema.PULL_KV_RPC
    ctx = propagate.extract(parent) if parent is not None else otel_context.get_current()
    return _tracer.start_span(
        schema.KV_TRANSFER,
        context=ctx,
        kind=kind,
        attributes={
            schema.RPC_SYSTEM: "grpc",
            schema.RPC_SERVICE: service,
            schema.RPC_METHOD: method,
            schema.NETWORK_TRANSPORT: _NET_TRANSPORT.get(transport, transport),
            schema.KV_TRANSPORT: kv_transport,
            **dict(attributes or {}),
        },
    )
