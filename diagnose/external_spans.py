"""What an external server's own spans decide (diagnose/external.py calls it): vLLM's per-request
`llm_request` spans, decomposed by tracing/vllm.py into queue, prefill, decode and the
client→server hop, settle `scheduling` (queue share of E2E, per request rather than from
histogram means) and `network` (the hop per output token against TPOT). The step rules
(memory_io, compute, host_cpu, prefill_interference) need per-step spans, which vLLM's are not:
they stay not evaluated, each with what the spans lack."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from diagnose.rules import NETWORK_WIRE_SHARE, SCHEDULING_E2E_SHARE
from tracing.decompose import DECODE, NET_CLIENT_TOKENIZER, OTHER, PREFILL, QUEUE, RequestBreakdown

PER_REQUEST = (
    "the server's spans are per request ({source}: queue, prefill and decode totals), not per "
    "engine step: {lack}"
)
STEP_LACKS = {
    "memory_io": "the step-time fit that tells memory-bound from compute-bound steps needs each "
    "step's time and batch",
    "compute": "the step-time fit that tells memory-bound from compute-bound steps needs each "
    "step's time and batch",
    "host_cpu": "the scheduler's gaps between steps are not measured (they are inside "
    "prefill/decode; 'other' holds the API server ↔ engine hand-offs)",
    "prefill_interference": "which decode steps also carried prompt tokens is not recorded",
}


@dataclass(slots=True)
class SpanEvidence:
    note: str
    decomposition: dict[str, Any]
    findings: dict[str, dict[str, Any]] = field(default_factory=dict)  # rule -> finding
    not_evaluated: dict[str, str] = field(default_factory=dict)


def _ev(value: Any, unit: str) -> dict[str, Any]:
    return {"value": round(value, 4) if isinstance(value, float) else value, "unit": unit}


def measured_breakdowns(rounds: list[Path]) -> tuple[list[RequestBreakdown], dict[str, int]]:
    """The measured, successful requests' breakdowns of every round, and their output tokens."""
    from tracing.decompose import decompose
    from tracing.readers import TraceReadError, read_file

    breakdowns: list[RequestBreakdown] = []
    tokens: dict[str, int] = {}
    for round_dir in rounds:
        try:
            spans = read_file(round_dir / "spans.jsonl")
        except TraceReadError:
            continue
        measured = _measured_tokens(round_dir)
        breakdowns += [b for b in decompose(spans) if b.trace_id in measured]
        tokens |= measured
    return breakdowns, tokens


def _measured_tokens(round_dir: Path) -> dict[str, int]:
    """trace id -> output tokens of the round's measured, successful requests (its
    requests.jsonl, as bench.json names it; warm-up requests are not measured)."""
    try:
        bench = json.loads((round_dir / "bench.json").read_text(encoding="utf-8"))
        path = Path(str(bench.get("requests_file") or "requests.jsonl"))
        if not path.is_absolute() or not path.is_file():
            path = round_dir / path.name
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError):
        return {}
    rows = [json.loads(line) for line in lines if line.strip()]
    return {
        str(r["trace_id"]): int(r.get("n_out") or 0)
        for r in rows
        if r.get("status") == "OK" and r.get("is_measured", True) and r.get("trace_id")
    }


def span_evidence(
    rounds: list[Path], variant: str, tpot_p50_ms: float | None
) -> SpanEvidence | None:
    """None when the server exported no request span that the client's requests reached."""
    from tracing.summary import summarize

    breakdowns, tokens = measured_breakdowns(rounds)
    if not breakdowns:
        return None
    sources = sorted({b.source for b in breakdowns})
    summary = summarize(breakdowns)
    decomposition = {
        "source": ", ".join(sources),
        "requests": summary["requests"],
        "e2e": summary["e2e"],
        "components": {
            name: row for name, row in summary["components"].items() if row["mean_ms"] is not None
        },
        "not_measured": [n for n, row in summary["components"].items() if row["mean_ms"] is None],
        "tpot": {k: summary["tpot"][k] for k in ("requests", "mean_ms", "p50_ms")},
    }
    evidence = SpanEvidence(
        note=f"{variant}: {len(breakdowns)} requests decomposed from the server's own spans "
        f"({', '.join(sources)}; tracing/vllm.py for vLLM's llm_request)",
        decomposition=decomposition,
    )
    if (finding := _scheduling(breakdowns)) is not None:
        evidence.findings["scheduling"] = finding
    if (finding := _network(breakdowns, tokens, tpot_p50_ms)) is not None:
        evidence.findings["network"] = finding
    source = "vLLM's llm_request" if sources == ["vllm"] else "this server's request spans"
    for rule, lack in STEP_LACKS.items():
        evidence.not_evaluated[rule] = PER_REQUEST.format(source=source, lack=lack)
    engine_ms = sum(b.components_ms[PREFILL] + b.components_ms[DECODE] for b in breakdowns)
    total_ms = sum(b.e2e_ms for b in breakdowns)
    if total_ms > 0:
        share = engine_ms / total_ms
        for rule in ("memory_io", "compute"):
            evidence.not_evaluated[rule] += (
                f" (the engine's prefill + decode is {share:.0%} of E2E)"
            )
    other_ms = median(b.components_ms[OTHER] for b in breakdowns)
    evidence.not_evaluated["host_cpu"] += f" ('other' p50 {other_ms:.1f} ms per request)"
    return evidence


