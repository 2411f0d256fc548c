"""Spans made by the real SDK, written by the file exporter, read back: same decomposition."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.unit.test_tracing_decompose import one_request
from tracing.decompose import decompose
from tracing.file_exporter import OtlpJsonFileExporter
from tracing.model import Span
from tracing.readers import read_file


def _replay(spans: list[Span], path: Path) -> None:
    """Re-create `spans` with one SDK provider per service; parents and link targets first."""
    providers: dict[str, TracerProvider] = {}
    contexts: dict[str, trace.SpanContext] = {}
    for span in spans:
        if span.service_name not in providers:
            provider = TracerProvider(resource=Resource.create({"service.name": span.service_name}))
            provider.add_span_processor(SimpleSpanProcessor(OtlpJsonFileExporter(path)))
            providers[span.service_name] = provider
        parent = contexts.get(span.parent_span_id)
        sdk_span = (
            providers[span.service_name]
            .get_tracer("replay")
            .start_span(
                span.name,
                context=trace.set_span_in_context(trace.NonRecordingSpan(parent))
                if parent
                else None,
                kind=trace.SpanKind[span.kind],
                attributes=span.attributes,
                links=[trace.Link(contexts[link.span_id], link.attributes) for link in span.links],
                start_time=span.start_ns,
            )
        )
        sdk_span.end(end_time=span.end_ns)
        contexts[span.span_id] = sdk_span.get_span_context()
    for provider in providers.values():
        provider.shutdown()


def test_sdk_spans_through_the_file_exporter_decompose_the_same(tmp_path: Path) -> None:
    original = one_request(hop_delay_ms=4.0)
    path = tmp_path / "traces.jsonl"
    _replay(original, path)
    (expected,) = decompose(original)
    (actual,) = decompose(read_file(path))
    assert actual.e2e_ms == pytest.approx(expected.e2e_ms)
    assert actual.components_ms == pytest.approx(expected.components_ms)
    assert actual.tpot_ms == pytest.approx(expected.tpot_ms)
