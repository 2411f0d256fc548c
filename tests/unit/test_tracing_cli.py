"""`hopscope traces summarize|show` on an OTLP JSON lines file (parser from tracing.cli)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_tracing_decompose import one_request
from tracing import cli
from tracing.model import Span

_KIND_NUMBERS = {"INTERNAL": 1, "SERVER": 2, "CLIENT": 3}


def _value(value: Any) -> dict[str, Any]:
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    return {"stringValue": str(value)}


def _attrs(attributes: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _value(v)} for k, v in attributes.items()]


def _otlp_span(span: Span) -> dict[str, Any]:
    return {
        "traceId": span.trace_id,
        "spanId": span.span_id,
        "parentSpanId": span.parent_span_id,
        "name": span.name,
        "kind": _KIND_NUMBERS[span.kind],
        "startTimeUnixNano": str(span.start_ns),
        "endTimeUnixNano": str(span.end_ns),
        "attributes": _attrs(span.attributes),
        "links": [
            {
                "traceId": link.trace_id,
                "spanId": link.span_id,
                "attributes": _attrs(link.attributes),
            }
            for link in span.links
        ],
    }


def write_otlp_lines(path: Path, spans: list[Span]) -> None:
    """One export request per service (resource), as each service's exporter would write it."""
    by_resource: dict[str, list[Span]] = {}
    for span in spans:
        by_resource.setdefault(json.dumps(span.resource, sort_keys=True), []).append(span)
    with path.open("w") as out:
        for resource, group in by_resource.items():
            doc = {
                "resourceSpans": [
                    {
                        "resource": {"attributes": _attrs(json.loads(resource))},
                        "scopeSpans": [{"scope": {}, "spans": [_otlp_span(s) for s in group]}],
                    }
                ]
            }
            out.write(json.dumps(doc) + "\n")


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hopscope")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    path = tmp_path / "traces.jsonl"
    write_otlp_lines(path, one_request(hop_delay_ms=6.0))
    return path


def test_summarize_json_reports_network_components(
    trace_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["traces", "summarize", "--input", str(trace_file), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["requests"] == 1
    components = summary["components"]
    assert components["network.client_tokenizer"]["mean_ms"] == pytest.approx(10.0)
    assert components["network.scheduler_worker"]["mean_ms"] == pytest.approx(8.0)
    assert set(components["queue"]) == {"mean_ms", "p50_ms", "p99_ms", "share"}
    assert sum(row["share"] for row in components.values()) == pytest.approx(1.0)


def test_summarize_table_and_show_waterfall(
    trace_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["traces", "summarize", "--input", str(trace_file)]) == 0
    table = capsys.readouterr().out
    assert "network.scheduler_worker" in table and "compute.decode" in table
    assert run(["traces", "show", "a" * 32, "--input", str(trace_file)]) == 0
    waterfall = capsys.readouterr().out
    assert "tokenizer.encode" in waterfall
    assert "Worker/Step" in waterfall  # step spans of other traces, reached through links


def test_missing_input_and_unknown_trace_fail_clearly(
    tmp_path: Path, trace_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["traces", "summarize", "--input", str(tmp_path / "nope.jsonl")]) == 2
    assert "cannot read trace file" in capsys.readouterr().err
    assert run(["traces", "show", "f" * 32, "--input", str(trace_file)]) == 1
    assert "not among" in capsys.readouterr().err


def test_per_request_json_carries_trace_ids(
    trace_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["traces", "summarize", "--input", str(trace_file), "--json", "--per-request"]) == 0
    (request,) = json.loads(capsys.readouterr().out)["per_request"]
    assert request["trace_id"] == "a" * 32
    assert sum(request["components_ms"].values()) == pytest.approx(request["e2e_ms"])
