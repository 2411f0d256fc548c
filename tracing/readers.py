"""Readers: OTLP JSON (our files, Jaeger api_v3) and Jaeger's UI/v1 JSON → `Span`s.

Inputs come from other tools, so readers are lenient: unknown fields are ignored, ids are
normalised to lowercase hex, and a span that lacks what we need is skipped rather than fatal.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tracing.model import (
    KIND_NAMES,
    Attributes,
    Link,
    Span,
    normalize_span_id,
    normalize_trace_id,
)


class TraceReadError(Exception):
    """A trace input could not be read at all (missing file, not JSON, unknown format)."""


def read_file(path: str | Path) -> list[Span]:
    """Spans from an OTLP JSON lines file, or one JSON document in any supported format."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TraceReadError(f"cannot read trace file {path}: {exc.strerror or exc}") from exc
    return parse_text(text, source=str(path))


def parse_text(text: str, source: str = "<input>") -> list[Span]:
    spans: list[Span] = []
    for doc in _json_documents(text, source):
        spans.extend(parse_document(doc))
    return dedupe(spans)


def _json_documents(text: str, source: str) -> Iterator[Any]:
    """One document, JSON lines, or concatenated documents (api_v3 streams several results)."""
    decoder = json.JSONDecoder()
    pos, size = 0, len(text)
    while True:
        while pos < size and text[pos].isspace():
            pos += 1
        if pos >= size:
            return
        try:
            doc, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise TraceReadError(f"{source}: not JSON at offset {pos}: {exc.msg}") from exc
        yield doc


def parse_document(doc: Any) -> list[Span]:
    """Detect the format of one parsed JSON document and read its spans."""
    if isinstance(doc, list):
        return [span for item in doc for span in parse_document(item)]
    if not isinstance(doc, dict):
        raise TraceReadError(f"expected a JSON object with spans, got {type(doc).__name__}")
    if "result" in doc:  # api_v3 FindTraces / GetTrace stream chunk
        return parse_document(doc["result"])
    if "resourceSpans" in doc:
        return list(parse_otlp(doc))
    if "data" in doc:  # UI/v1 `/api/traces` response
        return [span for trace in doc.get("data") or [] for span in parse_jaeger_ui_trace(trace)]
    if "spans" in doc and "processes" in doc:  # a single UI/v1 trace
        return parse_jaeger_ui_trace(doc)
    if "error" in doc:
        raise TraceReadError(f"the trace source answered with an error: {doc['error']}")
    raise TraceReadError(
        "unknown trace format: expected OTLP JSON (resourceSpans), Jaeger api_v3 (result) "
        "or Jaeger UI JSON (data / spans+processes)"
    )


# ---- OTLP JSON ----------------------------------------------------------------------------


def parse_otlp(doc: dict[str, Any]) -> Iterator[Span]:
    for resource_spans in doc.get("resourceSpans") or []:
        resource = otlp_attributes((resource_spans.get("resource") or {}).get("attributes"))
        # older exporters wrote instrumentationLibrarySpans
        scopes = resource_spans.get("scopeSpans") or resource_spans.get(
            "instrumentationLibrarySpans"
        )
        for scope_spans in scopes or []:
            for raw in scope_spans.get("spans") or []:
                span = _otlp_span(raw, resource)
                if span is not None:
                    yield span


def _otlp_span(raw: dict[str, Any], resource: Attributes) -> Span | None:
    trace_id = normalize_trace_id(otlp_id(raw.get("traceId", "")))
    span_id = normalize_span_id(otlp_id(raw.get("spanId", "")))
    if not trace_id or not span_id:
        return None
    return Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=normalize_span_id(otlp_id(raw.get("parentSpanId", ""))),
        name=str(raw.get("name", "")),
        kind=_otlp_kind(raw.get("kind", 0)),
        start_ns=_to_int(raw.get("startTimeUnixNano")),
        end_ns=_to_int(raw.get("endTimeUnixNano")),
        attributes=otlp_attributes(raw.get("attributes")),
        links=[_otlp_link(link) for link in raw.get("links") or []],
        resource=resource,
    )


