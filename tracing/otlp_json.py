"""OTLP/JSON encoding of ExportTraceServiceRequest messages, one per line.

protobuf's json_format writes bytes as base64, but the OTLP/JSON encoding requires trace and span
ids as hex strings; enums must be integers; 64-bit integers are strings (json_format does that).
"""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import Any, TextIO

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def request_to_dict(request: ExportTraceServiceRequest) -> dict[str, Any]:
    """OTLP/JSON form of one export request (hex ids, camelCase keys, integer enums)."""
    doc = json_format.MessageToDict(request, use_integers_for_enums=True)
    for resource_spans in doc.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                _ids_to_hex(span)
                for link in span.get("links", []):
                    _ids_to_hex(link)
    return doc


def request_to_line(request: ExportTraceServiceRequest) -> str:
    return json.dumps(request_to_dict(request), separators=(",", ":"))


def _ids_to_hex(obj: dict[str, Any]) -> None:
    for key in _ID_KEYS:
        if obj.get(key):
            obj[key] = base64.b64decode(obj[key]).hex()


def count_spans(request: ExportTraceServiceRequest) -> int:
    return sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)


class OtlpJsonLinesWriter:
    """Appends export requests to a file as OTLP JSON lines; safe to call from many threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file: TextIO | None = self.path.open("a", encoding="utf-8")
        self.num_spans = 0
        self.num_requests = 0

    def write(self, request: ExportTraceServiceRequest) -> None:
        num_spans = count_spans(request)
        if num_spans == 0:
            return
        line = request_to_line(request)  # encode outside the lock: it is the slow part
        with self._lock:
            if self._file is None:
                raise ValueError(f"trace file {self.path} is already closed")
            self._file.write(line + "\n")
            self._file.flush()  # a killed process still leaves whole lines behind
            self.num_spans += num_spans
            self.num_requests += 1

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()
                self._file.close()
                self._file = None
