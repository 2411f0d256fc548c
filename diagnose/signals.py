"""The measured signals every rule reads, extracted once from a run's spans, bench summary,
Describe, CPU accounting and metrics. Rules never look at raw spans: tests build `Signals` by
hand, and the same numbers are what diagnosis.json shows as evidence."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from diagnose.hotspots import hot_functions
from diagnose.inputs import RunInputs
from diagnose.kv import kv_pressure_from_spans
from diagnose.links import HopLink, scheduler_worker_link
from diagnose.steps import (
    CycleBreakdown,
    StepFit,
    cycle_breakdown,
    fit_decode_cycle,
    fit_step_time,
    step_samples,
)
from tracing.decompose import (
    NET_CLIENT_TOKENIZER,
    NET_TOKENIZER_SCHEDULER,
    QUEUE,
    SUBMIT,
    SpanIndex,
    decompose,
)
from tracing.summary import percentile


@dataclass(slots=True)
class Signals:
    """Medians and means of one run (all rounds pooled); times in ms."""

    num_requests: int
    e2e_p50_ms: float
    ttft_p50_ms: float
    tpot_p50_ms: float
    output_tok_s: float
    queue_p50_ms: float
    queue_share_e2e: float  # sum of queue time / sum of e2e
    queue_share_ttft: float  # sum of queue time / sum of TTFT (from spans: submit -> 1st token)
    cycle: CycleBreakdown | None  # mean decode-step cycle at the scheduler
    fit: StepFit | None  # engine step_ms = a + b * tokens
    link: HopLink  # scheduler -> worker: transport, emulated delay and rate
    edge_hop_ms: dict[str, float] = field(default_factory=dict)  # other hops, mean per request
    edge_transport: dict[str, str] = field(default_factory=dict)
    mean_output_tokens: float = 0.0
    is_output_len_uniform: bool = False  # every request produced as many tokens
    steps_to_first_token_p50: float = 1.0  # scheduler steps from arrival to the first token
    decode_steps_per_token: float = 1.0
    mean_steps_per_request: float = 0.0
    is_closed_loop: bool = True
    cpu_us_per_token: dict[str, float] = field(default_factory=dict)
    kv_usage: float | None = None  # peak share of KV blocks in use, when known
    num_preemptions: int | None = None
    device: str = "cpu"
    hot_functions: dict[str, list[str]] = field(default_factory=dict)  # service -> top self time
    steps_per_run: int = 1  # the longest multi-step run seen (--num-scheduler-steps in use)
    # prefills sharing decode steps (prefill_interference): mean engine ms of the decode steps
    # that also carried prompt tokens, their share of the decode steps, their prompt tokens
    mixed_step_ms: float | None = None
    mixed_step_share: float = 0.0
    mixed_step_prefill_tokens: float = 0.0
    max_num_batched_tokens: int | None = None  # the prefill chunk budget, when Describe says
    notes: list[str] = field(default_factory=list)
    # the time budget's whole and segments (diagnose/budget.py): the mean request's E2E and the
    # mean ms of each decomposition component per request (tracing/decompose.py), over the same
    # measured requests as the report's component bar
    e2e_mean_ms: float = 0.0
    components_mean_ms: dict[str, float] = field(default_factory=dict)
    step_calls_per_request: float = 0.0  # Worker/Step calls a request was in (prefill + decode)
    decode_calls_per_request: float = 0.0  # ... of them decode steps
    concurrency: int | None = None  # the closed loop's requests in flight (bench --concurrency)
    contention: dict[str, Any] | None = None  # RunInputs.contention(): cpu.json's, pooled
    settings: dict[str, Any] = field(default_factory=dict)  # settings_of(run)
    figures_from_summary: bool = False  # TPOT / TTFT / E2E / tok/s are summary.json's
    # the whole decode cycle_ms = c + d * batch size, where batch sizes differ (fit_decode_cycle)
    cycle_fit: StepFit | None = None


def extract(run: RunInputs) -> Signals:
    breakdowns = decompose(run.spans)
    if run.measured_trace_ids:  # the requests summary.json measures: warm-up ones left out
        measured = [b for b in breakdowns if b.trace_id in run.measured_trace_ids]
        breakdowns = measured or breakdowns
    if not breakdowns:
        raise ValueError(
            f"{run.label}: no request spans (Scheduler/Submit SERVER) — was tracing on? "
            "Serve and bench with HOPSCOPE_TRACE_FILE or OTEL_EXPORTER_OTLP_ENDPOINT set."
        )
    samples = step_samples(run.spans)
    index = SpanIndex(run.spans)
    starts_ns = [s.start_ns for s in samples]
    ttfts, first_steps, decode_ratios, steps_per_request, n_out = _per_request(index, starts_ns)
    queue = [b.components_ms[QUEUE] for b in breakdowns]
    e2e = [b.e2e_ms for b in breakdowns]
    bench_summary = _figures(run)
    tpot_spans = [b.tpot_ms for b in breakdowns if b.tpot_ms is not None]
    signals = Signals(
        num_requests=len(breakdowns),
        e2e_p50_ms=_bench_p50(bench_summary, "e2e_ms", e2e),
        ttft_p50_ms=_bench_p50(bench_summary, "ttft_ms", ttfts),
        tpot_p50_ms=_bench_p50(bench_summary, "tpot_ms", tpot_spans),
        output_tok_s=float(bench_summary.get("output_token_throughput", 0.0)),
        queue_p50_ms=percentile(queue, 50),
        queue_share_e2e=sum(queue) / sum(e2e) if sum(e2e) > 0 else 0.0,
        queue_share_ttft=min(1.0, sum(queue) / sum(ttfts)) if sum(ttfts) > 0 else 0.0,
        cycle=cycle_breakdown(samples),
        fit=fit_step_time(samples),
        cycle_fit=fit_decode_cycle(samples),
        link=scheduler_worker_link(run.describe, samples),
        edge_hop_ms={
            name: sum(b.components_ms.get(name, 0.0) for b in breakdowns) / len(breakdowns)
            for name in (NET_CLIENT_TOKENIZER, NET_TOKENIZER_SCHEDULER)
        },
        edge_transport=_edge_transports(run.describe),
        mean_output_tokens=sum(n_out) / len(n_out) if n_out else 0.0,
        is_output_len_uniform=bool(n_out) and min(n_out) == max(n_out),
        steps_to_first_token_p50=median(first_steps) if first_steps else 1.0,
        decode_steps_per_token=median(decode_ratios) if decode_ratios else 1.0,
        mean_steps_per_request=sum(steps_per_request) / len(steps_per_request)
        if steps_per_request
        else 0.0,
        is_closed_loop=bool((run.bench or {}).get("config", {}).get("concurrency")),
        cpu_us_per_token=run.cpu_us_per_token(),
        device=_device(run.describe),
        hot_functions=hot_functions(run.profile_dir),
        steps_per_run=max((s.num_steps for s in samples), default=1),
    )
    signals.kv_usage, signals.num_preemptions = _kv_pressure(run, index)
    _add_budget_inputs(signals, breakdowns, index)
    concurrency = (run.bench or {}).get("config", {}).get("concurrency")
    if isinstance(concurrency, list):
        concurrency = concurrency[0] if concurrency else None
    signals.concurrency = int(concurrency) if concurrency else None
    signals.contention = run.contention()
    signals.settings = settings_of(run)
    signals.figures_from_summary = bool(run.figures)
    decoding = [s for s in samples if s.num_decode_tokens > 0]
    mixed = [s for s in decoding if s.num_prefill_tokens > 0]
    if mixed:
        signals.mixed_step_ms = sum(s.engine_ms for s in mixed) / len(mixed)
        signals.mixed_step_share = len(mixed) / len(decoding)
        signals.mixed_step_prefill_tokens = sum(s.num_prefill_tokens for s in mixed) / len(mixed)
    if not run.bench:
        signals.notes.append("no bench summary: latencies are the server-side spans' figures")
    return signals


def _figures(run: RunInputs) -> dict[str, Any]:
    """TPOT / TTFT / E2E p50 and tokens/s as summary.json defines them (pooled over every round's
    measured requests; tokens/s the mean over rounds) when the run is an experiment variant;
    the bench summary's otherwise."""
    if run.figures:
        m = run.figures
        figures: dict[str, Any] = {k: m[k] for k in ("ttft_ms", "tpot_ms", "e2e_ms") if k in m}
        if m.get("output_tok_s") is not None:
            figures["output_token_throughput"] = m["output_tok_s"]
        return figures
    return dict((run.bench or {}).get("summary", {}))


