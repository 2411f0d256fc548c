"""`hopscope traces export --jaeger FILE`: Jaeger UI JSON that Jaeger's own readers accept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_tracing_cli import run, write_otlp_lines
from tests.unit.test_tracing_decompose import one_request
from tests.unit.test_tracing_jaeger import FIXTURES, _serve
from tracing.jaeger import query_jaeger
from tracing.readers import read_file


@pytest.fixture
def exported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    otlp = tmp_path / "spans.jsonl"
    write_otlp_lines(otlp, one_request(hop_delay_ms=6.0))
    out = tmp_path / "trace.json"
    assert run(["traces", "export", "--input", str(otlp), "--jaeger", str(out)]) == 0
    assert f"to {out}" in capsys.readouterr().out
    return otlp, out


def test_export_has_the_jaeger_ui_shape(exported: tuple[Path, Path]) -> None:
    _, out = exported
    doc = json.loads(out.read_text())
    fixture = json.loads((FIXTURES / "ui_v1_trace.json").read_text())
    trace = doc["data"][0]
    assert set(fixture) <= set(trace)
    for span in trace["spans"]:
        assert set(fixture["spans"][0]) <= set(span)
        assert isinstance(span["startTime"], int) and isinstance(span["duration"], int)
        assert span["processID"] in trace["processes"]
        for tag in span["tags"]:
            assert tag["type"] in {"string", "bool", "int64", "float64", "binary"}
    services = {p["serviceName"] for t in doc["data"] for p in t["processes"].values()}
    assert {"tokenizer", "scheduler", "worker"} <= services


def test_export_reads_back_identically(exported: tuple[Path, Path]) -> None:
    otlp, out = exported
    before = {s.key: s for s in read_file(otlp)}
    after = {s.key: s for s in read_file(out)}
    assert before.keys() == after.keys()
    for key, span in before.items():
        back = after[key]
        assert (back.name, back.kind, back.parent_span_id) == (
            span.name,
            span.kind,
            span.parent_span_id,
        )
        assert back.start_ns == span.start_ns // 1000 * 1000  # Jaeger keeps microseconds
        assert back.attributes == span.attributes
        assert back.service_name == span.service_name
        assert {(link.trace_id, link.span_id) for link in back.links} == {
            (link.trace_id, link.span_id) for link in span.links
        }


def test_summary_is_the_same_from_the_jaeger_file(
    exported: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    otlp, out = exported
    assert run(["traces", "summarize", "--input", str(otlp), "--json"]) == 0
    from_otlp = json.loads(capsys.readouterr().out)
    assert run(["traces", "summarize", "--input", str(out), "--json"]) == 0
    from_jaeger = json.loads(capsys.readouterr().out)
    assert from_jaeger["requests"] == from_otlp["requests"] == 1
    for name, row in from_otlp["components"].items():
        assert from_jaeger["components"][name]["mean_ms"] == pytest.approx(row["mean_ms"], abs=0.01)


def test_a_jaeger_query_service_serving_the_file_is_read_back(
    exported: tuple[Path, Path],
) -> None:
    otlp, out = exported
    server, _ = _serve({"/api/traces": out.read_text()})
    try:
        spans = query_jaeger(f"http://127.0.0.1:{server.server_port}", service="scheduler")
    finally:
        server.shutdown()
        server.server_close()
    assert {s.key for s in spans} == {s.key for s in read_file(otlp)}


def test_export_errors_are_clear(
    exported: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    otlp, _ = exported
    missing = ["traces", "export", "--input", str(tmp_path / "nope"), "--jaeger", "x.json"]
    assert run(missing) == 2
    assert "cannot read trace file" in capsys.readouterr().err
    unknown = ["--input", str(otlp), "--jaeger", str(tmp_path / "t.json"), "--trace-id", "f" * 32]
    assert run(["traces", "export", *unknown]) == 1
    assert "no spans to export" in capsys.readouterr().err
