"""The worker's steps as the scheduler saw them: one `StepSample` per Worker/Step call, joined
from its CLIENT span (scheduler) and SERVER span (worker), with the gap to the next step.

A decode step's *cycle* — what one output token of every running sequence costs — splits into
engine time, the worker's own overhead around the engine, the hop (CLIENT − SERVER) and the
scheduler's gap before it sends the next step. Only steps that decode count: a gap after such a
step is time the running sequences waited on the host, never idleness for lack of work.

A multi-step run (`serve --num-scheduler-steps`, `hopscope.num_steps` on its Step spans) is one
call for several decode steps: its sample is the run's mean step (times divided by the steps,
the gap after it too), so hop and gap are what each step's tokens paid for them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from tracing.decompose import STEP
from tracing.model import Span


@dataclass(slots=True)
class StepSample:
    start_ns: int  # CLIENT start (scheduler clock)
    end_ns: int  # CLIENT end
    client_ms: float  # scheduler's round trip
    server_ms: float  # worker's SERVER span
    engine_ms: float  # `hopscope.step_ms`: the engine alone
    num_prefill_tokens: int
    num_decode_tokens: int
    batch_size: int
    transport: str
    gap_ms: float | None = None  # CLIENT end -> next CLIENT start, when the next step decodes
    num_steps: int = 1  # decode steps of a multi-step run this call carried (times are per step)

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_tokens

    @property
    def hop_ms(self) -> float:
        return max(0.0, self.client_ms - self.server_ms)

    @property
    def worker_host_ms(self) -> float:
        return max(0.0, self.server_ms - self.engine_ms)


def _is_step(span: Span, kind: str) -> bool:
    return span.name.lstrip("/") == STEP and span.kind == kind


def _int_attr(span: Span, key: str) -> int:
    try:
        return int(span.attributes.get(key, 0) or 0)
    except (TypeError, ValueError):
        return 0


def step_samples(spans: Iterable[Span]) -> list[StepSample]:
    """Every step whose worker SERVER span was recorded, in start order, gaps filled in."""
    spans = list(spans)
    servers = {s.parent_key: s for s in spans if _is_step(s, "SERVER") and s.parent_key}
    samples = []
    for client in spans:
        if not _is_step(client, "CLIENT"):
            continue
        server = servers.get(client.key)
        if server is None:
            continue
        engine_ms = server.attributes.get("hopscope.step_ms")
        num_steps = max(1, _int_attr(client, "hopscope.num_steps"))
        samples.append(
            StepSample(
                start_ns=client.start_ns,
                end_ns=client.end_ns,
                client_ms=client.duration_ms / num_steps,
                server_ms=server.duration_ms / num_steps,
                engine_ms=(float(engine_ms) if engine_ms is not None else server.duration_ms)
                / num_steps,
                num_prefill_tokens=_int_attr(client, "hopscope.num_prefill_tokens"),
                num_decode_tokens=_int_attr(client, "hopscope.num_decode_tokens"),
                batch_size=_int_attr(client, "hopscope.batch_size"),
                transport=str(client.attributes.get("network.transport", "")),
                num_steps=num_steps,
            )
        )
    samples.sort(key=lambda s: s.start_ns)
    _fill_gaps(samples)
    return samples


def _fill_gaps(samples: list[StepSample]) -> None:
    # Rounds of an experiment are concatenated: a gap longer than this is a pause between runs.
    max_gap_ns = 1_000_000_000
    for current, following in itertools.pairwise(samples):
        gap_ns = following.start_ns - current.end_ns
        is_decoding = current.num_decode_tokens > 0 and following.num_decode_tokens > 0
        if is_decoding and 0 <= gap_ns < max_gap_ns:
            current.gap_ms = gap_ns / 1e6 / current.num_steps


@dataclass(slots=True, frozen=True)
class CycleBreakdown:
    """Mean per-decode-step times (ms); their sum is the mean cycle between two steps."""

    engine_ms: float
    worker_host_ms: float
    hop_ms: float
    gap_ms: float
    num_steps: int
    mean_batch_size: float
    mean_tokens: float

    @property
    def cycle_ms(self) -> float:
        return self.engine_ms + self.worker_host_ms + self.hop_ms + self.gap_ms


def cycle_breakdown(samples: Sequence[StepSample]) -> CycleBreakdown | None:
    """Means over the pure decode steps followed by another decode step (steady state): what a
    typical output token costs. A step that also prefills is rare and long (a whole prompt)
    and would weigh on a mean far more than on the TPOT p50 it is compared with."""
    steady = [s for s in samples if s.gap_ms is not None and s.num_prefill_tokens == 0]
    steady = steady or [s for s in samples if s.gap_ms is not None]
    if not steady:
        return None
    n = len(steady)
    return CycleBreakdown(
        engine_ms=sum(s.engine_ms for s in steady) / n,
        worker_host_ms=sum(s.worker_host_ms for s in steady) / n,
        hop_ms=sum(s.hop_ms for s in steady) / n,
        gap_ms=sum(s.gap_ms or 0.0 for s in steady) / n,
        num_steps=n,
        mean_batch_size=sum(s.batch_size for s in steady) / n,
        mean_tokens=sum(s.num_tokens for s in steady) / n,
    )


@dataclass(slots=True, frozen=True)
class StepFit:
    """step_ms = fixed_ms + per_token_ms * tokens, least squares over every step."""

    fixed_ms: float
    per_token_ms: float
    num_steps: int
    r2: float

    def at(self, num_tokens: float) -> float:
        return self.fixed_ms + self.per_token_ms * num_tokens


# Steps up to this many times the largest decode batch are fitted: the fit describes the step at
# the batch sizes observed, and a few whole-prompt prefills (attention grows faster than
# linearly with them) would otherwise set the line alone.
FIT_TOKEN_RANGE = 4
FIT_MIN_TOKENS = 256  # ... but at batch 1 a prompt is what gives the line its slope


def fit_step_time(samples: Sequence[StepSample]) -> StepFit | None:
    """Least squares; None without two distinct token counts (nothing to fit a slope to)."""
    max_decode = max((s.num_tokens for s in samples if s.num_prefill_tokens == 0), default=0)
    limit = max(FIT_TOKEN_RANGE * max_decode, FIT_MIN_TOKENS) if max_decode else None
    points = [
        (float(s.num_tokens), s.engine_ms)
        for s in samples
        if s.num_tokens > 0 and (limit is None or s.num_tokens <= limit)
    ]
    if len({x for x, _ in points}) < 2:
        return None
    return _least_squares(points)  # time cannot fall with more tokens; noise can make it look so


# A decode-cycle fit needs batch sizes that differ: at least two, each this many steady steps,
# the largest at least this many times the smallest (a line through 15 and 16 extrapolates noise)
CYCLE_FIT_MIN_STEPS = 10
CYCLE_FIT_MIN_SPREAD = 1.5


def fit_decode_cycle(samples: Sequence[StepSample]) -> StepFit | None:
    """The whole decode cycle (engine + worker overhead + hop + gap) against the batch size, over
    the steady pure decode steps (cycle_breakdown's): what a step costs per sequence, the host's
    per-sequence work included. None unless the batch sizes differ enough to fit a slope."""
    return _fit_by_batch(samples, lambda s: s.engine_ms + _host_ms(s))


def _host_ms(s: StepSample) -> float:
    return s.worker_host_ms + s.hop_ms + (s.gap_ms or 0.0)


def _fit_by_batch(
    samples: Sequence[StepSample], value: Callable[[StepSample], float]
) -> StepFit | None:
    steady = [s for s in samples if s.gap_ms is not None and s.num_prefill_tokens == 0]
    counts: dict[int, int] = {}
    for s in steady:
        counts[s.batch_size] = counts.get(s.batch_size, 0) + 1
    sizes = [b for b, n in counts.items() if n >= CYCLE_FIT_MIN_STEPS and b > 0]
    if len(sizes) < 2 or max(sizes) < CYCLE_FIT_MIN_SPREAD * min(sizes):
        return None
    return _least_squares(
        [(float(s.batch_size), value(s)) for s in steady if s.batch_size in sizes]
    )


def _least_squares(points: Sequence[tuple[float, float]]) -> StepFit:
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    slope = max(0.0, sxy / sxx) if sxx > 0 else 0.0  # time cannot fall with more sequences
    intercept = max(0.0, mean_y - slope * mean_x)
    ss_tot = sum((y - mean_y) ** 2 for _, y in points)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in points)
    return StepFit(intercept, slope, n, 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0)
