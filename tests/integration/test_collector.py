"""The OTLP/gRPC collector with the real SDK exporter: spans arrive in the file, ids in hex."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
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
        with tracer.start_as_current_span("outer") as outer, tracer.start_as_current_span("inner"):
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


def test_collect_command_flushes_and_exits_zero_on_sigterm(tmp_path: Path) -> None:
    out = tmp_path / "traces.jsonl"
    command = [
        sys.executable,
        "-P",
        "-m",
        "tracing.cli",
        "traces",
        "collect",
        "--listen",
        "127.0.0.1:0",
        "--out",
        str(out),
    ]
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2]
    )
    try:
        assert process.stderr is not None
        banner = process.stderr.readline()  # printed once the port is bound
        port = int(re.search(r"127\.0\.0\.1:(\d+)", banner).group(1))  # type: ignore[union-attr]
        provider = TracerProvider(resource=Resource.create({"service.name": "worker"}))
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True))
        )
        with provider.get_tracer("test").start_as_current_span("step"):
            pass
        provider.shutdown()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert "wrote 1 spans" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert [s.name for s in read_file(out)] == ["step"]
