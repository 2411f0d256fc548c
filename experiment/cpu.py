"""CPU time of processes from /proc, and CPU µs per output token: the one implementation of this
accounting (the experiment's cpu.json, `hopscope diagnose`'s host_cpu rule and issue 14 use it).

A process's CPU time is utime + stime of /proc/PID/stat (every thread of it), plus cutime + cstime
(its children that it waited for), in seconds (services/common/procfs.py reads it). Readings are
taken before and after the workload; the difference is what the workload cost the process.

Within a process, CPU splits by thread: /proc/PID/task/TID/stat per thread, grouped by the
thread's OS name (comm). The worker names its engine thread ENGINE_THREAD_NAME and the torch
intra-op threads it starts inherit that name, so `thread_cpu_s(pid)[ENGINE_THREAD_NAME]` is the
engine's share (model, sampling, KV cache writes: everything `Engine.step` runs, plus OpenMP
spin-waiting) and the rest of the process is the service around it (gRPC, protobuf, asyncio,
spans). Threads that already exited are not in /proc/PID/task: read before and after a workload
while the threads live.

The /proc readers themselves (a process's CPU, its threads' run-queue wait, the host's busy
time, contention between two readings: cpu.json's "contention") live in services/common/procfs.py,
below every layer that measures CPU (`hopscope bench` checks for a busy host with them too).
"""

from __future__ import annotations

import os
from pathlib import Path

from services.common.procfs import (
    CONTENDED_OUTSIDE_CORES,
    ContentionSnapshot,
    CpuReadError,
    contention_document,
    contention_snapshot,
    read_cpu_s,
    service_pids,
    tree_pids,
    usable_cores,
)
from services.common.threads import ENGINE_THREAD_NAME

__all__ = [  # the /proc readers, here for the experiment's modules (one import site)
    "CONTENDED_OUTSIDE_CORES",
    "ContentionSnapshot",
    "CpuReadError",
    "contention_document",
    "contention_snapshot",
    "cpu_document",
    "cpu_us_per_token",
    "engine_cpu_s",
    "read_cpu_s",
    "service_pids",
    "thread_cpu_s",
    "tree_cpu_s",
    "tree_pids",
    "usable_cores",
]

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def thread_cpu_s(pid: int, proc: Path = Path("/proc")) -> dict[str, float]:
    """utime + stime of the live threads of `pid`, seconds, summed per OS thread name."""
    by_name: dict[str, float] = {}
    try:
        tids = [p.name for p in (proc / str(pid) / "task").iterdir()]
    except OSError as exc:
        raise CpuReadError(f"cannot list the threads of pid {pid}: {exc.strerror or exc}") from exc
    for tid in tids:
        try:
            text = (proc / str(pid) / "task" / tid / "stat").read_text()
        except OSError:
            continue  # the thread ended between the listing and the read
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        by_name[name] = by_name.get(name, 0.0) + sum(int(v) for v in fields[11:13]) / _TICKS_PER_S
    return by_name


def engine_cpu_s(pid: int, proc: Path = Path("/proc")) -> float:
    """CPU seconds of the engine's threads in `pid` (0.0 when it runs no engine)."""
    return thread_cpu_s(pid, proc).get(ENGINE_THREAD_NAME, 0.0)


def cpu_us_per_token(cpu_s: float, output_tokens: int) -> float | None:
    """CPU microseconds per output token; None without tokens."""
    return cpu_s * 1e6 / output_tokens if output_tokens > 0 else None


def cpu_document(
    processes: dict[str, dict[str, float | int]], output_tokens: int, duration_s: float
) -> dict[str, object]:
    """cpu.json: {"processes": {NAME: {"pid", "cpu_s"}}, "output_tokens", "duration_s",
    "cpu_us_per_token": {NAME: us}} (NAME: tokenizer, scheduler, worker, pipeline, serve, client)."""
    return {
        "processes": processes,
        "output_tokens": output_tokens,
        "duration_s": duration_s,
        "cpu_us_per_token": {
            name: cpu_us_per_token(float(p["cpu_s"]), output_tokens)
            for name, p in processes.items()
        },
    }


def tree_cpu_s(root: int, proc: Path = Path("/proc")) -> float:
    """CPU seconds of the process tree under `root` (an external server's API process and its
    engine children): a child reaped in between moves its time into its parent's cutime, so a
    before/after difference still counts it."""
    total = read_cpu_s(root, proc)
    for pid in tree_pids(root, proc):
        if pid == root:
            continue
        try:
            total += read_cpu_s(pid, proc)
        except CpuReadError:
            continue  # exited between the listing and the read
    return total
