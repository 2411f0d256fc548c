"""The root span of each request and the W3C `traceparent` it sends.

With an SDK provider installed (tracing.setup) the `loadgen.request` span is real and its own ids
travel. Without one, the API hands out an invalid no-op span, so a random valid, sampled trace id
is made here instead: every record still carries a trace id and the servers still join it.
"""

from __future__ import annotations

import random

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tracing import schema

ROOT_SPAN_NAME = schema.LOADGEN_REQUEST
REQUEST_ID_ATTRIBUTE = schema.REQUEST_ID

# traceparent always travels, whatever OTEL_PROPAGATORS says: the servers read W3C context
_PROPAGATOR = TraceContextTextMapPropagator()
_rng = random.Random()


class RequestTrace:
    """A started root span with the metadata that carries its context."""

    __slots__ = ("metadata", "span", "trace_id")

    def __init__(self, span: Span, trace_id: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.span = span
        self.trace_id = trace_id
        self.metadata = metadata

    def end(self, status: str, error: str = "") -> None:
        if self.span.is_recording():
            self.span.set_attribute(schema.STATUS, status)
            if error:
                self.span.set_status(trace.Status(trace.StatusCode.ERROR, error))
        self.span.end()


def _random_span_context() -> SpanContext:
    # a valid W3C id is non-zero; getrandbits(128) is zero with probability 2**-128, but be exact
    trace_id = _rng.getrandbits(128) or 1
    span_id = _rng.getrandbits(64) or 1
    return SpanContext(
        trace_id, span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )


def start_request_trace(tracer: trace.Tracer, request_id: str, label: str = "") -> RequestTrace:
    """Start a root `loadgen.request` span (a new trace, never a child of the caller's);
    `label` (bench --label) lets `traces summarize --label` pick this run's requests."""
    span = tracer.start_span(
        ROOT_SPAN_NAME,
        context=Context(),
        attributes={REQUEST_ID_ATTRIBUTE: request_id, schema.LABEL: label},
    )
    span_context = span.get_span_context()
    if not span_context.is_valid:
        span = NonRecordingSpan(_random_span_context())
        span_context = span.get_span_context()
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    metadata = (*carrier.items(), (schema.REQUEST_ID_HEADER, request_id))
    return RequestTrace(span, trace.format_trace_id(span_context.trace_id), metadata)


def get_tracer() -> trace.Tracer:
    return trace.get_tracer("hopscope.loadgen")
