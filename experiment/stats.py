"""Variant vs baseline: ratios with 95% intervals and a verdict that never calls noise a win.

Method (also in the report): a two-level bootstrap. Rounds pair a variant with the baseline run
in the same round. Level 1 resamples the rounds (pairs kept together) with replacement; level 2
resamples, inside each drawn round, the variant's and the baseline's measurements with
replacement — requests for latency percentiles, equal time windows of the run for throughput
(each request's tokens spread over its decode time). The ratio is the geometric mean over rounds
of the per-round ratio; the interval is the 2.5th-97.5th percentile of 2000 resamples. With one
round, level 1 is a no-op and the interval comes from the requests alone (it cannot see
deployment-to-deployment variation: run more rounds for that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

NUM_RESAMPLES = 2000
MAX_WINDOWS = 12
MIN_WINDOWS = 4
SEED = 0
BETTER, WORSE, NO_EFFECT = "better", "worse", "no measurable effect"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    key: str  # "output_tok_s", "tpot_ms.p50"
    higher_is_better: bool
    label: str
    unit: str


COMPARED = (
    MetricSpec("output_tok_s", True, "output tokens/s", "tok/s"),
    MetricSpec("request_throughput", True, "requests/s", "req/s"),
    MetricSpec("goodput", True, "goodput", "req/s"),
    MetricSpec("ttft_ms.p50", False, "TTFT p50", "ms"),
    MetricSpec("ttft_ms.p99", False, "TTFT p99", "ms"),
    MetricSpec("tpot_ms.p50", False, "TPOT p50", "ms"),
    MetricSpec("tpot_ms.p99", False, "TPOT p99", "ms"),
    MetricSpec("e2e_ms.p50", False, "E2E p50", "ms"),
    MetricSpec("e2e_ms.p99", False, "E2E p99", "ms"),
)


@dataclass(slots=True)
class RoundSamples:
    """What one round of one variant measured, as the bootstrap resamples it."""

    latencies_ms: dict[str, np.ndarray]  # ttft_ms, tpot_ms, e2e_ms: one value per request
    window_tokens_per_s: np.ndarray  # output tokens/s in each time window of the run
    window_requests_per_s: np.ndarray  # completions/s in each window
    window_good_per_s: np.ndarray | None = None  # completions meeting every SLO /s per window


def round_samples(
    records: list[dict[str, Any]], slo: dict[str, float] | None = None
) -> RoundSamples:
    """From a round's requests.jsonl rows: the measured, successful requests. A row meets the
    SLO by its `meets_slo` (bench writes it); older rows are checked against `slo` here."""
    ok = [r for r in records if r.get("status") == "OK" and r.get("is_measured", True)]
    latencies = {
        name: np.asarray([r[name] for r in ok if r.get(name) is not None], dtype=float)
        for name in ("ttft_ms", "tpot_ms", "e2e_ms")
    }
    tokens, requests = _windows(ok)
    good = [r for r in ok if row_meets_slo(r, slo or {})]
    _, good_per_s = _windows(good, span_of=ok)
    return RoundSamples(latencies, tokens, requests, good_per_s)


def row_meets_slo(row: dict[str, Any], slo: dict[str, float]) -> bool:
    """A request record meets every objective (a metric it lacks, e.g. TPOT of one token, is
    vacuous), as loadgen's `meets_slo` decides it."""
    if "meets_slo" in row:
        return bool(row["meets_slo"])
    return all(row.get(k) is None or float(row[k]) <= limit for k, limit in slo.items())


