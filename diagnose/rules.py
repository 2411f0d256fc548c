"""The rules: one per bottleneck type, each a test on measured signals with a written-down
threshold (docs/diagnosis.md gives the reason for each). A rule always returns its finding and
says whether it fired; its score is its type's share of the mean request's E2E (the one time
budget, diagnose/budget.py), so scores compare across types, and the verdict names the largest."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diagnose.budget import UNATTRIBUTED, Budget, contention_parts, time_budget
from diagnose.network import HopSplit, wait_ms_per_token, wire_ms_per_token
from diagnose.signals import Signals, interference_ms_per_token
from diagnose.suggestions import oversubscribed_by, suggestions_for

TYPES = (
    "memory_io",
    "compute",
    "scheduling",
    "network",
    "host_cpu",
    "prefill_interference",
    "contention",
)

# Thresholds (docs/diagnosis.md, "Rules")
SCHEDULING_E2E_SHARE = 0.25  # queue time / E2E
SCHEDULING_TTFT_SHARE = 0.50  # queue time / TTFT ...
SCHEDULING_MIN_QUEUE_CYCLES = 2.0  # ... and the queue p50 is longer than this many step cycles
NETWORK_WIRE_SHARE = 0.20  # wire time / time per output token
ENGINE_SHARE = 0.40  # engine step time / time per output token
KV_USAGE_SHARE = 0.90  # KV blocks in use / all blocks
HOST_SHARE = 0.25  # (scheduler gap + worker overhead + hop wait) / time per output token
INTERFERENCE_SHARE = 0.20  # prefill time in decode steps per output token / TPOT
HOST_CPU_RATIO = 1.0  # services' CPU per token outside the engine / the worker's
CONTENTION_WAIT_SHARE = 0.25  # run-queue wait / (wait + CPU) of the services' processes
_SERVICES = ("tokenizer", "scheduler", "worker")


@dataclass(slots=True)
class Finding:
    type: str
    trigger: float  # the share the rule's threshold tests (of TPOT, or of E2E for scheduling)
    symptom: str
    evidence: dict[str, dict[str, Any]]
    is_fired: bool
    score: float = 0.0  # the type's share of the mean request's E2E: set by evaluate()
    suggestions: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "score": round(min(1.0, max(0.0, self.score)), 4),
            "symptom": self.symptom,
            "evidence": self.evidence,
            "suggestions": self.suggestions,
        }


def _ev(value: float | str | None, unit: str) -> dict[str, Any]:
    if isinstance(value, float):
        value = round(value, 4)
    return {"value": value, "unit": unit}


def _share(part_ms: float, whole_ms: float) -> float:
    return min(1.0, part_ms / whole_ms) if whole_ms > 0 else 0.0


def scheduling(s: Signals) -> Finding:
    cycle_ms = s.cycle.cycle_ms if s.cycle else 0.0
    long_queue = s.queue_p50_ms >= SCHEDULING_MIN_QUEUE_CYCLES * cycle_ms
    by_e2e = s.queue_share_e2e >= SCHEDULING_E2E_SHARE
    by_ttft = s.queue_share_ttft >= SCHEDULING_TTFT_SHARE and long_queue
    symptom = (
        f"requests wait in line {s.queue_share_e2e:.0%} of their time "
        f"({s.queue_share_ttft:.0%} of TTFT; queue p50 {s.queue_p50_ms:.1f} ms)"
    )
    evidence = {
        "queue_share_e2e": _ev(s.queue_share_e2e, "share"),
        "queue_share_ttft": _ev(s.queue_share_ttft, "share"),
        "queue_p50_ms": _ev(s.queue_p50_ms, "ms"),
        "step_cycle_ms": _ev(cycle_ms, "ms"),
        "e2e_p50_ms": _ev(s.e2e_p50_ms, "ms"),
    }
    return Finding("scheduling", s.queue_share_e2e, symptom, evidence, by_e2e or by_ttft)


def network(s: Signals, splits: list[HopSplit]) -> Finding:
    wire = wire_ms_per_token(splits, s)
    score = _share(wire, s.tpot_p50_ms)
    evidence: dict[str, dict[str, Any]] = {
        "wire_share_tpot": _ev(score, "share"),
        "wire_ms_per_token": _ev(wire, "ms"),
        "tpot_p50_ms": _ev(s.tpot_p50_ms, "ms"),
        "link": _ev(s.link.describe(), "scheduler->worker"),
    }
    for split in splits:
        evidence[f"{split.name}.wire_ms"] = _ev(split.wire_ms, f"ms per {split.per}")
        evidence[f"{split.name}.wait_ms"] = _ev(split.wait_ms, f"ms per {split.per}")
    symptom = f"the links' wire time is {score:.0%} of the time per output token ({wire:.2f} ms)"
    return Finding("network", score, symptom, evidence, score >= NETWORK_WIRE_SHARE)


def engine(s: Signals) -> list[Finding]:
    """memory_io and compute: the engine's share of TPOT, split by the step-time fit."""
    if s.cycle is None:
        return []
    engine_ms = s.cycle.engine_ms * s.decode_steps_per_token
    engine_share = _share(engine_ms, s.tpot_p50_ms)
    tokens = s.cycle.mean_tokens
    if s.fit is not None:
        fixed_ms, token_ms = s.fit.fixed_ms, s.fit.per_token_ms * tokens
    else:  # one token count only: nothing to separate; the whole step counts as fixed
        fixed_ms, token_ms = s.cycle.engine_ms, 0.0
    fixed_frac = _share(fixed_ms, fixed_ms + token_ms) if fixed_ms + token_ms > 0 else 1.0
    evidence = {
        "engine_share_tpot": _ev(engine_share, "share"),
        "step_ms_mean": _ev(s.cycle.engine_ms, "ms"),
        "fit_fixed_ms": _ev(s.fit.fixed_ms if s.fit else None, "ms"),
        "fit_per_token_ms": _ev(s.fit.per_token_ms if s.fit else None, "ms per token"),
        "fit_r2": _ev(s.fit.r2 if s.fit else None, ""),
        "tokens_per_step_mean": _ev(tokens, "tokens"),
        "fixed_share_of_step": _ev(fixed_frac, "share"),
    }
    kv_full = s.kv_usage is not None and s.kv_usage >= KV_USAGE_SHARE
    preempted = bool(s.num_preemptions)
    memory_evidence = {
        **evidence,
        "kv_block_usage": _ev(s.kv_usage, "share"),
        "preemptions": _ev(s.num_preemptions, "count"),
    }
    is_engine_bound = engine_share >= ENGINE_SHARE
    memory = Finding(
        "memory_io",
        engine_share * fixed_frac,
        f"the engine's step is {engine_share:.0%} of TPOT and {fixed_frac:.0%} of it does not grow "
        f"with tokens (reading weights at {tokens:.0f} tokens per step)"
        + (f"; KV cache {s.kv_usage:.0%} full" if kv_full and s.kv_usage is not None else "")
        + (f"; {s.num_preemptions} preemptions" if preempted else ""),
        memory_evidence,
        (is_engine_bound and fixed_frac >= 0.5) or kv_full or preempted,
    )
    compute = Finding(
        "compute",
        engine_share * (1 - fixed_frac),
        f"the engine's step is {engine_share:.0%} of TPOT and {1 - fixed_frac:.0%} of it grows "
        f"with the {tokens:.0f} tokens per step",
        evidence,
        is_engine_bound and fixed_frac < 0.5,
    )
    return [memory, compute]


