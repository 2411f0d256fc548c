"""The one span model every reader produces, whatever format the spans came in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Attributes = dict[str, Any]

# OTLP SpanKind numbers (opentelemetry/proto/trace/v1/trace.proto)
KIND_NAMES: dict[int, str] = {
    0: "UNSPECIFIED",
    1: "INTERNAL",
    2: "SERVER",
    3: "CLIENT",
    4: "PRODUCER",
    5: "CONSUMER",
}


@dataclass(slots=True, frozen=True)
class Link:
    """A span link: the step span points at the request spans of its batch this way."""

    trace_id: str
    span_id: str
    attributes: Attributes = field(default_factory=dict)


@dataclass(slots=True)
class Span:
    """A finished span; ids are lowercase hex (32 chars trace, 16 chars span)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str  # one of KIND_NAMES' values
    start_ns: int
    end_ns: int
    attributes: Attributes = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    resource: Attributes = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.trace_id, self.span_id)

    @property
    def parent_key(self) -> tuple[str, str] | None:
        return (self.trace_id, self.parent_span_id) if self.parent_span_id else None

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    @property
    def duration_ms(self) -> float:
        return self.duration_ns / 1e6

    @property
    def service_name(self) -> str:
        return str(self.resource.get("service.name", ""))


def normalize_trace_id(value: str) -> str:
    return value.strip().lower().zfill(32) if value else ""


def normalize_span_id(value: str) -> str:
    return value.strip().lower().zfill(16) if value else ""
