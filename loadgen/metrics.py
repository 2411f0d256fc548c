"""Per-request timelines and the metrics docs/metrics.md defines on them.

All times are seconds on one monotonic clock, relative to the run's start. Definitions:
TTFT = t_first - t_send; E2E = t_end - t_send; E2E-from-schedule = t_end - t_sched (counts the
time a request waited for the client, so no coordinated omission); TPOT = (E2E - TTFT)/(N_out - 1)
for N_out >= 2; ITL = gaps between consecutive messages that carry tokens, pooled over requests
(one sample per gap whatever the number of tokens in the message; tokens per message are recorded
alongside); schedule lag = t_send - t_sched. N_out comes from the server's usage.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np

from loadgen.config import LoadConfig, SloConfig

STATUS_OK = "OK"
STATUS_INCOMPLETE = "INCOMPLETE"
STAT_KEYS = ("mean", "std", "min", "p50", "p90", "p95", "p99", "p999", "max")
_PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}
LATENCY_METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "e2e_from_schedule_ms")
ALL_METRICS = (*LATENCY_METRICS, "schedule_lag_ms")


@dataclass(slots=True)
class RequestRecord:
    """One request's timeline as the client saw it."""

    index: int
    request_id: str
    trace_id: str
    t_sched: float
    t_send: float | None = None
    t_first: float | None = None
    t_end: float | None = None
    message_times: list[float] = field(default_factory=list)  # messages with >= 1 token
    tokens_per_message: list[int] = field(default_factory=list)
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    status: str = STATUS_INCOMPLETE  # "OK", a grpc.StatusCode name, or "INCOMPLETE"
    error: str = ""
    worker: int = 0

    @property
    def is_ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def is_failed(self) -> bool:
        return self.status not in (STATUS_OK, STATUS_INCOMPLETE)


def _ms(seconds: float) -> float:
    return seconds * 1e3


def ttft_ms(r: RequestRecord) -> float | None:
    if r.t_first is None or r.t_send is None:
        return None
    return _ms(r.t_first - r.t_send)


def e2e_ms(r: RequestRecord) -> float | None:
    if r.t_end is None or r.t_send is None:
        return None
    return _ms(r.t_end - r.t_send)


def e2e_from_schedule_ms(r: RequestRecord) -> float | None:
    return None if r.t_end is None else _ms(r.t_end - r.t_sched)


def schedule_lag_ms(r: RequestRecord) -> float | None:
    return None if r.t_send is None else _ms(r.t_send - r.t_sched)


def tpot_ms(r: RequestRecord) -> float | None:
    ttft, e2e = ttft_ms(r), e2e_ms(r)
    if ttft is None or e2e is None or r.num_output_tokens < 2:
        return None
    return (e2e - ttft) / (r.num_output_tokens - 1)


def itl_ms(r: RequestRecord) -> list[float]:
    return [_ms(b - a) for a, b in pairwise(r.message_times)]


def meets_slo(r: RequestRecord, slo: SloConfig) -> bool:
    """A completed request meets every objective set; TPOT is vacuous below two tokens."""
    checks = ((slo.ttft_ms, ttft_ms(r)), (slo.tpot_ms, tpot_ms(r)), (slo.e2e_ms, e2e_ms(r)))
    return r.is_ok and all(limit is None or v is None or v <= limit for limit, v in checks)


def slo_dict(slo: SloConfig) -> dict[str, float]:
    """The objectives set, by metric name ({} when none: every completed request is good)."""
    items = (("ttft_ms", slo.ttft_ms), ("tpot_ms", slo.tpot_ms), ("e2e_ms", slo.e2e_ms))
    return {key: float(limit) for key, limit in items if limit is not None}


def describe(samples: list[float]) -> dict[str, float | None]:
    """mean std min p50 p90 p95 p99 p999 max of raw samples; all None when there are none."""
    if not samples:
        return {key: None for key in STAT_KEYS}
    values = np.asarray(samples, dtype=np.float64)
    stats = {"mean": values.mean(), "std": values.std(), "min": values.min()}
    stats |= {k: np.percentile(values, q) for k, q in _PERCENTILES.items()}
    stats["max"] = values.max()
    return {key: float(stats[key]) for key in STAT_KEYS}