def host_cpu(s: Signals, splits: list[HopSplit]) -> Finding:
    steps = s.decode_steps_per_token
    gap_ms = s.cycle.gap_ms * steps if s.cycle else 0.0
    overhead_ms = s.cycle.worker_host_ms * steps if s.cycle else 0.0
    wait_ms = wait_ms_per_token(splits, s)
    host_ms = gap_ms + overhead_ms + wait_ms
    score = _share(host_ms, s.tpot_p50_ms)
    services, worker_us, shared = cpu_split(s.cpu_us_per_token)
    cpu_ratio = sum(services.values()) / worker_us if worker_us and services else None
    evidence: dict[str, dict[str, Any]] = {
        "host_share_tpot": _ev(score, "share"),
        "step_gap_ms": _ev(gap_ms, "ms per token"),
        "worker_overhead_ms": _ev(overhead_ms, "ms per token"),
        "hop_wait_ms": _ev(wait_ms, "ms per token"),
        "services_vs_worker_cpu": _ev(cpu_ratio, "ratio"),
    }
    for process, us in sorted(s.cpu_us_per_token.items()):
        evidence[f"cpu_us_per_token.{process}"] = _ev(us, "us")
    symptom = (
        f"{score:.0%} of the time per output token the engine waits on the host: "
        f"{gap_ms:.2f} ms between steps, {wait_ms:.2f} ms of hop wait, "
        f"{overhead_ms:.2f} ms of worker overhead per token"
    )
    if cpu_ratio is not None:
        symptom += f"; tokenizer + scheduler use {cpu_ratio:.2f}x the worker's CPU per token"
    elif shared:
        symptom += (
            f"; the worker shares a process with other services ({shared}: "
            f"{s.cpu_us_per_token[shared]:.0f} us CPU per token), so its CPU cannot be split off"
        )
    for service, rows in sorted(s.hot_functions.items()):
        evidence[f"hot_functions.{service}"] = _ev("; ".join(rows), "py-spy self time")
    busiest = max(services, key=lambda p: services[p], default=shared)
    hottest = _hot_rows(s.hot_functions, busiest) if busiest else []
    if hottest:
        symptom += f"; {busiest}'s hottest function: {hottest[0]}"
    is_fired = score >= HOST_SHARE or (cpu_ratio is not None and cpu_ratio >= HOST_CPU_RATIO)
    return Finding("host_cpu", score, symptom, evidence, is_fired)


