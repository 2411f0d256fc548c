"""The one tracing setup reads the standard OTEL_* variables, and costs nothing when off."""

from __future__ import annotations

import pytest

from tracing.setup import TracingSettings, _exporters


def test_nothing_configured_means_tracing_is_off() -> None:
    assert not TracingSettings.from_env({}).is_enabled
    off = TracingSettings.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_TRACES_EXPORTER": "none"}
    )
    assert not off.is_enabled


def test_endpoint_and_protocol_choose_the_exporter() -> None:
    grpc_settings = TracingSettings.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}
    )
    assert grpc_settings.is_enabled and grpc_settings.otlp_protocol == "grpc"
    assert type(_exporters(grpc_settings)[0]).__module__.endswith("grpc.trace_exporter")
    http_settings = TracingSettings.from_env(
        {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        }
    )
    assert type(_exporters(http_settings)[0]).__module__.endswith("http.trace_exporter")


def test_trace_file_adds_the_file_exporter(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = TracingSettings.from_env({"HOPSCOPE_TRACE_FILE": str(tmp_path / "spans.jsonl")})
    assert [type(e).__name__ for e in _exporters(settings)] == ["OtlpJsonFileExporter"]


def test_unsupported_protocol_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="http/json"):
        TracingSettings.from_env(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
        )
