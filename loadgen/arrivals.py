"""Open-loop arrival schedules: seconds from the start at which each request is due.

Gaps are gamma-distributed with mean 1/rate and shape k (coefficient of variation 1/sqrt(k)):
k = 1 is a Poisson process, k < 1 is burstier, k > 1 smoother; `constant` is evenly spaced.
"""

from __future__ import annotations

import numpy as np

from loadgen.config import LoadConfig

# arrival schedules use their own stream so they do not change when the workload does
_ARRIVAL_STREAM = 1


def gaps_s(num: int, rate: float, shape: float, seed: int, arrival: str = "gamma") -> np.ndarray:
    """`num` inter-arrival gaps in seconds (the first is the gap before the first request)."""
    if arrival == "constant":
        return np.full(num, 1.0 / rate)
    rng = np.random.default_rng([seed, _ARRIVAL_STREAM])
    return rng.gamma(shape, 1.0 / (rate * shape), size=num)


def schedule_s(
    num: int, rate: float, shape: float, seed: int, arrival: str = "gamma"
) -> np.ndarray:
    """Due times in seconds from the start; the first request is due at 0."""
    gaps = gaps_s(num, rate, shape, seed, arrival)
    if num:
        gaps[0] = 0.0  # start at once rather than after a random idle gap
    return np.cumsum(gaps)


def open_loop_schedule(load: LoadConfig, seed: int) -> list[float]:
    """Due times for an open-loop point, by request count or until `duration_s`."""
    assert load.rate is not None
    if load.num_requests is not None:
        return schedule_s(
            load.num_requests, load.rate, load.gamma_shape, seed, load.arrival
        ).tolist()
    assert load.duration_s is not None
    # draw generously, then cut at the duration; same seed -> same prefix, whatever is drawn
    num = int(load.rate * load.duration_s * 1.5 + 20 * (load.rate * load.duration_s) ** 0.5 + 10)
    times = schedule_s(num, load.rate, load.gamma_shape, seed, load.arrival)
    return times[times < load.duration_s].tolist()
