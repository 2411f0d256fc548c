"""Each request opens its own trace and sends it as W3C traceparent."""

from __future__ import annotations

import re

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from loadgen.tracectx import start_request_trace

# flags: 01 sampled, 03 sampled with a random trace id (W3C level 2)
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def test_without_sdk_a_valid_random_trace_id_is_sent() -> None:
    tracer = trace.NoOpTracerProvider().get_tracer("t")
    a, b = start_request_trace(tracer, "r1"), start_request_trace(tracer, "r2")
    header = dict(a.metadata)["traceparent"]
    match = TRACEPARENT.match(header)
    assert match and match.group(1) == a.trace_id and a.trace_id != "0" * 32
    assert int(match.group(3), 16) & 1  # sampled, so servers that trace record it
    assert a.trace_id != b.trace_id
    assert dict(a.metadata)["x-hopscope-request-id"] == "r1"
    assert "x-request-id" not in dict(a.metadata)  # llama-cpp-python's server: non-UUID → 400
    a.end("OK")


def test_with_sdk_the_root_span_ids_travel() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    req = start_request_trace(provider.get_tracer("t"), "req-7")
    req.end("OK")
    (span,) = exporter.get_finished_spans()
    assert span.name == "loadgen.request" and span.parent is None
    assert span.attributes["hopscope.request_id"] == "req-7"
    assert req.trace_id == f"{span.context.trace_id:032x}"
    match = TRACEPARENT.match(dict(req.metadata)["traceparent"])
    assert match and match.group(2) == f"{span.context.span_id:016x}"