def _otlp_link(raw: dict[str, Any]) -> Link:
    return Link(
        trace_id=normalize_trace_id(otlp_id(raw.get("traceId", ""))),
        span_id=normalize_span_id(otlp_id(raw.get("spanId", ""))),
        attributes=otlp_attributes(raw.get("attributes")),
    )


def otlp_id(value: str) -> str:
    """Hex as OTLP/JSON requires; base64 (protobuf's default JSON for bytes) is accepted too."""
    if not value:
        return ""
    if len(value) in (16, 32) and all(c in "0123456789abcdefABCDEF" for c in value):
        return value.lower()
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return value.lower()


def _otlp_kind(value: Any) -> str:
    if isinstance(value, str):
        name = value.removeprefix("SPAN_KIND_")
        return name if name in KIND_NAMES.values() else "UNSPECIFIED"
    return KIND_NAMES.get(_to_int(value), "UNSPECIFIED")


def otlp_attributes(raw: Iterable[dict[str, Any]] | None) -> Attributes:
    return {kv.get("key", ""): _otlp_value(kv.get("value") or {}) for kv in raw or []}


def _otlp_value(value: dict[str, Any]) -> Any:
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return _to_int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [_otlp_value(v) for v in (value["arrayValue"] or {}).get("values") or []]
    if "kvlistValue" in value:
        return otlp_attributes((value["kvlistValue"] or {}).get("values"))
    if "bytesValue" in value:
        return value["bytesValue"]
    return None


def _to_int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


# ---- Jaeger UI/v1 JSON ----------------------------------------------------------------------


def parse_jaeger_ui_trace(trace: dict[str, Any]) -> list[Span]:
    processes = {
        pid: _jaeger_resource(process) for pid, process in (trace.get("processes") or {}).items()
    }
    spans = []
    for raw in trace.get("spans") or []:
        span = _jaeger_span(raw, processes)
        if span is not None:
            spans.append(span)
    return spans


def _jaeger_resource(process: dict[str, Any]) -> Attributes:
    resource = jaeger_tags(process.get("tags"))
    resource["service.name"] = process.get("serviceName", "")
    return resource


def _jaeger_span(raw: dict[str, Any], processes: dict[str, Attributes]) -> Span | None:
    trace_id = normalize_trace_id(str(raw.get("traceID", "")))
    span_id = normalize_span_id(str(raw.get("spanID", "")))
    if not trace_id or not span_id:
        return None
    tags = jaeger_tags(raw.get("tags"))
    parent_span_id, links = _jaeger_references(raw.get("references") or [], trace_id)
    start_ns = _to_int(raw.get("startTime")) * 1000  # microseconds in this format
    return Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent_span_id,
        name=str(raw.get("operationName", "")),
        kind=str(tags.pop("span.kind", "unspecified")).upper(),
        start_ns=start_ns,
        end_ns=start_ns + _to_int(raw.get("duration")) * 1000,
        attributes=tags,
        links=links,
        resource=processes.get(str(raw.get("processID", "")), {}),
    )


def _jaeger_references(refs: list[dict[str, Any]], trace_id: str) -> tuple[str, list[Link]]:
    """The first CHILD_OF in the same trace is the parent; every other reference is a link."""
    parent_span_id = ""
    links: list[Link] = []
    for ref in refs:
        ref_trace = normalize_trace_id(str(ref.get("traceID", "")))
        ref_span = normalize_span_id(str(ref.get("spanID", "")))
        is_parent = ref.get("refType") == "CHILD_OF" and ref_trace == trace_id
        if is_parent and not parent_span_id:
            parent_span_id = ref_span
        else:
            links.append(Link(trace_id=ref_trace, span_id=ref_span))
    return parent_span_id, links


def jaeger_tags(raw: Iterable[dict[str, Any]] | None) -> Attributes:
    return {tag.get("key", ""): tag.get("value") for tag in raw or []}


def dedupe(spans: list[Span]) -> list[Span]:
    """Drop repeated (trace_id, span_id) pairs; the same trace may come back from two queries."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for span in spans:
        if span.key not in seen:
            seen.add(span.key)
            unique.append(span)
    return unique