def _add_budget_inputs(signals: Signals, breakdowns: list[Any], index: SpanIndex) -> None:
    n = len(breakdowns)
    signals.e2e_mean_ms = sum(b.e2e_ms for b in breakdowns) / n
    totals: dict[str, float] = {}
    for b in breakdowns:
        for name, ms in b.components_ms.items():
            totals[name] = totals.get(name, 0.0) + ms
    signals.components_mean_ms = {name: ms / n for name, ms in totals.items()}
    wanted = {b.trace_id for b in breakdowns}
    calls, decode_calls, count = 0, 0, 0
    for submit in index.spans:
        if submit.name.lstrip("/") != SUBMIT or submit.kind != "SERVER":
            continue
        if submit.trace_id not in wanted:
            continue
        steps = index.step_calls(submit)
        calls += len(steps)
        decode_calls += sum(1 for c in steps if c.phase != "prefill")
        count += 1
    if count:
        signals.step_calls_per_request = calls / count
        signals.decode_calls_per_request = decode_calls / count


def settings_of(run: RunInputs) -> dict[str, Any]:
    """The settings in force: an experiment variant's resolved serve flags, else what Describe
    (beside the bench file, or recorded in it) tells: placement, batching, model, dtype, device."""
    settings: dict[str, Any] = dict(run.deployment or {})
    describe = run.describe or {}
    model = describe.get("model") or {}
    settings.setdefault("placement", describe.get("placement"))
    settings.setdefault("batching", describe.get("batching"))
    settings.setdefault("model", model.get("name"))
    if not settings.get("dtype"):
        settings["dtype"] = model.get("dtype") or "float32"
    settings.setdefault("device", model.get("device") or "cpu")
    return {k: v for k, v in settings.items() if v is not None}


