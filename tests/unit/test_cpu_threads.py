"""CPU split by OS thread name (experiment/cpu.py): the engine's share of the worker process."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import Any

import torch

from experiment.cpu import engine_cpu_s, thread_cpu_s
from services.common.identity import identify
from services.common.threads import ENGINE_THREAD_NAME
from services.worker.servicer import WorkerService


def _engine_service() -> WorkerService:
    # only what __init__ reads
    engine: Any = SimpleNamespace(
        info=SimpleNamespace(num_blocks=8),
        config=SimpleNamespace(engine_thread_count=0, kv_export_thread=False),
    )
    return WorkerService(engine, identify("worker", "127.0.0.1:0"))


def test_the_engine_thread_and_its_torch_threads_are_counted_as_the_engine() -> None:
    service = _engine_service()
    before_s = engine_cpu_s(os.getpid())

    def step() -> tuple[str, float]:
        started = time.thread_time()
        a = torch.randn(256, 256)
        while time.thread_time() - started < 0.2:  # CPU, not wall time: a loaded machine is fine
            a = torch.tanh(a @ a)
        return open("/proc/thread-self/comm").read().strip(), time.thread_time() - started

    try:
        name, own_cpu_s = service._executor.submit(step).result(timeout=120)
        assert name == ENGINE_THREAD_NAME
        by_name = thread_cpu_s(os.getpid())
        # the engine thread's own CPU at least (its OpenMP threads add theirs); the clock's tick
        # is 10 ms, so allow two ticks of rounding
        assert by_name[ENGINE_THREAD_NAME] - before_s >= own_cpu_s - 0.02
        assert engine_cpu_s(os.getpid()) == by_name[ENGINE_THREAD_NAME]
    finally:
        service.close()


def test_a_process_without_an_engine_has_no_engine_cpu() -> None:
    assert ENGINE_THREAD_NAME not in thread_cpu_s(os.getppid())
    assert engine_cpu_s(os.getppid()) == 0.0