def prefill_interference(s: Signals) -> Finding:
    """Decode TPOT inflated by prefills sharing its steps (mixed steps)."""
    extra_ms = interference_ms_per_token(s)
    score = _share(extra_ms, s.tpot_p50_ms)
    pure_ms = s.cycle.engine_ms if s.cycle else None
    evidence = {
        "interference_share_tpot": _ev(score, "share"),
        "interference_ms_per_token": _ev(extra_ms, "ms"),
        "decode_only_step_ms": _ev(pure_ms, "ms"),
        "mixed_step_ms": _ev(s.mixed_step_ms, "ms"),
        "mixed_step_share": _ev(s.mixed_step_share, "share of decode steps"),
        "mixed_step_prefill_tokens": _ev(s.mixed_step_prefill_tokens, "tokens"),
        "tpot_p50_ms": _ev(s.tpot_p50_ms, "ms"),
    }
    symptom = (
        f"prefills share {s.mixed_step_share:.0%} of the decode steps and add {extra_ms:.2f} ms "
        f"per output token ({score:.0%} of TPOT): a mixed step takes "
        f"{s.mixed_step_ms or 0:.1f} ms vs {pure_ms or 0:.1f} ms decode-only"
    )
    return Finding("prefill_interference", score, symptom, evidence, score >= INTERFERENCE_SHARE)


def cpu_split(cpu_us: dict[str, float]) -> tuple[dict[str, float], float | None, str | None]:
    """(front services' CPU per token, the worker's alone, the process the worker shares with
    other services). cpu.json names a process by its services joined with "+", or "pipeline"
    when all three share one (inproc); "serve" and "client" are not services."""
    services: dict[str, float] = {}
    worker_us: float | None = None
    shared: str | None = None
    for process, us in cpu_us.items():
        parts = _services_of(process)
        if not parts <= set(_SERVICES):
            continue
        if parts == {"worker"}:
            worker_us = us
        elif "worker" in parts:
            shared = process
        else:
            services[process] = us
    return services, worker_us, shared


def _services_of(process: str) -> set[str]:
    return set(_SERVICES) if process == "pipeline" else set(process.split("+"))


