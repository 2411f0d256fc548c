"""`--engine-threads auto`: the engine's threads follow the cores that other load leaves free
(services/worker/thread_governor.py). The readings are scripted; the thread counts are real."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from services.config import HopscopeConfig
from services.worker.engine import Engine
from services.worker.thread_governor import (
    WINDOW_S,
    Readings,
    Sample,
    ThreadGovernor,
    available_cores,
    next_threads,
)


def test_threads_waiting_for_a_core_give_it_up_and_idle_cores_are_taken_back() -> None:
    assert next_threads(2, 2, waiting_threads=0.6, idle_cores=0.0) == 1  # a busy neighbour
    assert next_threads(2, 2, waiting_threads=1.7, idle_cores=0.0) == 1  # never below one
    assert next_threads(2, 2, waiting_threads=0.05, idle_cores=0.0) == 2  # noise
    assert next_threads(16, 16, waiting_threads=0.5, idle_cores=0.0) == 15
    assert next_threads(1, 2, waiting_threads=0.0, idle_cores=0.95) == 2  # the neighbour left
    assert next_threads(1, 2, waiting_threads=0.0, idle_cores=0.3) == 1
    assert next_threads(2, 8, waiting_threads=0.0, idle_cores=3.9) == 6
    assert next_threads(7, 8, waiting_threads=0.0, idle_cores=3.9) == 8


class Scripted(Readings):
    """Readings that advance by what the test says happened in each window."""

    def __init__(self) -> None:
        self.now = Sample(0.0, 0.0)
        self.refreshed = 0

    def refresh_threads(self) -> None:
        self.refreshed += 1

    def sample(self) -> Sample:
        return self.now

    def window(self, wait_s: float, idle_s: float) -> None:
        self.now = Sample(self.now.engine_wait_s + wait_s, self.now.idle_cpu_s + idle_s)


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def _windows(
    governor: ThreadGovernor, readings: Scripted, clock: Clock, n: int, wait_s: float, idle_s: float
) -> list[int]:
    """n windows of steps filling the window's wall time; the thread count after each."""
    counts = []
    for _ in range(n):
        readings.window(wait_s, idle_s)
        clock.now_s += WINDOW_S
        governor.step_done(WINDOW_S)
        counts.append(torch.get_num_threads())
    return counts


def _on_own_thread(fn):  # type: ignore[no-untyped-def]
    # torch's thread count is the calling thread's: run where no other test's count lives
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result(timeout=60)


def test_a_busy_neighbour_drops_a_thread_and_a_failed_probe_waits_longer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="services.worker.thread_governor")

    def scenario() -> list[int]:
        readings, clock = Scripted(), Clock()
        governor = ThreadGovernor(2, readings, clock)
        governor.step_done(0.0)  # the first step sets the most
        busy = _windows(governor, readings, clock, 2, wait_s=0.2, idle_s=0.0)
        # idle right after: held MIN_HOLD_S (1 s) after the drop, then back to 2
        idle = _windows(governor, readings, clock, 5, wait_s=0.0, idle_s=0.25)
        # 2 threads still wait: down again, and this failed try doubles the hold to 2 s
        again = _windows(governor, readings, clock, 1, wait_s=0.2, idle_s=0.0)
        held = _windows(governor, readings, clock, 8, wait_s=0.0, idle_s=0.25)
        return [*busy, *idle, *again, *held]

    counts = _on_own_thread(scenario)
    assert counts[:2] == [1, 1]
    assert counts[2:7] == [1, 1, 2, 2, 2]  # dropped at 0.25 s, back at 1.25 s
    assert counts[7] == 1
    assert counts[8:15] == [1] * 7 and counts[15] == 2  # held 2 s this time
    # the first drop tells the user why (the worker logs warnings); the later ones are INFO
    drops = [r for r in caplog.records if "waiting for a core" in r.getMessage()]
    assert [r.levelname for r in drops] == ["WARNING", "INFO"]


def test_an_idle_engine_decides_nothing() -> None:
    def scenario() -> int:
        readings, clock = Scripted(), Clock()
        governor = ThreadGovernor(2, readings, clock)
        governor.step_done(0.0)
        for _ in range(10):  # steps of 1 ms in 0.25 s windows: the wait means nothing
            readings.window(0.2, 0.0)
            clock.now_s += WINDOW_S
            governor.step_done(0.001)
        return governor.threads

    assert _on_own_thread(scenario) == 2


def test_readings_count_the_stepping_thread_and_its_openmp_threads() -> None:
    def scenario() -> tuple[list[str], str, Sample]:
        torch.set_num_threads(2)
        a = torch.randn(512, 512)
        for _ in range(20):  # parallel regions: the team's threads start with this name
            a = torch.tanh(a @ a)
        readings = Readings()
        readings.refresh_threads()
        return readings._tids, str(threading.get_native_id()), readings.sample()

    tids, own, sample = _on_own_thread(scenario)
    assert own in tids
    assert sample.engine_wait_s >= 0.0 and sample.idle_cpu_s > 0.0


def test_the_engine_runs_auto_on_cpu_and_fixed_counts_as_given() -> None:
    assert 1 <= available_cores()
    auto = Engine(HopscopeConfig.of(model="tiny", kv_cache_mb=8))
    assert auto.threads is not None and auto.threads.max_threads == available_cores()
    fixed = Engine(HopscopeConfig.of(model="tiny", kv_cache_mb=8, engine_threads="0"))
    assert fixed.threads is None


@pytest.mark.parametrize("bad", [-1])
def test_a_negative_thread_count_is_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="--engine-threads must be >= 0"):
        HopscopeConfig.of(model="tiny", engine_threads=str(bad))
