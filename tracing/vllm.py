"""vLLM's own spans as hopscope's decomposition (`vllm serve --otlp-traces-endpoint`).

vLLM ends one SERVER span per request, `llm_request`, when the request finishes. It starts at
the request's arrival in the engine client (after the OpenAI layer parsed and tokenized the
prompt) and carries the engine's own intervals as `gen_ai.latency.*` attributes, in seconds:
time in queue (queued → scheduled), prefill (scheduled → first token), decode (first → last
token), inference (scheduled → last token), TTFT and e2e. Its parent is the W3C context the
caller sent, so under `hopscope bench` it is a child of the bench's `POST /v1/...` CLIENT span,
and the client→server hop is that CLIENT span − `llm_request`, as for every hopscope hop.
vLLM builds with the lifecycle spans of vllm-project/vllm#44402 (`vllm_queue`, `vllm_prefill`,
`vllm_decode`, `vllm_async_kv_transfer`, children of `llm_request`) measure the same phases as
spans; where they are present their durations are used instead of the attributes.

What vLLM's spans do not split out (tokenization, the API server ↔ engine core IPC,
detokenization, per-step compute) is not guessed: those components are `n/a`, and the time they
take lands in `other` (between arrival and queueing, and after the last token) or in the hop
(before arrival: HTTP parsing and tokenization; after the span: the last SSE frames).
"""

from __future__ import annotations

from tracing import schema
from tracing.breakdown import (
    COMPONENTS,
    DECODE,
    HTTP_FRONT_DOOR,
    KV_TRANSFER,
    NET_CLIENT_TOKENIZER,
    OTHER,
    PREFILL,
    QUEUE,
    RequestBreakdown,
    SpanIndex,
)
from tracing.model import Span

SOURCE = "vllm"
LLM_REQUEST = "llm_request"
# gen_ai.* attribute keys vLLM sets on llm_request (vllm/tracing.py SpanAttributes), seconds
TIME_IN_QUEUE_S = "gen_ai.latency.time_in_queue"
TTFT_S = "gen_ai.latency.time_to_first_token"
E2E_S = "gen_ai.latency.e2e"
PREFILL_S = "gen_ai.latency.time_in_model_prefill"
DECODE_S = "gen_ai.latency.time_in_model_decode"
INFERENCE_S = "gen_ai.latency.time_in_model_inference"
PROMPT_TOKENS = "gen_ai.usage.prompt_tokens"
COMPLETION_TOKENS = "gen_ai.usage.completion_tokens"
REQUEST_ID = "gen_ai.request.id"
RESPONSE_MODEL = "gen_ai.response.model"
REQUEST_MODEL = "gen_ai.request.model"  # on the bench's CLIENT span
# PR #44402's lifecycle spans -> the component each one measures
LIFECYCLE_SPANS = {
    "vllm_queue": QUEUE,
    "vllm_prefill": PREFILL,
    "vllm_decode": DECODE,
    "vllm_async_kv_transfer": KV_TRANSFER,
}
ATTRIBUTE_COMPONENTS = {QUEUE: TIME_IN_QUEUE_S, PREFILL: PREFILL_S, DECODE: DECODE_S}


def is_llm_request(span: Span) -> bool:
    return span.name == LLM_REQUEST


def decompose_vllm(index: SpanIndex) -> list[RequestBreakdown]:
    """One breakdown per `llm_request` span, in arrival order."""
    requests = sorted((s for s in index.spans if is_llm_request(s)), key=lambda s: s.start_ns)
    return [_breakdown(index, span) for span in requests]


def _seconds_ms(span: Span, key: str) -> float | None:
    value = span.attributes.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) * 1e3


def _breakdown(index: SpanIndex, server: Span) -> RequestBreakdown:
    chain = index.ancestors(server)
    client = next((s for s in chain if s.kind == "CLIENT" and s.name in HTTP_FRONT_DOOR), None)
    loadgen = next((s for s in chain if s.name == schema.LOADGEN_REQUEST), None)
    root = loadgen or client or server
    notes: list[str] = []
    measured: dict[str, float | None] = {
        name: _seconds_ms(server, key) for name, key in ATTRIBUTE_COMPONENTS.items()
    }
    lifecycle = [c for c in index.children[server.key] if c.name in LIFECYCLE_SPANS]
    for component in {LIFECYCLE_SPANS[span.name] for span in lifecycle}:
        # summed: a preempted request is queued and prefilled again
        spans = [s for s in lifecycle if LIFECYCLE_SPANS[s.name] == component]
        measured[component] = sum(s.duration_ms for s in spans)
    if lifecycle:
        notes.append("queue/prefill/decode from vLLM's lifecycle spans")
    measured[NET_CLIENT_TOKENIZER] = (
        client.duration_ms - server.duration_ms if client is not None else None
    )
    return _assemble(server, client, root, measured, notes, loadgen)


def _assemble(
    server: Span,
    client: Span | None,
    root: Span,
    measured: dict[str, float | None],
    notes: list[str],
    loadgen: Span | None,
) -> RequestBreakdown:
    unmeasured = [n for n in COMPONENTS if n != OTHER and measured.get(n) is None]
    components = {n: 0.0 for n in COMPONENTS}
    clamped_ms = 0.0
    for name, value in measured.items():
        if value is None:
            continue
        if value < 0:
            clamped_ms += -value
            notes.append(f"{name} was {value:.3f} ms, clamped to 0")
            value = 0.0
        components[name] = value
    e2e_ms = root.duration_ms
    other_ms = e2e_ms - sum(components.values())
    if other_ms < 0:
        clamped_ms += -other_ms
        notes.append(f"components exceed e2e by {-other_ms:.3f} ms (overlapping spans)")
        other_ms = 0.0
    components[OTHER] = other_ms
    breakdown = RequestBreakdown(
        trace_id=server.trace_id,
        request_id=str(server.attributes.get(REQUEST_ID, "")),
        e2e_ms=e2e_ms,
        components_ms=components,
        clamped_ms=clamped_ms,
        notes=notes,
        unmeasured=unmeasured,
        start_unix_ns=root.start_ns,
        label=str(loadgen.attributes.get(schema.LABEL, "")) if loadgen else "",
        source=SOURCE,
        deployment=deployment_of(server, client),
    )
    _add_tpot(breakdown, server)
    return breakdown


def _add_tpot(breakdown: RequestBreakdown, server: Span) -> None:
    """TPOT = decode time / (completion tokens − 1): vLLM's spans have no per-step split, so
    the whole of it is `compute.decode` (the engine's own time, its steps' overheads included)."""
    tokens = server.attributes.get(COMPLETION_TOKENS)
    decode_ms = breakdown.components_ms[DECODE]
    if not isinstance(tokens, int) or tokens < 2 or DECODE in breakdown.unmeasured:
        return
    breakdown.tpot_ms = decode_ms / (tokens - 1)
    # only decode: the other TPOT components are n/a (absent), not 0
    breakdown.tpot_components_ms = {DECODE: breakdown.tpot_ms}


def deployment_of(server: Span, client: Span | None) -> dict[str, str]:
    """A vLLM deployment: "vllm" and the model it served (vLLM's span does not name it; the
    bench's CLIENT span names the model it asked for)."""
    model = (
        server.attributes.get(RESPONSE_MODEL)
        or server.resource.get(schema.RESOURCE_MODEL)
        or (client.attributes.get(REQUEST_MODEL) if client is not None else "")
    )
    return {"placement": SOURCE, "model": str(model or "")}
