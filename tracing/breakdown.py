"""What a request's decomposition is made of, whoever's spans it came from (hopscope's,
tracing/decompose.py; vLLM's, tracing/vllm.py): the component names, the per-request
breakdown, and the parent/child and link index over every span read."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from tracing import schema
from tracing.model import Link, Span
from tracing.schema import GENERATE, STEP

# The HTTP front door's spans (OpenTelemetry's ASGI server span, the bench client's span) stand
# where Generate's CLIENT/SERVER pair stands for gRPC.
HTTP_FRONT_DOOR = ("POST /v1/completions", "POST /v1/chat/completions")

TOKENIZE = "tokenize"
QUEUE = "queue"
PREFILL = "compute.prefill"
DECODE = "compute.decode"
NET_CLIENT_TOKENIZER = "network.client_tokenizer"
NET_TOKENIZER_SCHEDULER = "network.tokenizer_scheduler"
NET_SCHEDULER_WORKER = "network.scheduler_worker"
DETOKENIZE = "detokenize"
# disaggregated placements: the KV hop prefill -> decode worker as the scheduler waited for it,
# and the dead time around it (prompt done -> transfer started, KV in place -> first decode step)
KV_TRANSFER = "kv_transfer"
HANDOFF_WAIT = "handoff_wait"
OTHER = "other"
COMPONENTS = (
    TOKENIZE,
    NET_CLIENT_TOKENIZER,
    NET_TOKENIZER_SCHEDULER,
    QUEUE,
    PREFILL,
    DECODE,
    NET_SCHEDULER_WORKER,
    KV_TRANSFER,
    HANDOFF_WAIT,
    DETOKENIZE,
    OTHER,
)
TPOT_COMPONENTS = (DECODE, NET_SCHEDULER_WORKER, OTHER)
SUM_TOLERANCE = 0.05  # components must add up to e2e within this share


@dataclass(slots=True)
class RequestBreakdown:
    """Where one request's end-to-end time went, in milliseconds."""

    trace_id: str
    request_id: str
    e2e_ms: float
    components_ms: dict[str, float]
    tpot_ms: float | None = None
    tpot_components_ms: dict[str, float] = field(default_factory=dict)
    clamped_ms: float = 0.0  # how much negative time was clamped to zero (overlap, jitter)
    notes: list[str] = field(default_factory=list)
    # components no span measured for this request (counted 0 in components_ms; shown "n/a")
    unmeasured: list[str] = field(default_factory=list)
    start_unix_ns: int = 0  # when the request's root span started
    label: str = ""  # `hopscope bench --label` of the run that sent it ("" when unknown)
    source: str = "hopscope"  # whose spans: "hopscope", or "vllm" (tracing/vllm.py)
    # {"placement", "model"} from the spans' resources: summaries never pool across these
    deployment: dict[str, str] = field(default_factory=dict)

    @property
    def is_sum_within_tolerance(self) -> bool:
        total = sum(self.components_ms.values())
        return abs(total - self.e2e_ms) <= SUM_TOLERANCE * self.e2e_ms


@dataclass(slots=True)
class StepCall:
    client: Span
    server: Span | None
    phase: str


def is_front_door(span: Span, kind: str) -> bool:
    return span.kind == kind and (is_named(span, GENERATE) or span.name in HTTP_FRONT_DOOR)


def is_named(span: Span, name: str, kind: str | None = None) -> bool:
    # OTel's gRPC instrumentation names spans "/pkg.Service/Method"; ours omit the slash
    return schema.base_name(span.name) == name and (kind is None or span.kind == kind)


class SpanIndex:
    """Parent/child and link lookups over every span read."""

    def __init__(self, spans: Iterable[Span]) -> None:
        self.spans = list(spans)
        self.by_key = {span.key: span for span in self.spans}
        self.children: dict[tuple[str, str], list[Span]] = defaultdict(list)
        self.linked_from: dict[tuple[str, str], list[tuple[Span, Link]]] = defaultdict(list)
        for span in self.spans:
            if span.parent_key is not None:
                self.children[span.parent_key].append(span)
            num_prefill = span.attributes.get(schema.NUM_PREFILL_LINKS)
            for position, link in enumerate(span.links):
                if isinstance(num_prefill, int) and schema.PHASE not in link.attributes:
                    # a step span lists its prefill links first and says how many there are
                    phase = "prefill" if position < num_prefill else "decode"
                    link = Link(
                        link.trace_id, link.span_id, {**link.attributes, schema.PHASE: phase}
                    )
                self.linked_from[(link.trace_id, link.span_id)].append((span, link))

    def parent(self, span: Span) -> Span | None:
        return self.by_key.get(span.parent_key) if span.parent_key else None

    def ancestors(self, span: Span) -> list[Span]:
        chain: list[Span] = []
        seen = {span.key}
        parent = self.parent(span)
        while parent is not None and parent.key not in seen:  # guard against cycles
            chain.append(parent)
            seen.add(parent.key)
            parent = self.parent(parent)
        return chain

    def child(self, span: Span, name: str, kind: str | None = None) -> Span | None:
        return next((c for c in self.children[span.key] if is_named(c, name, kind)), None)

    def step_calls(self, submit_server: Span) -> list[StepCall]:
        """Worker/Step calls whose CLIENT span links to this request, in time order."""
        pairs = [
            (client, link)
            for client, link in self.linked_from[submit_server.key]
            if is_named(client, STEP, "CLIENT")
        ]
        pairs.sort(key=lambda pair: pair[0].start_ns)
        calls = []
        for position, (client, link) in enumerate(pairs):
            # Jaeger's UI format drops link attributes: the first step is then the prefill
            default_phase = "prefill" if position == 0 else "decode"
            phase = str(link.attributes.get(schema.PHASE, default_phase))
            calls.append(StepCall(client, self.child(client, STEP, "SERVER"), phase))
        return calls