def _hot_rows(hot: dict[str, list[str]], process: str) -> list[str]:
    """The profile's rows for a cpu.json process: profiles name a shared process by its services
    (`tokenizer+scheduler+worker`), cpu.json names the inproc one `pipeline`."""
    parts = _services_of(process)
    return next((rows for name, rows in hot.items() if _services_of(name) == parts), [])


def contention(s: Signals) -> Finding:
    """The services wait for a core (cpu.json's run-queue wait, CONTENTION_SCHEMA.md), split by
    cause (budget.contention_parts): processes outside the deployment, the deployment's own
    settings oversubscribing the node, or its processes waiting for each other's work (not
    contention: that wait stays with the type of the work that waited)."""
    measured = s.contention or {}
    wait_share = float(measured.get("wait_share") or 0.0)
    outside = float(measured.get("outside_cores") or 0.0)
    parts = contention_parts(s)
    oversubscribed = oversubscribed_by(s)
    evidence = {
        "wait_share": _ev(wait_share if measured else None, "share of runnable time"),
        "run_queue_wait_s": _ev(measured.get("run_queue_wait_s"), "s"),
        "outside_cores": _ev(outside if measured else None, "cores used outside the deployment"),
        "num_cores": _ev(measured.get("num_cores"), "cores"),
        "contended_rounds": _ev(
            f"{measured.get('num_contended_rounds')} of {measured.get('num_rounds')}"
            if measured
            else None,
            "rounds",
        ),
        "wait_share_outside": _ev(parts["outside"] if measured else None, "share of runnable time"),
        "wait_share_oversubscription": _ev(
            parts["oversubscription"] if measured else None, "share of runnable time"
        ),
        "wait_share_own_work": _ev(
            parts["own_work"] if measured else None,
            "share of runnable time (stays with the work's type)",
        ),
        "oversubscribed_by": _ev(oversubscribed or None, "settings in force"),
    }
    if measured:
        symptom = (
            f"the services waited for a core {wait_share:.0%} of the time they were runnable; "
            f"processes outside the deployment used {outside:.2f} of {measured.get('num_cores')} "
            f"cores (up to {parts['outside']:.0%} of the runnable time is theirs)"
        )
        if oversubscribed:
            symptom += f"; the deployment oversubscribes its node: {oversubscribed}"
        elif parts["own_work"] > 0:
            symptom += (
                f"; the other {parts['own_work']:.0%} is the deployment's processes waiting for "
                "each other's work, charged to the work's own type"
            )
    else:
        symptom = "not measured (no contention in cpu.json)"
    is_fired = bool(measured.get("is_contended")) or (
        bool(oversubscribed) and wait_share >= CONTENTION_WAIT_SHARE
    )
    return Finding("contention", 0.0, symptom, evidence, is_fired)


def evaluate(s: Signals, splits: list[HopSplit]) -> tuple[list[Finding], Budget]:
    """Every rule's finding, scored by its share of the mean request's E2E, highest first; each
    with its suggestions. Also the budget the scores come from."""
    findings = [
        scheduling(s),
        network(s, splits),
        *engine(s),
        host_cpu(s, splits),
        prefill_interference(s),
        contention(s),
    ]
    budget = time_budget(s, splits)
    shares = budget.shares()
    for finding in findings:
        finding.score = shares.get(finding.type, 0.0)
        finding.evidence = {"e2e_share": _ev(finding.score, "share of the mean E2E"),
                            **finding.evidence}  # fmt: skip
        finding.suggestions = suggestions_for(finding.type, s, splits)
    findings.sort(key=lambda f: f.score, reverse=True)
    return findings, budget


def verdict(findings: list[Finding]) -> tuple[str, list[Finding]]:
    """(primary type, findings shown): the primary is the largest share of the time budget;
    shown are the primary and every other finding that fired, largest first."""
    primary = findings[0]
    shown = [primary, *(f for f in findings[1:] if f.is_fired)]
    return primary.type, shown


__all__ = ["TYPES", "UNATTRIBUTED", "Finding", "evaluate", "verdict"]
