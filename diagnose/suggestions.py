"""What to try next for each bottleneck type: the improvement method, the hopscope switch that
applies it, and the effect to expect (numbers from this run's signals where they exist)."""

from __future__ import annotations

from diagnose.signals import Signals


def _s(method: str, switch: str, expected_effect: str) -> dict[str, str]:
    return {"method": method, "switch": switch, "expected_effect": expected_effect}


def suggestions_for(kind: str, s: Signals) -> list[dict[str, str]]:
    return _TABLE[kind](s)


def _scheduling(s: Signals) -> list[dict[str, str]]:
    wait = f"up to {s.queue_p50_ms:.0f} ms of queue time (p50) per request"
    return [
        _s("larger batch", "--max-num-seqs N (and --max-num-batched-tokens)", f"removes {wait}"),
        _s("continuous batching", "--batching continuous", "new requests join the next step"),
        _s(
            "fewer requests in flight / admission control",
            "--max-queue-len, or a lower client concurrency",
            "shorter TTFT for the admitted requests; the rest are refused at once",
        ),
        _s(
            "overlapped (stream) scheduling",
            "--async-scheduling on",
            "the next step is prepared while the worker runs this one",
        ),
    ]


def _network(s: Signals) -> list[dict[str, str]]:
    return [
        _s(
            "co-location",
            "--placement colocated (or a placement YAML with scheduler and worker on one node)",
            "the link's wire time per step drops to a Unix-socket round trip "
            "(see what_if.placements)",
        ),
        _s(
            "efficient gRPC",
            "one bidi stream per connection (already); --step-encoding delta (the default); "
            "--num-scheduler-steps N",
            "fewer bytes per step over a rate-limited link, and one round trip for N decode steps",
        ),
        _s(
            "coalescing",
            "--stream-interval N",
            "fewer front-door messages per token when a client falls behind",
        ),
    ]


def _memory_io(s: Signals) -> list[dict[str, str]]:
    return [
        _s(
            "batch more sequences per weight read",
            "--max-num-seqs N, higher client concurrency",
            "the fixed part of the step is shared by more tokens: tokens/s grows ~linearly "
            "until the per-token part dominates",
        ),
        _s("efficient KV cache", "--kv-cache-mb, block size, prefix caching", "fewer preemptions"),
        _s("lower precision", "--dtype bfloat16 / float16 (GPU)", "half the bytes read per step"),
    ]


def _compute(s: Signals) -> list[dict[str, str]]:
    return [
        _s(
            "kernel fusion",
            "--kernels native; --cuda-graphs on / --compile on a GPU",
            "shorter steps",
        ),
        _s("lower precision", "--dtype bfloat16 / float16 (GPU)", "faster matrix multiplies"),
        _s(
            "smaller token budget per step",
            "--max-num-batched-tokens",
            "prefill chunks stop stretching decode steps (better TPOT, worse TTFT)",
        ),
    ]


def _host_cpu(s: Signals) -> list[dict[str, str]]:
    steps = 4 if s.steps_per_run < 4 else 2 * s.steps_per_run
    now = f" (runs of {s.steps_per_run} now)" if s.steps_per_run > 1 else ""
    return [
        _s(
            "fewer messages per token (multi-step decoding)",
            f"--num-scheduler-steps {steps}",
            f"decode steps run {steps} to a worker round trip{now} and their tokens travel "
            "together: at 4 (from 1) scheduler, front-door and client CPU per token fell by "
            f"roughly half on 2 cores (benchmarks/README.md); tokens arrive {steps} at a time",
        ),
        _s(
            "fewer front-door messages per token",
            "--stream-interval N",
            "less front-door and client CPU per token; the first token still goes at once",
        ),
        _s(
            "leave cores to the services",
            "--engine-threads N (fewer than the cores)",
            "the engine's OpenMP threads stop contending with the tokenizer, scheduler and "
            "clients on a small machine",
        ),
        _s(
            "cheaper (de)serialization",
            "--step-encoding delta (the default; packed arrays, block tables as deltas)",
            "fewer bytes and protobuf objects per step message on both ends",
        ),
        _s(
            "overlapped (stream) scheduling",
            "--async-scheduling on",
            "hides the scheduler's gap between steps behind the next step (when a core is free)",
        ),
        _s(
            "find the hot code",
            "hopscope profile --address ADDR --seconds 10 --out DIR",
            "flame graphs per service show which functions cost the CPU",
        ),
    ]


def _prefill_interference(s: Signals) -> list[dict[str, str]]:
    from diagnose.signals import interference_ms_per_token

    extra = interference_ms_per_token(s)
    chunk = max(16, int(s.mixed_step_prefill_tokens // 2)) if s.mixed_step_prefill_tokens else 256
    return [
        _s(
            "smaller prefill chunks (chunked prefill size)",
            f"--max-num-batched-tokens {chunk} (mixed steps carry "
            f"{s.mixed_step_prefill_tokens:.0f} prompt tokens now)",
            f"each decode step shares at most {chunk} prompt tokens: less of the {extra:.2f} ms "
            "per output token that prefills add, at the cost of more steps to the first token",
        ),
        _s(
            "prefill/decode disaggregation",
            "--placement disagg (one node) or --placement disagg-split (nodes apart)",
            f"decode steps carry no prompt tokens: up to {extra:.2f} ms less per output token, "
            "minus the KV hop and handoff per request (see `disaggregation` in diagnosis.json "
            "for the prediction)",
        ),
    ]


_TABLE = {
    "prefill_interference": _prefill_interference,
    "scheduling": _scheduling,
    "network": _network,
    "memory_io": _memory_io,
    "compute": _compute,
    "host_cpu": _host_cpu,
}
