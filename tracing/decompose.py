"""Per-request time decomposition from the spans in ARCHITECTURE.md's span table.

Network time of a hop is CLIENT duration − SERVER duration of the same call, each measured on its
own host's clock, so no clock synchronisation is needed. Step spans live in their own traces (one
step serves many requests) and point at the requests' Submit SERVER spans through links, so the
decomposition runs over all spans read, not trace by trace.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tracing import schema
from tracing.breakdown import (
    COMPONENTS,
    DECODE,
    DETOKENIZE,
    HANDOFF_WAIT,
    HTTP_FRONT_DOOR,
    KV_TRANSFER,
    NET_CLIENT_TOKENIZER,
    NET_SCHEDULER_WORKER,
    NET_TOKENIZER_SCHEDULER,
    OTHER,
    PREFILL,
    QUEUE,
    SUM_TOLERANCE,
    TOKENIZE,
    TPOT_COMPONENTS,
    RequestBreakdown,
    SpanIndex,
    StepCall,
    is_front_door,
    is_named,
)
from tracing.model import Span
from tracing.schema import ENCODE, GENERATE, LOADGEN_REQUEST, STEP, SUBMIT

# re-exported: callers import the components and the breakdown from here
__all__ = [
    "COMPONENTS",
    "DECODE",
    "DETOKENIZE",
    "ENCODE",
    "GENERATE",
    "HANDOFF_WAIT",
    "HTTP_FRONT_DOOR",
    "KV_TRANSFER",
    "LOADGEN_REQUEST",
    "NET_CLIENT_TOKENIZER",
    "NET_SCHEDULER_WORKER",
    "NET_TOKENIZER_SCHEDULER",
    "OTHER",
    "PREFILL",
    "QUEUE",
    "STEP",
    "SUBMIT",
    "SUM_TOLERANCE",
    "TOKENIZE",
    "TPOT_COMPONENTS",
    "RequestBreakdown",
    "SpanIndex",
]


def decompose(spans: Iterable[Span]) -> list[RequestBreakdown]:
    """One breakdown per request that reached the scheduler (a Submit SERVER span), and one
    per request a vLLM server traced (an `llm_request` span, tracing/vllm.py)."""
    from tracing.vllm import decompose_vllm

    index = SpanIndex(spans)
    submits = [s for s in index.spans if is_named(s, SUBMIT, "SERVER")]
    submits.sort(key=lambda span: span.start_ns)
    found = [_decompose_request(index, submit) for submit in submits]
    vllm = decompose_vllm(index)
    if vllm and found:
        return sorted(found + vllm, key=lambda b: b.start_unix_ns)
    return found or vllm


@dataclass(slots=True)
class _RequestSpans:
    submit_server: Span
    submit_client: Span | None = None
    generate_server: Span | None = None
    generate_client: Span | None = None
    loadgen: Span | None = None

    @property
    def root(self) -> Span:
        for span in (self.loadgen, self.generate_client, self.generate_server, self.submit_client):
            if span is not None:
                return span
        return self.submit_server


def _find_request_spans(index: SpanIndex, submit_server: Span) -> _RequestSpans:
    found = _RequestSpans(submit_server)
    chain = index.ancestors(submit_server)
    if not chain:
        # context may cross the shared stream as a link instead of a parent
        linked = [index.by_key.get((link.trace_id, link.span_id)) for link in submit_server.links]
        client = next((s for s in linked if s is not None and is_named(s, SUBMIT, "CLIENT")), None)
        chain = [client, *index.ancestors(client)] if client is not None else []
    for ancestor in chain:
        if is_named(ancestor, SUBMIT, "CLIENT") and found.submit_client is None:
            found.submit_client = ancestor
        elif is_front_door(ancestor, "SERVER") and found.generate_server is None:
            found.generate_server = ancestor
        elif is_front_door(ancestor, "CLIENT") and found.generate_client is None:
            found.generate_client = ancestor
        elif is_named(ancestor, LOADGEN_REQUEST) and found.loadgen is None:
            found.loadgen = ancestor
    return found


def _decompose_request(index: SpanIndex, submit_server: Span) -> RequestBreakdown:
    found = _find_request_spans(index, submit_server)
    root = found.root
    notes: list[str] = []
    calls = index.step_calls(submit_server)
    measured = _raw_components(index, found, calls, notes)
    unmeasured = [name for name in COMPONENTS if name in measured and measured[name] is None]
    raw = {name: value or 0.0 for name, value in measured.items()}
    clamped_ms = 0.0
    for name, value in raw.items():
        if value < 0:
            clamped_ms += -value
            notes.append(f"{name} was {value:.3f} ms, clamped to 0")
            raw[name] = 0.0
    e2e_ms = root.duration_ms
    other_ms = e2e_ms - sum(raw.values())
    if other_ms < 0:
        clamped_ms += -other_ms
        notes.append(f"components exceed e2e by {-other_ms:.3f} ms (overlapping spans)")
        other_ms = 0.0
    components = {name: raw.get(name, 0.0) for name in COMPONENTS if name != OTHER}
    components[OTHER] = other_ms
    breakdown = RequestBreakdown(
        trace_id=submit_server.trace_id,
        request_id=_request_id(found),
        e2e_ms=e2e_ms,
        components_ms=components,
        clamped_ms=clamped_ms,
        notes=notes,
        unmeasured=unmeasured,
        start_unix_ns=root.start_ns,
        label=str(found.loadgen.attributes.get(schema.LABEL, "")) if found.loadgen else "",
        deployment=_deployment(found),
    )
    _add_tpot(breakdown, calls, submit_server)
    return breakdown


def _raw_components(
    index: SpanIndex, found: _RequestSpans, calls: list[StepCall], notes: list[str]
) -> dict[str, float | None]:
    """Every component but `other`, possibly negative (clamped by the caller); None when no
    span measured it (e.g. the client hop of a caller that does not trace)."""
    server = found.submit_server
    raw: dict[str, float | None] = {
        QUEUE: _attr_ms(server, schema.QUEUE_MS),
        DETOKENIZE: _attr_ms(found.submit_client, schema.DETOKENIZE_MS),
        TOKENIZE: _tokenize_ms(index, found.generate_server),
        NET_CLIENT_TOKENIZER: _hop_ms(found.generate_client, found.generate_server),
        NET_TOKENIZER_SCHEDULER: _hop_ms(found.submit_client, server),
        # 0 without a handoff (a mixed worker): measured as nothing, not unmeasured
        KV_TRANSFER: _children_ms(index, server, (schema.HANDOFF_TRANSFER,)),
        HANDOFF_WAIT: _children_ms(index, server, (schema.HANDOFF_WAIT, schema.HANDOFF_RESUME)),
    }
    if calls:
        raw.update(_step_components(calls, notes))
    else:
        notes.append("no Worker/Step spans link to this request; compute from Submit attributes")
        raw[PREFILL] = _attr_ms(server, schema.PREFILL_MS)
        raw[DECODE] = _attr_ms(server, schema.DECODE_MS)
        raw[NET_SCHEDULER_WORKER] = None
    return raw


def _step_components(calls: list[StepCall], notes: list[str]) -> dict[str, float | None]:
    compute = {"prefill": 0.0, "decode": 0.0}
    network_ms = 0.0
    for call in calls:
        if call.server is None:
            notes.append(f"step {call.client.span_id} has no worker SERVER span")
            continue
        compute[call.phase if call.phase in compute else "decode"] += call.server.duration_ms
        network_ms += call.client.duration_ms - call.server.duration_ms
    return {
        PREFILL: compute["prefill"],
        DECODE: compute["decode"],
        NET_SCHEDULER_WORKER: network_ms,
    }


def _add_tpot(breakdown: RequestBreakdown, calls: list[StepCall], submit_server: Span) -> None:
    """TPOT = time after the first token / decode steps; what each decode step costs a token."""
    prefill = [c for c in calls if c.phase == "prefill"]
    decode = [c for c in calls if c.phase != "prefill" and c.server is not None]
    if not prefill or not decode:
        return
    first_token_ns = max(c.client.end_ns for c in prefill)
    num_steps = len(decode)
    tpot_ms = (submit_server.end_ns - first_token_ns) / 1e6 / num_steps
    compute_ms = sum(c.server.duration_ms for c in decode if c.server) / num_steps
    network_ms = sum(c.client.duration_ms - c.server.duration_ms for c in decode if c.server)
    network_ms = max(0.0, network_ms / num_steps)
    breakdown.tpot_ms = tpot_ms
    breakdown.tpot_components_ms = {
        DECODE: compute_ms,
        NET_SCHEDULER_WORKER: network_ms,
        OTHER: max(0.0, tpot_ms - compute_ms - network_ms),
    }


def _deployment(found: _RequestSpans) -> dict[str, str]:
    """Placement and model from the resources of the request's server-side spans (the first
    that names each; the client's own resource names neither)."""
    spans = [found.submit_server, found.submit_client, found.generate_server]
    deployment = {}
    for key, attribute in (
        ("placement", schema.RESOURCE_PLACEMENT),
        ("model", schema.RESOURCE_MODEL),
    ):
        values = [str(s.resource[attribute]) for s in spans if s and s.resource.get(attribute)]
        deployment[key] = values[0] if values else ""
    return deployment


def _children_ms(index: SpanIndex, span: Span, names: tuple[str, ...]) -> float:
    return sum(c.duration_ms for c in index.children[span.key] if c.name in names)


def _tokenize_ms(index: SpanIndex, generate_server: Span | None) -> float | None:
    if generate_server is None:
        return None
    encodes = [c for c in index.children[generate_server.key] if is_named(c, ENCODE)]
    return sum(c.duration_ms for c in encodes) if encodes else None


def _hop_ms(client: Span | None, server: Span | None) -> float | None:
    if client is None or server is None:
        return None
    return client.duration_ms - server.duration_ms


def _attr_ms(span: Span | None, key: str) -> float | None:
    if span is None or key not in span.attributes:
        return None
    try:
        return float(span.attributes[key])
    except (TypeError, ValueError):
        return None


def _request_id(found: _RequestSpans) -> str:
    for span in (found.submit_server, found.submit_client, found.generate_server, found.loadgen):
        if span is not None and schema.REQUEST_ID in span.attributes:
            return str(span.attributes[schema.REQUEST_ID])
    return ""
