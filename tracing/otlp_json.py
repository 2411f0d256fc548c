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

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def request_to_dict(request: ExportTraceServiceRequest) -> dict[str, Any]:
    """OTLP/JSON form of one export request (hex ids, camelCase keys, integer enums).

    Built field by field: json_format.MessageToDict walks descriptors in Python and was most of
    a receiver's CPU (about 125 us a span); default values are omitted as it omits them.
    """
    return {"resourceSpans": [_resource_spans(rs) for rs in request.resource_spans]}


def _resource_spans(rs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rs.HasField("resource"):
        attributes = rs.resource.attributes
        out["resource"] = {"attributes": _attributes(attributes)} if attributes else {}
    out["scopeSpans"] = [_scope_spans(ss) for ss in rs.scope_spans]
    if rs.schema_url:
        out["schemaUrl"] = rs.schema_url
    return out


def _scope_spans(ss: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if ss.HasField("scope"):
        scope: dict[str, Any] = {"name": ss.scope.name} if ss.scope.name else {}
        if ss.scope.version:
            scope["version"] = ss.scope.version
        out["scope"] = scope
    out["spans"] = [_span(span) for span in ss.spans]
    if ss.schema_url:
        out["schemaUrl"] = ss.schema_url
    return out


def _span(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "traceId": span.trace_id.hex(),
        "spanId": span.span_id.hex(),
        "name": span.name,
        "startTimeUnixNano": str(span.start_time_unix_nano),
        "endTimeUnixNano": str(span.end_time_unix_nano),
    }
    if span.parent_span_id:
        out["parentSpanId"] = span.parent_span_id.hex()
    if span.kind:
        out["kind"] = span.kind
    if span.trace_state:
        out["traceState"] = span.trace_state
    if span.flags:
        out["flags"] = span.flags
    if span.attributes:
        out["attributes"] = _attributes(span.attributes)
    if span.events:
        out["events"] = [_event(e) for e in span.events]
    if span.links:
        out["links"] = [_link(link) for link in span.links]
    if span.status.code or span.status.message:
        out["status"] = {"code": span.status.code, "message": span.status.message}
    return out


def _event(event: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"timeUnixNano": str(event.time_unix_nano), "name": event.name}
    if event.attributes:
        out["attributes"] = _attributes(event.attributes)
    return out


def _link(link: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"traceId": link.trace_id.hex(), "spanId": link.span_id.hex()}
    if link.attributes:
        out["attributes"] = _attributes(link.attributes)
    if link.trace_state:
        out["traceState"] = link.trace_state
    if link.flags:
        out["flags"] = link.flags
    return out


def _attributes(attributes: Any) -> list[dict[str, Any]]:
    return [{"key": kv.key, "value": _any_value(kv.value)} for kv in attributes]


def _any_value(value: Any) -> dict[str, Any]:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return {"stringValue": value.string_value}
    if kind == "int_value":
        return {"intValue": str(value.int_value)}  # 64-bit integers are strings in OTLP/JSON
    if kind == "double_value":
        return {"doubleValue": value.double_value}
    if kind == "bool_value":
        return {"boolValue": value.bool_value}
    if kind == "array_value":
        return {"arrayValue": {"values": [_any_value(v) for v in value.array_value.values]}}
    if kind == "kvlist_value":
        return {"kvlistValue": {"values": _attributes(value.kvlist_value.values)}}
    if kind == "bytes_value":
        return {"bytesValue": base64.b64encode(value.bytes_value).decode()}
    return {}


def request_to_line(request: ExportTraceServiceRequest) -> str:
    return json.dumps(request_to_dict(request), separators=(",", ":"))


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
