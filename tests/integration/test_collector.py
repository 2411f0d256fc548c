"""The OTLP/gRPC collector with the real SDK exporter: spans arrive in the file, ids in hex."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tracing.collector import CollectorError, OtlpCollector
from tracing.readers import read_file


def test_sdk_exporter_to_collector_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "traces.jsonl"
    collector = OtlpCollector(out, listen="127.0.0.1:0").start()
    try:
        exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{collector.port}", insecure=True)
        provider = TracerProvider(resource=Resource.create({"service.name": "tokenizer"}))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("outer") as outer:
            with tracer.start_as_current_span("inner"):
                pass
        provider.shutdown()  # flushes the batch to the collector
    finally:
        collector.stop()

    spans = {s.name: s for s in read_file(out)}
    context = outer.get_span_context()
    assert spans["outer"].trace_id == f"{context.trace_id:032x}"
    assert spans["inner"].parent_span_id == f"{context.span_id:016x}"
    assert spans["inner"].service_name == "tokenizer"
    raw = json.loads(out.read_text().splitlines()[0])
    first = raw["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert all(c in "0123456789abcdef" for c in first["traceId"] + first["spanId"])
    assert collector.num_spans == 2


def test_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    first = OtlpCollector(tmp_path / "a.jsonl", listen="127.0.0.1:0").start()
    try:
        with pytest.raises(CollectorError, match="in use"):
            OtlpCollector(tmp_path / "b.jsonl", listen=f"127.0.0.1:{first.port}").start()
    finally:
        first.stop()


def test_bad_listen_address_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CollectorError, match="HOST:PORT"):
        OtlpCollector(tmp_path / "a.jsonl", listen="4317").start()
