"""Querying a Jaeger query service: api_v3 first, the UI `/api/traces` API when v3 is absent."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from tracing.jaeger import parse_since, query_jaeger

FIXTURES = Path(__file__).parent.parent / "fixtures" / "jaeger"


def _serve(routes: dict[str, str]) -> tuple[HTTPServer, list[str]]:
    """A fake query service answering `routes` (path → body) and 404 elsewhere."""
    requested: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requested.append(self.path)
            body = routes.get(urlparse(self.path).path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write((body or '{"error": "not found"}').encode())

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, requested


@pytest.fixture
def jaeger_v3() -> Iterator[tuple[str, list[str]]]:
    server, requested = _serve(
        {
            "/api/v3/services": json.dumps({"services": ["scheduler", "worker"]}),
            "/api/v3/traces": (FIXTURES / "apiv3_FindTraces.json").read_text(),
        }
    )
    try:
        yield f"http://127.0.0.1:{server.server_port}", requested
    finally:
        server.shutdown()
        server.server_close()


def test_api_v3_queries_every_service_and_merges(jaeger_v3: tuple[str, list[str]]) -> None:
    url, requested = jaeger_v3
    spans = query_jaeger(url, since=timedelta(minutes=15))
    assert [s.name for s in spans] == ["foobar"]  # same span from two services, read once
    queried = [parse_qs(urlparse(path).query) for path in requested if "/traces" in path]
    assert sorted(q["query.service_name"][0] for q in queried) == ["scheduler", "worker"]
    assert all("query.start_time_min" in q for q in queried)


def test_falls_back_to_ui_api_when_v3_is_missing() -> None:
    ui_trace = json.loads((FIXTURES / "ui_v1_trace.json").read_text())
    server, requested = _serve({"/api/traces": json.dumps({"data": [ui_trace]})})
    try:
        spans = query_jaeger(f"http://127.0.0.1:{server.server_port}", service="service-x")
    finally:
        server.shutdown()
        server.server_close()
    assert len(spans) == 4
    assert any(path.startswith("/api/traces?service=service-x") for path in requested)


def test_since_parses_units_and_rejects_nonsense() -> None:
    assert parse_since("15m") == timedelta(minutes=15)
    assert parse_since("2h") == timedelta(hours=2)
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday")