def _per_request(
    index: SpanIndex, step_starts_ns: list[int]
) -> tuple[list[float], list[int], list[float], list[int], list[int]]:
    """Per request: TTFT at the scheduler, steps until its first token, decode steps per output
    token, scheduler steps during its life, output tokens."""
    ttfts: list[float] = []
    ratios: list[float] = []
    first_steps: list[int] = []
    lifetimes: list[int] = []
    n_out: list[int] = []
    for submit in index.spans:
        if submit.name.lstrip("/") != SUBMIT or submit.kind != "SERVER":
            continue
        calls = index.step_calls(submit)
        prefill = [c for c in calls if c.phase == "prefill"]
        num_out = int(submit.attributes.get("hopscope.num_output_tokens", 0) or 0)
        if num_out:
            n_out.append(num_out)
        if not prefill:
            continue
        first_token_ns = max(c.client.end_ns for c in prefill)
        ttfts.append((first_token_ns - submit.start_ns) / 1e6)
        lo = bisect.bisect_left(step_starts_ns, submit.start_ns)
        first_steps.append(bisect.bisect_right(step_starts_ns, first_token_ns) - lo)
        lifetimes.append(bisect.bisect_right(step_starts_ns, submit.end_ns) - lo)
        num_decode = len(calls) - len(prefill)
        if num_out >= 2 and num_decode > 0:
            ratios.append(num_decode / (num_out - 1))
    return ttfts, first_steps, ratios, lifetimes, n_out


def interference_ms_per_token(s: Signals) -> float:
    """What prefills sharing decode steps add per output token, from the steps: each decode step
    that carried prompt tokens took (mixed step − decode-only step) longer for every sequence in
    it, and such steps are `mixed_step_share` of the decode steps (means over the run's steps);
    0 when no decode step carried a prefill. Stalls outside the engine are not counted."""
    if s.cycle is None or not s.mixed_step_share or s.mixed_step_ms is None:
        return 0.0
    extra_ms = max(0.0, s.mixed_step_ms - s.cycle.engine_ms)
    return s.mixed_step_share * extra_ms * s.decode_steps_per_token


def _kv_pressure(run: RunInputs, index: SpanIndex) -> tuple[float | None, int | None]:
    """Metrics when the scheduler exports a preemption counter; the spans otherwise."""
    usage, preemptions = run.kv_pressure()
    if preemptions is not None:
        return usage, preemptions
    model = (run.describe or {}).get("model") or {}
    num_blocks = int(model.get("num_blocks", model.get("numBlocks", 0)) or 0)
    block_size = int(model.get("block_size", model.get("blockSize", 0)) or 0)
    return kv_pressure_from_spans(index, num_blocks, block_size)


def _bench_p50(summary: dict[str, Any], key: str, fallback: list[float]) -> float:
    stats = summary.get(key)
    if isinstance(stats, dict) and stats.get("p50") is not None:
        return float(stats["p50"])
    return percentile(fallback, 50)


def _edge_transports(describe: dict[str, Any] | None) -> dict[str, str]:
    names = {
        ("tokenizer", "scheduler"): NET_TOKENIZER_SCHEDULER,
        ("scheduler", "worker"): "network.scheduler_worker",
    }
    result = {NET_CLIENT_TOKENIZER: "tcp"}  # clients reach the front door over TCP
    for edge in (describe or {}).get("edges", []):
        name = names.get((edge.get("from"), edge.get("to")))
        if name:
            result[name] = str(edge.get("transport", ""))
    return result


def _device(describe: dict[str, Any] | None) -> str:
    return str(((describe or {}).get("model") or {}).get("device") or "cpu")
