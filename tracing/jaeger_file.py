"""Spans → Jaeger's UI/v1 JSON, the file the Jaeger UI's "Upload JSON" (search page) opens.

The shape is the `/api/traces` response: `{"data": [trace, ...]}`, one trace per trace id, each
with `spans` (microsecond `startTime`/`duration`, `references`, typed `tags`) and `processes`
keyed by processID (one per distinct resource). The parent becomes a CHILD_OF reference and each
span link a FOLLOWS_FROM reference (what Jaeger's own OTLP translator does), so the step spans'
links to the requests they batched survive; `tracing.readers` reads the file back.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tracing.model import Attributes, Span


def jaeger_document(spans: Iterable[Span]) -> dict[str, Any]:
    """`{"data": [...]}` with one Jaeger UI trace per trace id, spans in start order."""
    by_trace: dict[str, list[Span]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    traces = [_trace(trace_id, group) for trace_id, group in by_trace.items()]
    traces.sort(key=lambda t: min((s["startTime"] for s in t["spans"]), default=0))
    return {"data": traces, "total": 0, "limit": 0, "offset": 0, "errors": None}


def write_jaeger_file(path: str | Path, spans: Iterable[Span]) -> int:
    """Write the document; the number of traces written."""
    doc = jaeger_document(spans)
    Path(path).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return len(doc["data"])


def _trace(trace_id: str, spans: list[Span]) -> dict[str, Any]:
    processes: dict[str, dict[str, Any]] = {}
    process_ids: dict[str, str] = {}
    out = []
    for span in sorted(spans, key=lambda s: (s.start_ns, s.span_id)):
        resource_key = json.dumps(span.resource, sort_keys=True, default=str)
        pid = process_ids.get(resource_key)
        if pid is None:
            pid = process_ids[resource_key] = f"p{len(process_ids) + 1}"
            processes[pid] = {
                "serviceName": span.service_name or "unknown_service",
                "tags": _tags({k: v for k, v in span.resource.items() if k != "service.name"}),
            }
        out.append(_span(span, pid))
    return {"traceID": trace_id, "spans": out, "processes": processes, "warnings": None}


def _span(span: Span, pid: str) -> dict[str, Any]:
    references = []
    if span.parent_span_id:
        references.append(
            {"refType": "CHILD_OF", "traceID": span.trace_id, "spanID": span.parent_span_id}
        )
    references.extend(
        {"refType": "FOLLOWS_FROM", "traceID": link.trace_id, "spanID": link.span_id}
        for link in span.links
    )
    tags = dict(span.attributes)
    if span.kind not in ("", "UNSPECIFIED"):
        tags["span.kind"] = span.kind.lower()
    start_us = span.start_ns // 1000
    return {
        "traceID": span.trace_id,
        "spanID": span.span_id,
        "operationName": span.name,
        "references": references,
        "startTime": start_us,
        "duration": max(0, span.end_ns // 1000 - start_us),
        "tags": _tags(tags),
        "logs": [],
        "processID": pid,
        "warnings": None,
    }


def _tags(attributes: Attributes) -> list[dict[str, Any]]:
    return [_tag(key, value) for key, value in attributes.items()]


def _tag(key: str, value: Any) -> dict[str, Any]:
    """Jaeger's typed tags: string, bool, int64, float64, binary; anything else as JSON text."""
    if isinstance(value, bool):
        return {"key": key, "type": "bool", "value": value}
    if isinstance(value, int):
        return {"key": key, "type": "int64", "value": value}
    if isinstance(value, float):
        return {"key": key, "type": "float64", "value": value}
    if isinstance(value, bytes):
        return {"key": key, "type": "binary", "value": base64.b64encode(value).decode()}
    if isinstance(value, str):
        return {"key": key, "type": "string", "value": value}
    return {"key": key, "type": "string", "value": json.dumps(value, default=str)}
