"""One time budget: every bottleneck type's score is its share of the mean request's E2E, so the
shares are comparable, add up to at most 1, and the rest is shown as `unattributed`.

The whole is the mean E2E of the measured requests, and the segments are the means per request of
tracing's decomposition (tracing/decompose.py, the report's component bar), each attributed to
types by the table in docs/diagnosis.md ("The time budget"):

    queue, handoff wait          -> scheduling
    compute.prefill              -> compute (a prompt's step is its tokens' arithmetic)
    compute.decode               -> worker overhead part: host_cpu; of the engine part, what
                                    prefills sharing the steps added: prefill_interference; the
                                    rest split by the step-time fit: fixed part memory_io,
                                    per-token part compute
    network.* hops, kv_transfer  -> the wire (calibrated idle round trip + emulated link): network;
                                    the rest of the hop (a busy event loop): host_cpu
    tokenize, detokenize         -> host_cpu
    other                        -> the scheduler's measured gaps between decode steps: host_cpu;
                                    the rest: unattributed

Per-step figures (engine, hop, gap per decode step) convert to a request's ms through its step
calls (the mean request's decode steps, about its output tokens - 1). When cpu.json measured
contention, the services waited for a core `wait_share` of the time they were runnable; the part
of that wait that processes outside the deployment caused, or that the deployment's own settings
oversubscribing the node caused (contention_parts), moves from every CPU segment (engine, host,
interference) to `contention`. The deployment's processes waiting for each other's work stay
with the type of the segment that waited.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diagnose.network import HopSplit
from diagnose.signals import Signals
from diagnose.suggestions import oversubscribed_by
from tracing.decompose import (
    DECODE,
    DETOKENIZE,
    HANDOFF_WAIT,
    KV_TRANSFER,
    NET_CLIENT_TOKENIZER,
    NET_SCHEDULER_WORKER,
    NET_TOKENIZER_SCHEDULER,
    OTHER,
    PREFILL,
    QUEUE,
    TOKENIZE,
)

CPU_TYPES = ("memory_io", "compute", "host_cpu", "prefill_interference")
UNATTRIBUTED = "unattributed"


@dataclass(slots=True)
class Budget:
    """ms per mean request: segment -> type -> ms; `whole_ms` is the mean E2E."""

    whole_ms: float
    segments: dict[str, dict[str, float]] = field(default_factory=dict)

    def add(self, segment: str, kind: str, ms: float) -> None:
        if ms > 0:
            row = self.segments.setdefault(segment, {})
            row[kind] = row.get(kind, 0.0) + ms

    def ms_by_type(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for row in self.segments.values():
            for kind, ms in row.items():
                totals[kind] = totals.get(kind, 0.0) + ms
        return totals

    def shares(self) -> dict[str, float]:
        """Each type's share of the whole (unattributed included); at most 1 in all."""
        totals = self.ms_by_type()
        attributed = sum(ms for kind, ms in totals.items() if kind != UNATTRIBUTED)
        # components never exceed E2E (decompose clamps); the split of a segment into types
        # never exceeds the segment: a sum above the whole is rounding, scaled away
        scale = (
            1.0 if attributed <= self.whole_ms or attributed <= 0 else self.whole_ms / attributed
        )
        shares = {
            kind: ms * scale / self.whole_ms if self.whole_ms > 0 else 0.0
            for kind, ms in totals.items()
            if kind != UNATTRIBUTED
        }
        shares[UNATTRIBUTED] = max(0.0, 1.0 - sum(shares.values()))
        return shares

    def to_json(self) -> dict[str, Any]:
        shares = self.shares()
        return {
            "whole": "mean request E2E",
            "e2e_mean_ms": round(self.whole_ms, 3),
            "shares": {k: round(v, 4) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])},
            "segments_ms": {
                segment: {kind: round(ms, 3) for kind, ms in row.items()}
                for segment, row in self.segments.items()
            },
        }


def time_budget(s: Signals, splits: list[HopSplit]) -> Budget:
    """The mean request's E2E attributed to types (module docstring; docs/diagnosis.md)."""
    budget = Budget(s.e2e_mean_ms)
    c = s.components_mean_ms
    budget.add(QUEUE, "scheduling", c.get(QUEUE, 0.0))
    budget.add(HANDOFF_WAIT, "scheduling", c.get(HANDOFF_WAIT, 0.0))
    budget.add(PREFILL, "compute", c.get(PREFILL, 0.0))
    _decode(budget, s, c.get(DECODE, 0.0))
    _hops(budget, s, splits, c)
    budget.add(KV_TRANSFER, "network", c.get(KV_TRANSFER, 0.0))
    for segment in (TOKENIZE, DETOKENIZE):
        budget.add(segment, "host_cpu", c.get(segment, 0.0))
    other = c.get(OTHER, 0.0)
    gaps = (s.cycle.gap_ms if s.cycle else 0.0) * s.decode_calls_per_request
    budget.add(OTHER, "host_cpu", min(other, gaps))
    budget.add(OTHER, UNATTRIBUTED, max(0.0, other - gaps))
    _contention(budget, s)
    return budget


