"""Spans across the three service processes, exported over real OTLP to hopscope's receiver."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import grpc
import pytest

from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc
from tests.harness import serve
from tracing.collector import OtlpCollector
from tracing.decompose import decompose
from tracing.readers import read_file


@pytest.fixture()
def traced_env(tmp_path: Path):  # type: ignore[no-untyped-def]
    collector = OtlpCollector(tmp_path / "spans.jsonl", listen="127.0.0.1:0").start()
    saved = dict(os.environ)
    os.environ.update(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
    )
    try:
        yield collector
    finally:
        os.environ.clear()
        os.environ.update(saved)
        collector.stop()


def _generate_with_traceparent(
    address: str, trace_id: str, parent_id: str, request_id: str
) -> None:
    metadata = (("traceparent", f"00-{trace_id}-{parent_id}-01"),)
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.TokenizerStub(channel)
        request = pb.GenerateRequest(
            prompt="hello there", max_tokens=6, ignore_eos=True, request_id=request_id
        )
        responses = list(stub.Generate(request, metadata=metadata, timeout=60))
    assert responses[-1].finish_reason == "length"


@pytest.mark.parametrize("placement", ["colocated", "inproc"])
def test_callers_trace_continues_through_all_three_services(
    traced_env: OtlpCollector, placement: str
) -> None:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    with serve(placement) as served:
        _generate_with_traceparent(served.address, trace_id, parent_id, "req-traced")
    # serve drained and each process flushed its exporter on exit
    spans = read_file(traced_env.out_path)
    in_trace = [s for s in spans if s.trace_id == trace_id]
    services = {s.service_name for s in in_trace}
    assert (
        services == {"hopscope-tokenizer", "hopscope-scheduler", "hopscope-worker"}
        or placement == "inproc"
    )
    names = {(s.name.lstrip("/"), s.kind) for s in in_trace}
    for pair in [
        ("hopscope.v1.Tokenizer/Generate", "SERVER"),
        ("hopscope.v1.Scheduler/Submit", "CLIENT"),
        ("hopscope.v1.Scheduler/Submit", "SERVER"),
        ("hopscope.v1.Worker/Step", "CLIENT"),
        ("hopscope.v1.Worker/Step", "SERVER"),
    ]:
        assert pair in names, (pair, names)
    generate_server = next(
        s for s in in_trace if s.name.lstrip("/") == "hopscope.v1.Tokenizer/Generate"
    )
    assert generate_server.parent_span_id == parent_id  # the caller's span is the parent
    steps = [
        s for s in spans if s.name.lstrip("/") == "hopscope.v1.Worker/Step" and s.kind == "CLIENT"
    ]
    assert all(isinstance(s.attributes.get("hopscope.num_prefill_links"), int) for s in steps)
    assert any(s.attributes["hopscope.num_prefill_links"] == 1 for s in steps)  # the prefill step
    breakdowns = [b for b in decompose(spans) if b.trace_id == trace_id]
    assert len(breakdowns) == 1
    parts = breakdowns[0].components_ms
    assert parts["compute.prefill"] > 0 and parts["compute.decode"] > 0
    assert all(v >= 0 for v in parts.values())


def test_disagg_traces_show_the_kv_transfer_and_the_handoff(traced_env: OtlpCollector) -> None:
    """The KV hop's spans on both workers, the handoff's phases under Submit SERVER, and the
    per-request components (kv_transfer, handoff_wait among them) adding up to E2E within 5%."""
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    with serve("disagg") as served:
        _generate_with_traceparent(served.address, trace_id, parent_id, "req-disagg")
    spans = read_file(traced_env.out_path)
    in_trace = [s for s in spans if s.trace_id == trace_id]
    transfers = [s for s in in_trace if s.name == "hopscope.kv_transfer"]
    assert sorted(s.kind for s in transfers) == ["CLIENT", "SERVER"]
    assert all(s.attributes["hopscope.kv_bytes"] > 0 for s in transfers)
    assert all(s.attributes["hopscope.num_blocks"] >= 1 for s in transfers)
    names = {s.name for s in in_trace}
    assert {
        "hopscope.handoff_wait",
        "hopscope.handoff_transfer",
        "hopscope.handoff_resume",
    } <= names
    (breakdown,) = [b for b in decompose(spans) if b.trace_id == trace_id]
    parts = breakdown.components_ms
    assert parts["kv_transfer"] > 0 and parts["handoff_wait"] >= 0
    assert parts["compute.prefill"] > 0 and parts["compute.decode"] > 0
    assert breakdown.is_sum_within_tolerance, (breakdown.e2e_ms, parts)
    assert breakdown.clamped_ms <= 0.05 * breakdown.e2e_ms, breakdown.notes
