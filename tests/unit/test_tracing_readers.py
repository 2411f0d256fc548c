"""Readers: Jaeger fixtures parse; OTLP JSON written by the file exporter reads back intact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tracing.file_exporter import OtlpJsonFileExporter
from tracing.readers import TraceReadError, parse_text, read_file

FIXTURES = Path(__file__).parent.parent / "fixtures" / "jaeger"


@pytest.mark.parametrize("name", ["apiv3_FindTraces.json", "apiv3_GetTrace.json"])
def test_jaeger_api_v3_fixtures_parse(name: str) -> None:
    (span,) = read_file(FIXTURES / name)
    assert span.trace_id == "000000000000009600000000000000a0"
    assert span.span_id == "00000000000000b4"
    assert span.kind == "SERVER" and span.name == "foobar"
    assert span.start_ns == 11651379494838206464  # beyond int64: kept exact


def test_jaeger_ui_fixture_parses_references_and_processes() -> None:
    spans = {s.span_id[-1]: s for s in read_file(FIXTURES / "ui_v1_trace.json")}
    assert set(spans) == {"2", "3", "4", "5"}  # the duplicate span id 2 is read once
    assert spans["3"].parent_span_id == "0000000000000002"
    assert spans["3"].resource["service.name"] == "service-y"
    # a CHILD_OF into another trace and a FOLLOWS_FROM both become links
    assert {link.trace_id[-2:] for link in spans["4"].links} == {"ff", "01"}
    assert spans["2"].end_ns - spans["2"].start_ns == 5_000  # microseconds → nanoseconds


def test_jaeger_ui_search_response_with_data_list() -> None:
    trace_doc = json.loads((FIXTURES / "ui_v1_trace.json").read_text())
    spans = parse_text(json.dumps({"data": [trace_doc], "total": 1}))
    assert len(spans) == 4


def test_unknown_format_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(TraceReadError, match="unknown trace format"):
        read_file(path)
    with pytest.raises(TraceReadError, match="cannot read"):
        read_file(tmp_path / "missing.json")


def test_file_exporter_writes_otlp_json_lines_with_hex_ids(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    exporter = OtlpJsonFileExporter(path)
    provider = TracerProvider(resource=Resource.create({"service.name": "scheduler"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        pass
    with (
        tracer.start_as_current_span(
            "step",
            kind=trace.SpanKind.CLIENT,
            links=[trace.Link(request.get_span_context(), {"hopscope.phase": "prefill"})],
            attributes={"hopscope.batch_size": 3},
        ) as step,
        tracer.start_as_current_span("child", kind=trace.SpanKind.SERVER),
    ):
        pass
    provider.shutdown()

    lines = path.read_text().splitlines()
    raw = json.loads(lines[0])["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert raw["traceId"] == f"{request.get_span_context().trace_id:032x}"
    assert raw["startTimeUnixNano"].isdigit()  # 64-bit integers are strings in OTLP/JSON
    spans = {s.name: s for s in read_file(path)}
    assert spans["child"].parent_span_id == f"{step.get_span_context().span_id:016x}"
    assert spans["child"].kind == "SERVER" and spans["step"].kind == "CLIENT"
    assert spans["step"].attributes["hopscope.batch_size"] == 3
    (link,) = spans["step"].links
    assert link.span_id == spans["request"].span_id
    assert link.attributes == {"hopscope.phase": "prefill"}
    assert spans["request"].service_name == "scheduler"


def test_fast_otlp_json_encoding_matches_protobuf_json_format() -> None:
    """The hand-written encoder says exactly what json_format says (with hex ids)."""
    import base64

    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from tracing.otlp_json import request_to_dict

    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    kv = rs.resource.attributes.add(key="service.name")
    kv.value.string_value = "svc"
    span = rs.scope_spans.add().spans.add(
        trace_id=bytes(range(16)),
        span_id=bytes(range(8)),
        parent_span_id=bytes(range(1, 9)),
        name="s",
        kind=2,
        start_time_unix_nano=5,
        end_time_unix_nano=9,
    )
    span.attributes.add(key="i").value.int_value = 7
    span.attributes.add(key="d").value.double_value = 1.5
    span.attributes.add(key="b").value.bool_value = True
    span.attributes.add(key="a").value.array_value.values.add().string_value = "x"
    span.links.add(trace_id=bytes(range(16)), span_id=bytes(range(2, 10)))
    span.events.add(time_unix_nano=6, name="e")
    span.status.code = 2
    span.status.message = "boom"
    expected = json_format.MessageToDict(request, use_integers_for_enums=True)
    for s in expected["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        for key in ("traceId", "spanId", "parentSpanId"):
            s[key] = base64.b64decode(s[key]).hex()
        for link in s["links"]:
            link["traceId"] = base64.b64decode(link["traceId"]).hex()
            link["spanId"] = base64.b64decode(link["spanId"]).hex()
    assert request_to_dict(request) == expected
