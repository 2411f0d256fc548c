"""A span exporter that writes OTLP JSON lines to a file, for offline analysis without Jaeger."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from tracing.otlp_json import OtlpJsonLinesWriter


class OtlpJsonFileExporter(SpanExporter):
    """Writes each exported batch as one ExportTraceServiceRequest line (OTLP/JSON encoding).

    Thread-safe; the same format `hopscope traces collect` writes and `summarize` reads.
    """

    def __init__(self, path: str | Path) -> None:
        self._writer = OtlpJsonLinesWriter(path)
        self._is_shut_down = False

    @property
    def path(self) -> Path:
        return self._writer.path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._is_shut_down:
            return SpanExportResult.FAILURE
        if spans:
            self._writer.write(encode_spans(spans))
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # every export is written and flushed before it returns

    def shutdown(self) -> None:
        self._is_shut_down = True
        self._writer.close()