def _decode(budget: Budget, s: Signals, decode_ms: float) -> None:
    """A request's decode steps (worker SERVER time): worker overhead, interference, engine."""
    if decode_ms <= 0:
        return
    cycle = s.cycle
    server_ms = (cycle.engine_ms + cycle.worker_host_ms) if cycle else 0.0
    overhead_frac = cycle.worker_host_ms / server_ms if cycle and server_ms > 0 else 0.0
    overhead = decode_ms * overhead_frac
    engine = decode_ms - overhead
    extra = 0.0
    if cycle is not None and s.mixed_step_ms is not None and s.mixed_step_share:
        per_step = s.mixed_step_share * max(0.0, s.mixed_step_ms - cycle.engine_ms)
        extra = min(engine, per_step * s.decode_calls_per_request)
    fixed = fixed_share(s)
    budget.add(DECODE, "host_cpu", overhead)
    budget.add(DECODE, "prefill_interference", extra)
    budget.add(DECODE, "memory_io", (engine - extra) * fixed)
    budget.add(DECODE, "compute", (engine - extra) * (1.0 - fixed))


def fixed_share(s: Signals) -> float:
    """The share of a decode step that does not grow with its tokens (the step-time fit at the
    observed tokens per step); 1 without a fit (one token count only: nothing to separate)."""
    if s.cycle is None or s.fit is None:
        return 1.0
    fixed, per_tokens = s.fit.fixed_ms, s.fit.per_token_ms * s.cycle.mean_tokens
    return fixed / (fixed + per_tokens) if fixed + per_tokens > 0 else 1.0


def _hops(budget: Budget, s: Signals, splits: list[HopSplit], c: dict[str, float]) -> None:
    by_name = {split.name: split for split in splits}
    for segment in (NET_CLIENT_TOKENIZER, NET_TOKENIZER_SCHEDULER, NET_SCHEDULER_WORKER):
        hop_ms = c.get(segment, 0.0)
        split = by_name.get(segment)
        if split is None:  # inproc: no hop; or not measured
            budget.add(segment, "host_cpu", hop_ms)
            continue
        calls = s.step_calls_per_request if split.per == "step" else 1.0
        wire = min(hop_ms, split.wire_ms * calls)
        budget.add(segment, "network", wire)
        budget.add(segment, "host_cpu", hop_ms - wire)


def _contention(budget: Budget, s: Signals) -> None:
    share = contention_wait_share(s)
    if share <= 0:
        return
    for row in budget.segments.values():
        for kind in CPU_TYPES:
            if kind in row:
                moved = row[kind] * share
                row[kind] -= moved
                row["contention"] = row.get("contention", 0.0) + moved


def contention_wait_share(s: Signals) -> float:
    """The share of the CPU segments' time that goes to `contention` (contention_parts)."""
    parts = contention_parts(s)
    return parts["outside"] + parts["oversubscription"]


def contention_parts(s: Signals) -> dict[str, float]:
    """The services' run-queue wait (`wait_share` of their runnable time) by cause:

    - `outside`: what processes outside the deployment took. They used `outside_cores` of the
      node's cores, so a CPU-bound segment ran on at most the rest and waited at most
      outside_cores / num_cores of its time because of them; the measured wait bounds it too.
    - `oversubscription`: the rest of the wait, when the deployment's own settings ask the node
      for more cores than it has (suggestions.oversubscribed_by: an engine fixed at every core
      beside the services, several replicas on one node). A setting removes it: contention.
    - `own_work`: otherwise the rest is the deployment's processes waiting for each other's
      work — the price of that work on these cores, charged to the type of the segment that
      waited (a CPU-bound front door stays host_cpu, a step that grows with tokens compute).
    """
    measured = s.contention or {}
    wait = float(measured.get("wait_share") or 0.0)
    cores = float(measured.get("num_cores") or 0.0)
    outside_cores = float(measured.get("outside_cores") or 0.0)
    outside = min(wait, outside_cores / cores) if cores > 0 else 0.0
    oversubscription = wait - outside if wait > outside and oversubscribed_by(s) else 0.0
    return {
        "outside": outside,
        "oversubscription": oversubscription,
        "own_work": max(0.0, wait - outside - oversubscription),
    }
