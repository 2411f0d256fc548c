"""Runs one point in this process or in `--workers N` client processes, and merges the records.

Each worker takes every N-th request of the one seeded schedule, so the load is the same whatever
N is. Workers share one monotonic clock (CLOCK_MONOTONIC is system-wide on Linux): the parent
fixes the start time once every worker is ready, so their schedules line up.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue
import resource
import signal
import time
from collections.abc import Callable, MutableSequence, Sequence
from dataclasses import dataclass
from typing import Any

from loadgen.arrivals import open_loop_schedule
from loadgen.config import BenchConfig
from loadgen.metrics import RequestRecord
from loadgen.runner import NUM_COUNTERS, Runner, SlicePlan, now_s

_START_DELAY_S = 0.2  # between "all ready" and the first request: lets every worker get to it
_READY_TIMEOUT_S = 60.0

ProgressHook = Callable[[Sequence[Sequence[float]]], None]


@dataclass(slots=True)
class PointResult:
    records: list[RequestRecord]
    num_scheduled: int
    started_at_unix_s: float
    is_interrupted: bool
    # CPU of the client's processes from the first send to the end (start-up, request building
    # and result writing excluded): every thread, so gRPC's poller is counted too
    client_cpu_s: float = 0.0


def plan_slices(config: BenchConfig) -> tuple[list[SlicePlan], int]:
    """Split the point's schedule over the workers; returns the plans and the number scheduled."""
    load, num_workers = config.load, config.load.num_workers
    if load.is_open_loop:
        due_s = open_loop_schedule(load, config.workload.seed)
        caps = _split(load.max_concurrency, num_workers)
        indices = list(range(len(due_s)))
        plans = [
            SlicePlan(w, indices[w::num_workers], due_s[w::num_workers], caps[w])
            for w in range(num_workers)
        ]
        return plans, len(due_s)
    lanes = _split(load.concurrency, num_workers)
    if load.num_requests is None:
        return [SlicePlan(w, None, None, lanes[w], num_workers) for w in range(num_workers)], 0
    all_indices = list(range(load.num_requests))
    plans = [SlicePlan(w, all_indices[w::num_workers], None, lanes[w]) for w in range(num_workers)]
    return plans, load.num_requests


