"""CPU time of processes from /proc, and CPU µs per output token: the one implementation of this
accounting (the experiment's cpu.json, `hopscope diagnose`'s host_cpu rule and issue 14 use it).

A process's CPU time is utime + stime of /proc/PID/stat (every thread of it), plus cutime + cstime
(its children that it waited for), in seconds. Readings are taken before and after the workload;
the difference is what the workload cost the process.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


class CpuReadError(OSError):
    """The process is gone (or /proc is not readable): its CPU time cannot be read."""


def read_cpu_s(pid: int, proc: Path = Path("/proc")) -> float:
    """utime + stime + cutime + cstime of `pid`, seconds (also readable while it is a zombie)."""
    fields = _stat_fields(pid, proc)
    # fields after the ")" that ends the command name: state is [0]; utime..cstime are [11:15]
    return sum(int(v) for v in fields[11:15]) / _TICKS_PER_S


def process_state(pid: int, proc: Path = Path("/proc")) -> str:
    """The one-letter state (R, S, D, Z...)."""
    return _stat_fields(pid, proc)[0]


def _stat_fields(pid: int, proc: Path) -> list[str]:
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError as exc:
        raise CpuReadError(f"cannot read the CPU time of pid {pid}: {exc.strerror or exc}") from exc
    return text[text.rindex(")") + 2 :].split()


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
