"""`--engine-threads auto`: the engine's intra-op (OpenMP) threads, chosen between steps from the
cores that other load leaves free.

Beside a busy process on 2 cores, two OpenMP threads ran the engine 6-7x slower than on an idle
machine (docs/performance.md): at every barrier of a step one thread spins while its peer waits
for a core the neighbour holds. One thread lost nothing there. So, every window of steps:

- at n threads, if the engine's threads spent more than `DEMOTE_WAITING_THREADS` thread-seconds
  per step-second on the run queue (runnable, no core: /proc/self/task/TID/schedstat), the cores
  they asked for are taken: run n - ceil(waiting) threads (at least one);
- below the most, if the engine's CPUs sat idle for at least `PROMOTE_IDLE_CORES` cores on
  average (/proc/stat), take them back, unless a promotion failed within `hold_s` (a failed try
  doubles the hold, up to `MAX_HOLD_S`: the price of probing a busy machine stays small).

The readings are the boundary (`Readings`): tests give their own.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from services.common.procfs import host_busy_s, usable_cores

log = logging.getLogger(__name__)

WINDOW_S = 0.25  # a decision at most this often (a tick of /proc/stat is 10 ms per CPU)
MIN_STEP_SHARE = 0.2  # of a window's wall time in steps, for its run-queue wait to mean anything
DEMOTE_WAITING_THREADS = 0.25  # engine threads waiting for a core, on average during steps
PROMOTE_IDLE_CORES = 0.7  # idle cores of this process's CPUs, on average over the window
REFRESH_WINDOWS = 8  # the engine's thread list is read again this often (and on every change)
MIN_HOLD_S = 1.0
MAX_HOLD_S = 32.0


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota."""
    cores = len(usable_cores()) or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, math.ceil(int(quota) / int(period))))


@dataclass(frozen=True, slots=True)
class Sample:
    """Cumulative counters at one instant."""

    engine_wait_s: float  # run-queue wait of the engine's threads
    idle_cpu_s: float  # this process's CPUs not busy (procfs.host_busy_s), since a start


class Readings:
    """The engine's threads' run-queue wait and the idle time of the CPUs it may use.

    The engine's threads are the stepping thread and the OpenMP threads it started: they
    inherit its OS name at creation (services/common/threads.py), so they are the tasks of this
    process with the stepping thread's name (procfs.read_sched sums every thread of a process:
    the tokenizer's and scheduler's too, in-process)."""

    def __init__(self) -> None:
        self._cores = usable_cores()
        self._since_s = time.monotonic()
        self._busy_since_s = host_busy_s(self._cores)
        self._tids: list[str] = []

    def refresh_threads(self) -> None:
        """Call on the stepping thread (after a thread-count change: new OpenMP threads)."""
        name = Path("/proc/thread-self/comm").read_text()
        tasks = Path("/proc/self/task")
        self._tids = [t.name for t in tasks.iterdir() if _read(t / "comm") == name]

    def sample(self) -> Sample:
        wait_ns = 0
        for tid in self._tids:
            fields = _read(Path("/proc/self/task", tid, "schedstat")).split()
            wait_ns += int(fields[1]) if len(fields) > 1 else 0  # a thread gone reads ""
        elapsed_s = time.monotonic() - self._since_s
        busy_s = host_busy_s(self._cores) - self._busy_since_s
        return Sample(wait_ns / 1e9, len(self._cores) * elapsed_s - busy_s)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def next_threads(threads: int, max_threads: int, waiting_threads: float, idle_cores: float) -> int:
    """The thread count for the next window (before the promotion hold)."""
    if threads > 1 and waiting_threads >= DEMOTE_WAITING_THREADS:
        return max(1, threads - math.ceil(waiting_threads))
    if threads < max_threads and idle_cores >= PROMOTE_IDLE_CORES:
        return min(max_threads, threads + max(1, int(idle_cores + 1 - PROMOTE_IDLE_CORES)))
    return threads


class ThreadGovernor:
    """Sets the stepping thread's torch threads between steps (`step_done`, on that thread)."""

    def __init__(
        self,
        max_threads: int,
        readings: Readings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_threads = max_threads
        self.threads = max_threads
        self._readings = readings or Readings()
        self._clock = clock
        self._started = False
        self._window_start_s = 0.0
        self._window_step_s = 0.0
        self._last = Sample(0.0, 0.0)
        self._hold_s = MIN_HOLD_S
        self._promoted_at_s: float | None = None
        self._demoted_at_s = -math.inf
        self._windows = 0
        self._dropped_before = False
        self.changes = 0

    def step_done(self, step_s: float) -> None:
        """After each step, on the thread that runs them: maybe a new thread count."""
        now = self._clock()
        if not self._started:  # the first step: this is the stepping thread
            self._set(self.threads)
            self._started = True
            self._start_window(now)
            return
        self._window_step_s += step_s
        if now - self._window_start_s < WINDOW_S:
            return
        sample = self._readings.sample()
        wall_s = now - self._window_start_s
        if self._window_step_s >= MIN_STEP_SHARE * wall_s:
            waiting = (sample.engine_wait_s - self._last.engine_wait_s) / self._window_step_s
            idle = (sample.idle_cpu_s - self._last.idle_cpu_s) / wall_s
            self._decide(now, next_threads(self.threads, self.max_threads, waiting, idle), waiting)
        self._start_window(now, sample)

    def _decide(self, now: float, threads: int, waiting: float) -> None:
        if threads < self.threads:
            failed_try = (
                self._promoted_at_s is not None and now - self._promoted_at_s < 4 * WINDOW_S
            )
            self._hold_s = min(MAX_HOLD_S, self._hold_s * 2) if failed_try else MIN_HOLD_S
            self._demoted_at_s, self._promoted_at_s = now, None
            # the first drop is worth a user's attention (the log's default level); then INFO
            level = logging.INFO if self._dropped_before else logging.WARNING
            self._dropped_before = True
            log.log(
                level,
                "engine threads %d -> %d: %.2f of them waiting for a core that other load holds "
                "(--engine-threads auto, docs/performance.md)",
                self.threads,
                threads,
                waiting,
            )
        elif threads > self.threads:
            if now - self._demoted_at_s < self._hold_s:
                return
            self._promoted_at_s = now
            log.info("engine threads %d -> %d: idle cores", self.threads, threads)
        else:
            return
        self._set(threads)

    def _set(self, threads: int) -> None:
        torch.set_num_threads(threads)
        self.threads = threads
        self.changes += 1
        self._readings.refresh_threads()

    def _start_window(self, now: float, sample: Sample | None = None) -> None:
        self._windows += 1
        if self._windows % REFRESH_WINDOWS == 0:  # OpenMP may have started threads since
            self._readings.refresh_threads()
            sample = None  # the sum is over other threads now
        self._last = sample or self._readings.sample()
        self._window_start_s = now
        self._window_step_s = 0.0
