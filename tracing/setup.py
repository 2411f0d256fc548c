"""The one tracing setup every hopscope process uses.

Export is configured through the standard OpenTelemetry variables (OTEL_EXPORTER_OTLP_ENDPOINT,
OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_TRACES_SAMPLER(_ARG), OTEL_BSP_*), plus HOPSCOPE_TRACE_FILE for
an OTLP-JSON-lines file. With neither set no SDK provider is installed, so spans are the API's
no-op spans and tracing costs nothing (W3C context still passes through untouched).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter


@dataclass(slots=True, frozen=True)
class TracingSettings:
    otlp_endpoint: str = ""
    otlp_protocol: str = "grpc"  # OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" or "http/protobuf"
    trace_file: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TracingSettings:
        env = os.environ if env is None else env
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT", ""
        )
        if env.get("OTEL_TRACES_EXPORTER", "").strip() == "none":
            endpoint = ""
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
        )
        return cls(
            otlp_endpoint=endpoint,
            otlp_protocol=protocol.strip() or "grpc",
            trace_file=env.get("HOPSCOPE_TRACE_FILE", ""),
        )

    @property
    def is_enabled(self) -> bool:
        return bool(self.otlp_endpoint or self.trace_file)

    def __post_init__(self) -> None:
        if self.otlp_protocol not in ("grpc", "http/protobuf"):
            raise ValueError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={self.otlp_protocol!r} is not supported; "
                "use grpc or http/protobuf"
            )


_provider: TracerProvider | None = None


def configure_tracing(
    service_name: str,
    attributes: Mapping[str, str | int] | None = None,
    settings: TracingSettings | None = None,
    extra_processors: list[SpanProcessor] | None = None,
) -> TracerProvider | None:
    """Install the global tracer provider for this process; returns None when tracing is off.

    `extra_processors` lets tests attach an in-memory exporter without any environment.
    """
    global _provider
    settings = settings or TracingSettings.from_env()
    if not settings.is_enabled and not extra_processors:
        return None
    resource = Resource.create(
        {
            "service.name": service_name,
            "host.name": socket.gethostname(),
            "process.pid": os.getpid(),
            **dict(attributes or {}),
        }
    )
    provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER
    for exporter in _exporters(settings):
        provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_* apply
    for processor in extra_processors or []:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def _exporters(settings: TracingSettings) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    if settings.otlp_endpoint and settings.otlp_protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        exporters.append(HttpSpanExporter())  # reads the OTEL_EXPORTER_OTLP_* variables
    elif settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporters.append(OTLPSpanExporter())
    if settings.trace_file:
        from tracing.file_exporter import OtlpJsonFileExporter

        exporters.append(OtlpJsonFileExporter(settings.trace_file))
    return exporters


def shutdown_tracing() -> None:
    """Flush and stop exporting; safe to call when tracing is off."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None