def measured(
    records: list[RequestRecord], load: LoadConfig, num_scheduled: int
) -> list[RequestRecord]:
    """Records inside the measurement window: warm-up and cool-down (by index and by scheduled
    time) are excluded."""
    if not records:
        return []
    last_sched = max(r.t_sched for r in records)
    first_kept = load.warmup_requests
    last_kept = num_scheduled - load.cooldown_requests  # exclusive
    return [
        r
        for r in records
        if first_kept <= r.index < last_kept
        and r.t_sched >= load.warmup_s
        and r.t_sched <= last_sched - load.cooldown_s
    ]


def samples(records: list[RequestRecord]) -> dict[str, list[float]]:
    """Raw samples per metric: latencies from successful requests only; schedule lag from every
    request that was sent (it describes the client, not the server)."""
    ok = [r for r in records if r.is_ok]
    out: dict[str, list[float]] = {
        "ttft_ms": _defined(ttft_ms(r) for r in ok),
        "tpot_ms": _defined(tpot_ms(r) for r in ok),
        "itl_ms": [gap for r in ok for gap in itl_ms(r)],
        "e2e_ms": _defined(e2e_ms(r) for r in ok),
        "e2e_from_schedule_ms": _defined(e2e_from_schedule_ms(r) for r in ok),
        "schedule_lag_ms": _defined(schedule_lag_ms(r) for r in records),
    }
    return out


def _defined(values: Any) -> list[float]:
    return [v for v in values if v is not None]


def duration_s(records: list[RequestRecord]) -> float:
    """Last response - first send among measured requests that were sent."""
    sends = [r.t_send for r in records if r.t_send is not None]
    ends = [r.t_end for r in records if r.t_end is not None]
    if not sends or not ends:
        return 0.0
    return max(0.0, max(ends) - min(sends))


def summarise(window: list[RequestRecord], slo: SloConfig) -> dict[str, Any]:
    """The `summary` section of the contract for the requests of one measurement window."""
    ok = [r for r in window if r.is_ok]
    duration = duration_s(window)
    num_out = sum(r.num_output_tokens for r in ok)
    num_in = sum(r.num_prompt_tokens for r in ok)
    num_good = sum(meets_slo(r, slo) for r in ok)
    objectives = slo_dict(slo)
    summary: dict[str, Any] = {
        "completed": len(ok),
        "failed": sum(r.is_failed for r in window),
        "incomplete": sum(r.status == STATUS_INCOMPLETE for r in window),
        "duration_s": duration,
        "request_throughput": _per_s(len(ok), duration),
        "output_token_throughput": _per_s(num_out, duration),
        "total_token_throughput": _per_s(num_in + num_out, duration),
        "goodput": _per_s(num_good, duration),
        # goodput's parts: how many met every objective, their share of the completed, the SLO
        "goodput_requests": num_good,
        "slo_attainment": num_good / len(ok) if ok else None,
        "slo": objectives,
    }
    summary |= {name: describe(values) for name, values in samples(window).items()}
    return summary


def client_cpu(cpu_s: float, records: list[RequestRecord]) -> dict[str, float | None]:
    """The load generator's own cost: CPU seconds from the first send to the end, per output
    token of every completed request it sent (warm-up included, as the CPU is). A figure near
    what a server process costs per token means the client may be the bottleneck."""
    num_out = sum(r.num_output_tokens for r in records if r.is_ok)
    return {
        "client_cpu_s": cpu_s,
        "client_cpu_us_per_token": cpu_s * 1e6 / num_out if num_out else None,
    }


def _per_s(count: float, duration: float) -> float:
    return count / duration if duration > 0 else 0.0


def failed_by_status(records: list[RequestRecord]) -> dict[str, int]:
    return dict(Counter(r.status for r in records if r.is_failed))
