"""Query a Jaeger query service over HTTP: api_v3 first, the older UI `/api/traces` as fallback."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta

from tracing.model import Span
from tracing.readers import TraceReadError, dedupe, parse_text

_TIMEOUT_S = 30.0
_MAX_TRACES = 1000
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_since(text: str) -> timedelta:
    """'15m', '2h', '30s', '1d' → timedelta."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"--since must look like 30s, 15m, 2h or 1d, got {text!r}")
    return timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])


def query_jaeger(
    base_url: str, service: str | None = None, since: timedelta = timedelta(minutes=15)
) -> list[Span]:
    """All spans of traces that touched `service` (every service when None) in the window.

    Step spans live in their own traces (the scheduler's), so without a service every
    service is queried and the results merged.
    """
    base_url = base_url.rstrip("/")
    end = datetime.now(UTC)
    start = end - since
    services = [service] if service else list_services(base_url)
    spans: list[Span] = []
    for name in services:
        spans.extend(_query_service(base_url, name, start, end))
    return dedupe(spans)


def list_services(base_url: str) -> list[str]:
    for path in ("/api/v3/services", "/api/services"):
        try:
            doc = json.loads(_get(base_url + path))
        except _NotFound:
            continue
        names = doc.get("services") or doc.get("data") or []
        return [str(name) for name in names]
    raise TraceReadError(f"{base_url} has neither /api/v3/services nor /api/services")


def _query_service(base_url: str, service: str, start: datetime, end: datetime) -> list[Span]:
    v3 = {
        "query.service_name": service,
        "query.start_time_min": _rfc3339(start),
        "query.start_time_max": _rfc3339(end),
        "query.search_depth": str(_MAX_TRACES),
    }
    try:
        return parse_text(_get(f"{base_url}/api/v3/traces?{urllib.parse.urlencode(v3)}"))
    except _NotFound:
        pass
    v1 = {
        "service": service,
        "start": str(int(start.timestamp() * 1e6)),
        "end": str(int(end.timestamp() * 1e6)),
        "limit": str(_MAX_TRACES),
    }
    try:
        return parse_text(_get(f"{base_url}/api/traces?{urllib.parse.urlencode(v1)}"))
    except _NotFound:
        return []  # both APIs say "no traces": an empty window, not an error


class _NotFound(Exception):
    pass


def _get(url: str) -> str:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            return response.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:  # api_v3 answers 404 for "no traces found" and unknown routes
            raise _NotFound(url) from exc
        raise TraceReadError(f"Jaeger query {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise TraceReadError(
            f"cannot reach Jaeger at {url}: {exc.reason}; is the query service running "
            "(default port 16686)?"
        ) from exc


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
