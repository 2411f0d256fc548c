"""Which requests `hopscope traces summarize` keeps: one run out of a span file that holds many.

A request is kept when its root span carries the bench `--label`, started within
`--since`/`--until`, and/or its trace id is in a bench run's records file (`--requests`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tracing.decompose import RequestBreakdown
from tracing.jaeger import parse_since
from tracing.model import normalize_trace_id


@dataclass(slots=True, frozen=True)
class RequestFilter:
    label: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    trace_ids: frozenset[str] | None = None

    @property
    def is_active(self) -> bool:
        return any(v is not None for v in (self.label, self.since, self.until, self.trace_ids))

    def keep(self, breakdown: RequestBreakdown) -> bool:
        started = datetime.fromtimestamp(breakdown.start_unix_ns / 1e9, UTC)
        return (
            (self.label is None or breakdown.label == self.label)
            and (self.since is None or started >= self.since)
            and (self.until is None or started <= self.until)
            and (self.trace_ids is None or breakdown.trace_id in self.trace_ids)
        )

    def apply(self, breakdowns: Sequence[RequestBreakdown]) -> list[RequestBreakdown]:
        return [b for b in breakdowns if self.keep(b)]

    def describe(self) -> dict[str, str | int | None]:
        return {
            "label": self.label,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "num_trace_ids": None if self.trace_ids is None else len(self.trace_ids),
        }


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """'15m' (that long ago), unix seconds, or an ISO 8601 time (local time when no zone)."""
    now = now or datetime.now(UTC)
    try:
        return now - parse_since(text)
    except ValueError:
        pass
    try:
        return datetime.fromtimestamp(float(text), UTC)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use a duration ago (30s, 15m, 2h, 1d), unix seconds or "
            "an ISO 8601 time such as 2026-11-29T16:05:00"
        ) from None
    return when if when.tzinfo else when.astimezone()


def read_trace_ids(path: str | Path) -> frozenset[str]:
    """Trace ids of a bench run: its per-request JSONL, or its summary JSON (which names it)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"--requests {path}: {exc.strerror or exc}") from None
    if path.suffix == ".json":
        try:
            requests_file = json.loads(text)["requests_file"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"--requests {path}: not a bench summary (no requests_file)") from None
        return read_trace_ids(requests_file)
    ids = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            ids.add(normalize_trace_id(json.loads(line)["trace_id"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ValueError(
                f"--requests {path}:{number}: not a bench record (no trace_id)"
            ) from None
    return frozenset(ids)
