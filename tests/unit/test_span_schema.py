"""Every span and attribute ARCHITECTURE.md's span table promises is exported by a real pipeline.

The table is parsed from ARCHITECTURE.md (so the doc cannot drift from what is exported), a real
`inproc` pipeline serves requests from the real load generator, and an in-memory exporter
catches what the SDK really exports (an attribute set after a span ended is not among them).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from deploy.inproc import start_inproc
from loadgen.config import BenchConfig, LengthSpec, LoadConfig, WorkloadConfig
from loadgen.runner import Runner, SlicePlan
from services.config import HopscopeConfig
from tracing import schema
from tracing.setup import configure_tracing

ARCHITECTURE = Path(__file__).resolve().parents[2] / "ARCHITECTURE.md"
_ROW = re.compile(r"^\| `([^`]+)` \| ([A-Z, ]+) \| [^|]+ \| (.*) \|$")


def promised_by_architecture() -> dict[tuple[str, str], set[str]]:
    """(span name, kind) -> the `hopscope.*` attributes the span table names for it."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("## Spans", 1)[1]
    rpc_paragraph = section[section.index("All hopscope spans") :].split("\n\n")[0]
    rpc_attributes = {
        a.split("=")[0] for a in re.findall(r"`([a-z]+\.[a-z_.]+(?:=\w+)?)`", rpc_paragraph)
    }
    promised: dict[tuple[str, str], set[str]] = {}
    for line in section.splitlines():
        if not (match := _ROW.match(line)):
            continue
        name, kinds, notes = match.groups()
        attributes = set(re.findall(r"`(hopscope\.[a-z_]+)`", notes))
        if name.startswith(("hopscope.v1.Scheduler", "hopscope.v1.Worker")):
            attributes |= rpc_attributes - {"hopscope.request_id"}
        for kind in kinds.split(", "):
            promised[(name.lstrip("/"), kind.strip())] = attributes
    return promised


def test_the_schema_and_the_architecture_table_promise_the_same() -> None:
    from_doc = promised_by_architecture()
    for key, attributes in from_doc.items():
        assert attributes <= set(schema.PROMISED.get(key, ())) | {schema.REQUEST_ID}, key
    for key, attributes in schema.PROMISED.items():
        assert key in from_doc, f"{key} is in tracing/schema.py but not in ARCHITECTURE.md"
        assert set(attributes) - {schema.REQUEST_ID} <= from_doc[key], key


@pytest.fixture(scope="module")
def exported() -> Iterator[list[ReadableSpan]]:
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):  # another test of this process installed one
        provider.add_span_processor(processor)
    else:
        configure_tracing("hopscope-test", extra_processors=[processor])
    records = asyncio.run(_serve_and_load(num_requests=3))
    trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
    assert all(r.status == "OK" for r in records), [r.error for r in records]
    yield list(exporter.get_finished_spans())
    exporter.clear()


async def _serve_and_load(num_requests: int) -> list:  # type: ignore[type-arg]
    spec = HopscopeConfig.of(port=0, kv_cache_mb=16, max_num_seqs=4)
    pipeline = await start_inproc(spec)
    try:
        config = BenchConfig(
            pipeline.address,
            LoadConfig(concurrency=2, num_requests=num_requests),
            WorkloadConfig(input_len=LengthSpec(8), output_len=LengthSpec(4)),
            label="schema-test",
        )
        plan = SlicePlan(0, list(range(num_requests)), None, 2)
        runner = Runner(config, plan, is_tracing=True)
        runner.prepare()
        records = await runner.run()
        worker_metrics = pipeline.worker.metrics.exposition()
    finally:
        await pipeline.stop(grace_s=1.0)
    _check_worker_kv_gauges(worker_metrics, pipeline.worker.engine.info.num_blocks)
    return records


def _check_worker_kv_gauges(text: str, num_blocks: int) -> None:
    """The worker's KV gauges add up to its cache, and free is not 0 (which reads as full)."""
    values = {
        name: float(re.search(rf'hopscope_kv_blocks_{name}{{service="worker"}} (\S+)', text)[1])  # type: ignore[index]
        for name in ("used", "free", "total")
    }
    assert values["total"] == num_blocks > 0
    assert values["used"] + values["free"] == num_blocks
    assert values["free"] > 0


def test_every_promised_span_and_attribute_is_exported(exported: list[ReadableSpan]) -> None:
    seen: dict[tuple[str, str], list[ReadableSpan]] = {}
    for span in exported:
        seen.setdefault((schema.base_name(span.name), span.kind.name), []).append(span)
    for key, attributes in promised_by_architecture().items():
        assert key in seen, f"no {key} span exported; got {sorted(seen)}"
        for span in seen[key]:
            missing = attributes - set(span.attributes or {})
            assert not missing, f"{key} span lacks {sorted(missing)}"


def test_worker_step_spans_carry_their_timings(exported: list[ReadableSpan]) -> None:
    steps = [
        s
        for s in exported
        if s.name == schema.STEP and s.kind == trace.SpanKind.SERVER and s.attributes
    ]
    assert steps
    assert all(s.attributes[schema.STEP_MS] > 0 for s in steps)  # type: ignore[index, operator]
    assert all(schema.DEVICE_MS in s.attributes for s in steps)  # type: ignore[operator]


def test_the_bench_label_is_on_each_request_root(exported: list[ReadableSpan]) -> None:
    roots = [s for s in exported if s.name == schema.LOADGEN_REQUEST]
    assert len(roots) == 3
    assert {s.attributes[schema.LABEL] for s in roots} == {"schema-test"}  # type: ignore[index]
