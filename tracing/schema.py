"""The one span schema: every span name and attribute key hopscope emits or reads back.

The services name their spans and attributes from here, and tracing/decompose.py reads them by
the same constants, so a rename cannot silently break the decomposition. ARCHITECTURE.md's span
table and docs/tracing.md describe these; `PROMISED` is what a test checks every real pipeline
exports (tests/unit/test_span_schema.py).
"""

from __future__ import annotations

# --------------------------------------------------------------------------- span names
LOADGEN_REQUEST = "loadgen.request"  # root span of one load-generator request
TOKENIZER_SERVICE = "hopscope.v1.Tokenizer"
SCHEDULER_SERVICE = "hopscope.v1.Scheduler"
WORKER_SERVICE = "hopscope.v1.Worker"
GENERATE = f"{TOKENIZER_SERVICE}/Generate"  # OTel's gRPC instrumentation prefixes a "/"
ENCODE = "tokenizer.encode"
SUBMIT_RPC = (SCHEDULER_SERVICE, "Submit")  # one request on the shared tokenizer->scheduler stream
STEP_RPC = (WORKER_SERVICE, "Step")  # one step on the scheduler->worker stream
SUBMIT = "/".join(SUBMIT_RPC)
STEP = "/".join(STEP_RPC)

# --------------------------------------------------------------------------- attributes
# OpenTelemetry RPC semantic conventions, on every hopscope hop span
RPC_SYSTEM = "rpc.system"  # "grpc" or "inproc"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
NETWORK_TRANSPORT = "network.transport"  # "inproc", "unix" or "tcp"
SERVER_ADDRESS = "server.address"

REQUEST_ID = "hopscope.request_id"
# The HTTP header hopscope's load generator names its requests with. Not `X-Request-Id`: that one
# is not free-form everywhere (llama-cpp-python's server answers a non-UUID one with HTTP 400).
REQUEST_ID_HEADER = "x-hopscope-request-id"
# loadgen.request
STATUS = "hopscope.status"  # the request's final status code name ("OK", "UNAVAILABLE", ...)
LABEL = "hopscope.label"  # `hopscope bench --label`
# Submit CLIENT (tokenizer)
DETOKENIZE_MS = "hopscope.detokenize_ms"
# Submit SERVER (scheduler)
QUEUE_MS = "hopscope.queue_ms"
PREFILL_MS = "hopscope.prefill_ms"
DECODE_MS = "hopscope.decode_ms"
NUM_PROMPT_TOKENS = "hopscope.num_prompt_tokens"
NUM_OUTPUT_TOKENS = "hopscope.num_output_tokens"
NUM_PREEMPTIONS = "hopscope.num_preemptions"
FINISH_REASON = "hopscope.finish_reason"
# Step CLIENT (scheduler)
NUM_PREFILL_LINKS = "hopscope.num_prefill_links"  # the first N links are the prefill requests
STEP_ID = "hopscope.step_id"
BATCH_SIZE = "hopscope.batch_size"
NUM_PREFILL_TOKENS = "hopscope.num_prefill_tokens"
NUM_DECODE_TOKENS = "hopscope.num_decode_tokens"
WORKER_STEP_MS = "hopscope.worker_step_ms"
# Step SERVER (worker)
STEP_MS = "hopscope.step_ms"
DEVICE_MS = "hopscope.device_ms"
# a link's phase when a reader keeps link attributes (derived from NUM_PREFILL_LINKS otherwise)
PHASE = "hopscope.phase"

# present only while a feature is in use (not in PROMISED): KV swap and worker replicas
SWAP_RPC = (WORKER_SERVICE, "Swap")  # INTERNAL, child of Step SERVER: one step's KV copies
SWAP = "/".join(SWAP_RPC)
SWAP_MS = "hopscope.swap_ms"
NUM_SWAP_OUT_BLOCKS = "hopscope.num_swap_out_blocks"
NUM_SWAP_IN_BLOCKS = "hopscope.num_swap_in_blocks"
REPLICA = "hopscope.replica"  # Submit SERVER: the worker replica the router chose
ROUTING = "hopscope.routing"  # the routing policy
ROUTING_CANDIDATES = "hopscope.routing_candidates"  # JSON: every candidate and its score
# Step CLIENT and SERVER of a multi-step run (--num-scheduler-steps): decode steps it ran
NUM_STEPS = "hopscope.num_steps"
# the KV hop (prefill/decode disaggregation): CLIENT on the destination worker, SERVER on the source
KV_TRANSFER = "hopscope.kv_transfer"
PULL_KV_RPC = (WORKER_SERVICE, "PullKV")
KV_BYTES = "hopscope.kv_bytes"
NUM_BLOCKS = "hopscope.num_blocks"
KV_TRANSPORT = "hopscope.kv_transport"  # "grpc" | "shm"
# the handoff of a disaggregated request, INTERNAL children of its Submit SERVER span (scheduler):
HANDOFF_WAIT = "hopscope.handoff_wait"  # prompt done on the prefill worker -> transfer started
HANDOFF_TRANSFER = "hopscope.handoff_transfer"  # ImportKV as the scheduler waited for it
HANDOFF_RESUME = "hopscope.handoff_resume"  # KV in the decode cache -> its first decode step sent
ROLE = "hopscope.role"  # a worker's role: "mixed" | "prefill" | "decode"

# resource attributes of every hopscope service: which deployment a span came from
RESOURCE_PLACEMENT = "hopscope.placement"
RESOURCE_MODEL = "hopscope.model"

RPC_ATTRIBUTES = (RPC_SYSTEM, RPC_SERVICE, RPC_METHOD, NETWORK_TRANSPORT)

# (span name, kind) -> the attributes every such span carries (ARCHITECTURE.md's span table)
PROMISED: dict[tuple[str, str], tuple[str, ...]] = {
    (LOADGEN_REQUEST, "INTERNAL"): (REQUEST_ID, LABEL, STATUS),
    (GENERATE, "CLIENT"): (),  # OpenTelemetry's gRPC instrumentation: its own attributes
    (GENERATE, "SERVER"): (),
    (ENCODE, "INTERNAL"): (REQUEST_ID,),
    (SUBMIT, "CLIENT"): (*RPC_ATTRIBUTES, REQUEST_ID, DETOKENIZE_MS, NUM_OUTPUT_TOKENS),
    (SUBMIT, "SERVER"): (
        *RPC_ATTRIBUTES,
        REQUEST_ID,
        QUEUE_MS,
        PREFILL_MS,
        DECODE_MS,
        NUM_PROMPT_TOKENS,
        NUM_OUTPUT_TOKENS,
        NUM_PREEMPTIONS,
        FINISH_REASON,
    ),
    (STEP, "CLIENT"): (
        *RPC_ATTRIBUTES,
        NUM_PREFILL_LINKS,
        BATCH_SIZE,
        NUM_PREFILL_TOKENS,
        NUM_DECODE_TOKENS,
        STEP_ID,
        WORKER_STEP_MS,
    ),
    (STEP, "SERVER"): (*RPC_ATTRIBUTES, BATCH_SIZE, STEP_MS, DEVICE_MS),
}


def base_name(span_name: str) -> str:
    """A span name without the leading "/" OTel's gRPC instrumentation adds."""
    return span_name.lstrip("/")