def _scheduling(breakdowns: list[RequestBreakdown]) -> dict[str, Any] | None:
    queued = [b for b in breakdowns if QUEUE not in b.unmeasured]
    total_ms = sum(b.e2e_ms for b in queued)
    if not queued or total_ms <= 0:
        return None
    share = min(1.0, sum(b.components_ms[QUEUE] for b in queued) / total_ms)
    queue_p50_ms = median(b.components_ms[QUEUE] for b in queued)
    return {
        "type": "scheduling",
        "score": round(share, 4),
        "is_fired": share >= SCHEDULING_E2E_SHARE,
        "symptom": f"requests wait {share:.0%} of their end-to-end time in the server's queue "
        f"before they are scheduled (queue p50 {queue_p50_ms:.1f} ms; the server's spans)",
        "evidence": {
            "queue_share_e2e": _ev(share, "share"),
            "queue_p50_ms": _ev(queue_p50_ms, "ms"),
            "requests": _ev(len(queued), "requests"),
            "threshold_share": _ev(SCHEDULING_E2E_SHARE, "share of E2E"),
        },
        "suggestions": [
            {
                "method": "more sequences per step",
                "switch": "--max-num-seqs",
                "expected_effect": "less queueing while the cores keep up; TPOT grows with "
                "the batch",
            }
        ],
    }


def _network(
    breakdowns: list[RequestBreakdown], tokens: dict[str, int], tpot_p50_ms: float | None
) -> dict[str, Any] | None:
    """The hop (client span − server span) per output token against TPOT: the hop holds the
    wire and the server's work outside its request span (HTTP, tokenization, the last SSE
    frames), so this is an upper bound on the wire's share."""
    per_token = [
        b.components_ms[NET_CLIENT_TOKENIZER] / tokens[b.trace_id]
        for b in breakdowns
        if NET_CLIENT_TOKENIZER not in b.unmeasured and tokens.get(b.trace_id)
    ]
    if not per_token or not tpot_p50_ms:
        return None
    hop_ms = median(per_token)
    share = min(1.0, hop_ms / tpot_p50_ms)
    hop_p50_ms = median(
        b.components_ms[NET_CLIENT_TOKENIZER]
        for b in breakdowns
        if NET_CLIENT_TOKENIZER not in b.unmeasured
    )
    return {
        "type": "network",
        "score": round(share, 4),
        "is_fired": share >= NETWORK_WIRE_SHARE,
        "symptom": f"the client→server hop is {share:.0%} of the time per output token "
        f"({hop_ms:.2f} ms per token, {hop_p50_ms:.1f} ms per request; an upper bound on the "
        "wire: it also holds the server's HTTP and tokenization outside its request span)",
        "evidence": {
            "hop_share_tpot": _ev(share, "share"),
            "hop_ms_per_token": _ev(hop_ms, "ms"),
            "hop_p50_ms": _ev(hop_p50_ms, "ms per request"),
            "tpot_p50_ms": _ev(float(tpot_p50_ms), "ms"),
            "threshold_share": _ev(NETWORK_WIRE_SHARE, "share of TPOT"),
        },
        "suggestions": [
            {
                "method": "a closer client or a faster link",
                "switch": "(deployment)",
                "expected_effect": "the hop shrinks; the server's time does not change",
            }
        ],
    }