def _windows(
    ok: list[dict[str, Any]], span_of: list[dict[str, Any]] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-window throughput over [first send, last end]. A request's output tokens are spread
    evenly over its life (send to end), and so is the request itself (a completion counted where
    its work was done, not only at its end, which would leave windows empty), so the mean over
    windows is exactly tokens (requests) / duration. Windows are at least two median E2Es long
    (so most hold work), between MIN_WINDOWS and MAX_WINDOWS of them. `span_of`: the rows whose
    run sets the windows (every completed request, when `ok` is the subset meeting the SLO)."""

    def times(rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        send = np.asarray([r["t_send_s"] for r in rows], dtype=float)
        return send, send + np.asarray([r["e2e_ms"] for r in rows], dtype=float) / 1e3

    def timed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if r.get("t_send_s") is not None and r.get("e2e_ms") is not None]

    rows, frame = timed(ok), timed(span_of if span_of is not None else ok)
    if not frame:
        return np.zeros(1), np.zeros(1)
    frame_send, frame_end = times(frame)
    span_s = max(float(frame_end.max() - frame_send.min()), 1e-6)
    count = int(
        np.clip(span_s / (2 * np.median(frame_end - frame_send) + 1e-9), MIN_WINDOWS, MAX_WINDOWS)
    )
    edges = np.linspace(frame_send.min(), frame_send.min() + span_s, count + 1)
    if not rows:
        return np.zeros(count), np.zeros(count)
    send, end = times(rows)
    n_out = np.asarray([r.get("n_out") or 0 for r in rows], dtype=float)
    width = edges[1] - edges[0]
    lo, hi = edges[:-1, None], edges[1:, None]  # windows x requests
    life_s = np.maximum(end - send, 1e-9)
    overlap = np.clip(np.minimum(hi, end) - np.maximum(lo, send), 0.0, None)
    share = overlap / life_s  # of each request's life in each window
    return (share * n_out).sum(axis=1) / width, share.sum(axis=1) / width


def _statistic(spec: MetricSpec, samples: RoundSamples, index: np.ndarray | None) -> np.ndarray:
    """The metric of each resample (index: resamples x n), or of the samples (index None)."""
    if spec.key in _THROUGHPUTS:
        values = _window_values(spec, samples)
        return values.mean() if index is None else values[index].mean(axis=1)
    name, stat = spec.key.split(".")
    values = samples.latencies_ms[name]
    q = float(stat.lstrip("p"))
    return np.percentile(values, q) if index is None else np.percentile(values[index], q, axis=1)


_THROUGHPUTS = ("output_tok_s", "request_throughput", "goodput")


def _window_values(spec: MetricSpec, samples: RoundSamples) -> np.ndarray:
    if spec.key == "output_tok_s":
        return samples.window_tokens_per_s
    if spec.key == "goodput":
        good = samples.window_good_per_s
        return good if good is not None else np.zeros(0)
    return samples.window_requests_per_s


def _draw(rng: np.random.Generator, spec: MetricSpec, samples: RoundSamples) -> np.ndarray:
    n = _size(spec, samples)
    return _statistic(spec, samples, rng.integers(0, n, size=(NUM_RESAMPLES, n)))


def _size(spec: MetricSpec, samples: RoundSamples) -> int:
    if spec.key in _THROUGHPUTS:
        return len(_window_values(spec, samples))
    return len(samples.latencies_ms[spec.key.split(".")[0]])


def compare(
    spec: MetricSpec, variant: list[RoundSamples], baseline: list[RoundSamples]
) -> dict[str, Any] | None:
    """{ratio, ci95, verdict} of variant / baseline over paired rounds; None without data."""
    pairs = [
        (v, b)
        for v, b in zip(variant, baseline, strict=False)
        if _size(spec, v) and _size(spec, b) and _statistic(spec, b, None) > 0
    ]
    if not pairs:
        return None
    rng = np.random.default_rng(SEED)
    log_points, log_draws = [], []
    for v, b in pairs:
        point_v, point_b = _statistic(spec, v, None), _statistic(spec, b, None)
        if point_v <= 0:
            return None
        log_points.append(np.log(point_v / point_b))
        draws_v, draws_b = _draw(rng, spec, v), _draw(rng, spec, b)
        log_draws.append(np.log(np.maximum(draws_v, 1e-12) / np.maximum(draws_b, 1e-12)))
    per_round = np.stack(log_draws)  # rounds x resamples
    picked = rng.integers(0, len(pairs), size=(NUM_RESAMPLES, len(pairs)))
    resampled = per_round[picked, np.arange(NUM_RESAMPLES)[:, None]].mean(axis=1)
    lo, hi = np.exp(np.percentile(resampled, [2.5, 97.5]))
    ratio = float(np.exp(np.mean(log_points)))
    return {
        "ratio": round(ratio, 4),
        "ci95": [round(float(lo), 4), round(float(hi), 4)],
        "verdict": verdict(float(lo), float(hi), spec.higher_is_better),
        "rounds": len(pairs),
    }


def verdict(lo: float, hi: float, higher_is_better: bool) -> str:
    """`no measurable effect` when the interval contains 1.0; else the direction, read the way
    the metric is better (tokens/s up, latency down)."""
    if lo <= 1.0 <= hi:
        return NO_EFFECT
    is_up = lo > 1.0
    return BETTER if is_up == higher_is_better else WORSE


def stats4(values: np.ndarray) -> dict[str, float | None]:
    """{p50, p90, p99, mean} of raw samples (numpy's linear percentiles, as bench uses)."""
    if values.size == 0:
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(values.mean())}