def _split(total: int | None, num_parts: int) -> list[int | None]:
    if total is None:
        return [None] * num_parts
    return [total // num_parts + (1 if w < total % num_parts else 0) for w in range(num_parts)]


def run_point(
    config: BenchConfig, is_tracing: bool, on_tick: ProgressHook | None = None
) -> PointResult:
    plans, num_scheduled = plan_slices(config)
    started_at = time.time()
    if len(plans) == 1:
        records, is_interrupted, cpu_s = _run_here(config, plans[0], is_tracing, on_tick)
    else:
        records, is_interrupted, cpu_s = _run_in_processes(config, plans, is_tracing, on_tick)
    records.sort(key=lambda r: r.index)
    if not num_scheduled:  # closed loop by duration: as many as were sent
        num_scheduled = max((r.index for r in records), default=-1) + 1
    return PointResult(records, num_scheduled, started_at, is_interrupted, cpu_s)


def process_cpu_s() -> float:
    """User + system CPU seconds of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_here(
    config: BenchConfig, plan: SlicePlan, is_tracing: bool, on_tick: ProgressHook | None
) -> tuple[list[RequestRecord], bool, float]:
    counters: list[float] = [0.0] * NUM_COUNTERS

    async def main() -> tuple[list[RequestRecord], bool, float]:
        runner = Runner(config, plan, counters, is_tracing)
        runner.prepare()
        ticker = asyncio.create_task(_tick(on_tick, [counters])) if on_tick else None
        cpu_before_s = process_cpu_s()
        try:
            records = await runner.run()
        finally:
            if ticker:
                ticker.cancel()
        return records, runner.is_stopped, process_cpu_s() - cpu_before_s

    return asyncio.run(main())


async def _tick(on_tick: ProgressHook, counters: list[MutableSequence[float]]) -> None:
    while True:
        on_tick(counters)
        await asyncio.sleep(0.25)


def _run_in_processes(
    config: BenchConfig, plans: list[SlicePlan], is_tracing: bool, on_tick: ProgressHook | None
) -> tuple[list[RequestRecord], bool, float]:
    ctx = mp.get_context("spawn")  # no fork: grpc and OTel threads do not survive a fork
    counters = [ctx.Array("d", NUM_COUNTERS, lock=False) for _ in plans]
    ready = [ctx.Event() for _ in plans]
    go, stop = ctx.Event(), ctx.Event()
    start_at = ctx.Value("d", 0.0, lock=False)
    results: Any = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(config, plan, is_tracing, counters[i], ready[i], go, stop, start_at, results),
            daemon=True,
        )
        for i, plan in enumerate(plans)
    ]
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        for proc in procs:
            proc.start()
        _release_when_ready(ready, go, start_at, procs)
        records, cpu_s = _collect(results, procs, counters, on_tick)
        is_interrupted = stop.is_set()
    finally:
        signal.signal(signal.SIGINT, previous)
        stop.set()  # a failing parent still ends its workers
        go.set()
        for proc in procs:
            proc.join(timeout=5)
    return records, is_interrupted, cpu_s


def _release_when_ready(ready: list[Any], go: Any, start_at: Any, procs: list[Any]) -> None:
    deadline = now_s() + _READY_TIMEOUT_S
    while not all(event.is_set() for event in ready):
        if now_s() > deadline or not all(p.is_alive() for p in procs):
            raise RuntimeError("a loadgen worker process did not start; see its error above")
        time.sleep(0.02)
    start_at.value = now_s() + _START_DELAY_S
    go.set()


def _collect(
    results: Any, procs: list[Any], counters: list[Any], on_tick: ProgressHook | None
) -> tuple[list[RequestRecord], float]:
    """Every worker's records and the sum of their CPU seconds."""
    records: list[RequestRecord] = []
    cpu_s = 0.0
    num_pending = len(procs)
    while num_pending:
        if on_tick:
            on_tick(counters)
        try:
            part = results.get(timeout=0.25)
        except queue.Empty:
            if not any(p.is_alive() for p in procs):
                raise RuntimeError("a loadgen worker process died without results") from None
            continue
        part_records, part_cpu_s = part
        records.extend(part_records)
        cpu_s += part_cpu_s
        num_pending -= 1
    return records, cpu_s


def _worker_main(
    config: BenchConfig,
    plan: SlicePlan,
    is_tracing: bool,
    counters: Any,
    ready: Any,
    go: Any,
    stop: Any,
    start_at: Any,
    results: Any,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    if is_tracing:
        from tracing.setup import configure_tracing

        configure_tracing("hopscope-loadgen", {"hopscope.loadgen.worker": plan.worker})
    try:
        work = _worker_run(config, plan, is_tracing, counters, ready, go, stop, start_at)
        results.put(asyncio.run(work))
    finally:
        if is_tracing:
            from tracing.setup import shutdown_tracing

            shutdown_tracing()


async def _worker_run(
    config: BenchConfig,
    plan: SlicePlan,
    is_tracing: bool,
    counters: Any,
    ready: Any,
    go: Any,
    stop: Any,
    start_at: Any,
) -> tuple[list[RequestRecord], float]:
    runner = Runner(config, plan, counters, is_tracing)
    runner.prepare()
    ready.set()
    await asyncio.to_thread(go.wait)
    watcher = asyncio.create_task(_watch_stop(stop, runner))
    cpu_before_s = process_cpu_s()
    try:
        return await runner.run(start_at.value), process_cpu_s() - cpu_before_s
    finally:
        watcher.cancel()


async def _watch_stop(stop: Any, runner: Runner) -> None:
    while not stop.is_set():
        await asyncio.sleep(0.05)
    runner.stop()
