"""Arrival processes: seeded, with the statistics their names promise."""

from __future__ import annotations

import numpy as np
import pytest

from loadgen.arrivals import gaps_s, open_loop_schedule, schedule_s
from loadgen.config import LoadConfig

NUM_GAPS = 50_000


def test_poisson_gaps_have_mean_and_variance_of_an_exponential() -> None:
    rate = 40.0
    gaps = gaps_s(NUM_GAPS, rate, shape=1.0, seed=7)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)
    assert gaps.var() == pytest.approx(1 / rate**2, rel=0.06)


@pytest.mark.parametrize("shape", [0.25, 4.0])
def test_gamma_burstiness_sets_the_coefficient_of_variation(shape: float) -> None:
    rate = 10.0
    gaps = gaps_s(NUM_GAPS, rate, shape=shape, seed=3)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.04)
    assert gaps.std() / gaps.mean() == pytest.approx(1 / np.sqrt(shape), rel=0.06)


def test_burstier_arrivals_bunch_more_requests_in_a_window() -> None:
    bursty = schedule_s(NUM_GAPS, 100.0, shape=0.2, seed=1)
    smooth = schedule_s(NUM_GAPS, 100.0, shape=5.0, seed=1)
    per_window_bursty = np.bincount(bursty.astype(int)).std()
    per_window_smooth = np.bincount(smooth.astype(int)).std()
    assert per_window_bursty > 2 * per_window_smooth


def test_same_seed_same_schedule_other_seed_other_schedule() -> None:
    a = schedule_s(100, 5.0, 1.0, seed=11)
    assert np.array_equal(a, schedule_s(100, 5.0, 1.0, seed=11))
    assert not np.array_equal(a, schedule_s(100, 5.0, 1.0, seed=12))


def test_constant_arrivals_are_evenly_spaced_from_zero() -> None:
    times = schedule_s(5, 4.0, 1.0, seed=0, arrival="constant")
    assert times.tolist() == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_schedule_by_duration_stays_inside_it() -> None:
    load = LoadConfig(rate=50.0, duration_s=4.0)
    times = open_loop_schedule(load, seed=2)
    assert times[0] == 0.0 and max(times) < 4.0
    assert len(times) == pytest.approx(200, rel=0.3)
    assert sorted(times) == times
