"""Reading /proc (Linux): CPU time of processes and process trees, the run-queue wait and
involuntary context switches of their threads, the host's busy time, and the contention between
two readings. The one implementation below every layer that measures CPU: the experiment's
cpu.json (experiment/cpu.py builds on it) and `hopscope bench`'s busy-host check.

A process's CPU time is utime + stime of /proc/PID/stat (every thread of it), plus cutime +
cstime (its children that it waited for), in seconds.

Contention (`contention_document`, cpu.json's "contention", docs/metrics.md): how long each
service's threads waited on a run queue for a core (/proc/PID/task/*/schedstat, field 2, ns),
their involuntary context switches (/proc/PID/task/*/status), and the CPU that processes outside
the measured set used meanwhile: the busy time of the cores this process may run on (/proc/stat)
less the CPU of the "inside" process trees (the deployment, the client, the experiment itself),
with planted background load counted outside.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
# outside load, in cores, from which a round counts as run on a contended machine: a quarter of
# a core taken from the deployment is well above an idle host's background (docs/diagnosis.md)
CONTENDED_OUTSIDE_CORES = 0.25


class CpuReadError(OSError):
    """The process is gone (or /proc is not readable): its CPU time cannot be read."""


def read_cpu_s(pid: int, proc: Path = Path("/proc")) -> float:
    """utime + stime + cutime + cstime of `pid`, seconds (also readable while it is a zombie)."""
    fields = _stat_fields(pid, proc)
    # fields after the ")" that ends the command name: state is [0]; utime..cstime are [11:15]
    return sum(int(v) for v in fields[11:15]) / _TICKS_PER_S


def _stat_fields(pid: int, proc: Path) -> list[str]:
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError as exc:
        raise CpuReadError(f"cannot read the CPU time of pid {pid}: {exc.strerror or exc}") from exc
    return text[text.rindex(")") + 2 :].split()


def tree_pids(root: int, proc: Path = Path("/proc")) -> list[int]:
    """`root` and every live descendant (by the ppid in /proc/PID/stat)."""
    return _descendants(root, _children(proc))


def _children(proc: Path) -> dict[int, list[int]]:
    """ppid -> the live pids it parents, from one pass over /proc."""
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(_stat_fields(int(entry.name), proc)[1])
            except (CpuReadError, ValueError, IndexError):
                continue  # exited meanwhile
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def _descendants(root: int, children: dict[int, list[int]]) -> list[int]:
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return sorted(found)


def service_pids(describe: dict[str, Any], serve_pid: int = 0) -> dict[str, int]:
    """Process name -> pid from Describe: each service, services sharing a process joined
    ("pipeline" when all three share one, as inproc), plus the serve process itself when it is
    not one of them (the local supervisor, or the Ray driver; 0: not known)."""
    by_pid: dict[int, list[str]] = {}
    for service in describe.get("services", []):
        pid = int(service.get("pid") or 0)
        if pid:
            by_pid.setdefault(pid, []).append(str(service.get("name")))
    pids = {}
    for pid, names in by_pid.items():
        name = "pipeline" if len(names) >= 3 else "+".join(names)
        pids[name] = pid
    if serve_pid and serve_pid not in by_pid:
        pids["serve"] = serve_pid
    return pids


# ---------------------------------------------------------------------------- contention
@dataclass(frozen=True, slots=True)
class SchedReading:
    """A process's scheduler counters, summed over its live threads."""

    run_queue_wait_s: float  # time its threads were runnable but waited for a core
    involuntary_switches: int  # times a thread was taken off its core while it could run


def read_sched(pid: int, proc: Path = Path("/proc")) -> SchedReading:
    """Sum over /proc/PID/task/*: schedstat's second field (ns on a run queue) and status's
    nonvoluntary_ctxt_switches. CpuReadError when the process is gone."""
    try:
        tids = [p.name for p in (proc / str(pid) / "task").iterdir()]
    except OSError as exc:
        raise CpuReadError(f"cannot list the threads of pid {pid}: {exc.strerror or exc}") from exc
    wait_ns, switches = 0, 0
    for tid in tids:
        task = proc / str(pid) / "task" / tid
        try:
            schedstat, status = (task / "schedstat").read_text(), (task / "status").read_text()
        except OSError:
            continue  # the thread ended between the listing and the read
        wait_ns += int(schedstat.split()[1])
        switches += _status_field(status, "nonvoluntary_ctxt_switches")
    return SchedReading(wait_ns / 1e9, switches)


def _status_field(status: str, key: str) -> int:
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    return 0


def host_busy_s(cores: Iterable[int], proc: Path = Path("/proc")) -> float:
    """CPU seconds the given cores spent busy since boot (/proc/stat: user, nice, system and
    steal, a neighbour VM's use of the core; guest time is inside user). Interrupt time is left
    out: no process is charged with it, and on loopback it is mostly the deployment's own gRPC
    traffic, which would otherwise read as someone else's load."""
    wanted = {f"cpu{c}" for c in cores}
    ticks = 0
    for line in (proc / "stat").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] in wanted:
            user, nice, system, _idle, _iowait, _irq, _softirq, steal = map(int, fields[1:9])
            ticks += user + nice + system + steal
    return ticks / _TICKS_PER_S


def usable_cores() -> list[int]:
    """The cores this process may run on (its affinity: a container's cpuset, taskset)."""
    return sorted(os.sched_getaffinity(0))


@dataclass(frozen=True, slots=True)
class ContentionSnapshot:
    """One instant's readings; two of them (before and after a workload) make the document."""

    at_s: float  # time.monotonic()
    host_busy_s: float  # the usable cores' busy time
    inside_cpu_s: float  # CPU of the inside process trees (planted background load left out)
    services: dict[str, tuple[int, float, SchedReading]]  # NAME -> (pid, cpu_s, counters)


def contention_snapshot(
    services: dict[str, int],
    inside_roots: Iterable[int],
    outside_pids: Iterable[int] = (),
    proc: Path = Path("/proc"),
    cores: Iterable[int] | None = None,
) -> ContentionSnapshot:
    """Read the service processes' CPU and scheduler counters, the host's busy time and the CPU
    of every process under `inside_roots` (their trees; a reaped child's CPU is in its parent's
    cutime, so a child that exits in between still counts) except the trees of `outside_pids`
    (the planted neighbours, which are outside the deployment though this process started
    them), on `cores` (default: the usable ones). CpuReadError when a service process is gone."""
    children = _children(proc)
    outside = {p for pid in outside_pids for p in _descendants(pid, children)}
    inside = {p for root in inside_roots for p in _descendants(root, children)} - outside
    inside_cpu_s = 0.0
    for pid in inside:
        try:
            inside_cpu_s += read_cpu_s(pid, proc)
        except CpuReadError:
            continue  # exited between the listing and the read
    readings = {
        name: (pid, read_cpu_s(pid, proc), read_sched(pid, proc)) for name, pid in services.items()
    }
    busy_s = host_busy_s(usable_cores() if cores is None else cores, proc)
    return ContentionSnapshot(time.monotonic(), busy_s, inside_cpu_s, readings)


def contention_document(
    before: ContentionSnapshot, after: ContentionSnapshot, num_cores: int
) -> dict[str, Any]:
    """cpu.json's "contention" (the schema in docs/metrics.md): per service process its CPU,
    run-queue wait and involuntary switches over the window; their totals; the outside CPU."""
    processes: dict[str, dict[str, float | int]] = {}
    for name, (pid, cpu_after, sched_after) in after.services.items():
        _, cpu_before, sched_before = before.services[name]
        processes[name] = {
            "pid": pid,
            "cpu_s": round(cpu_after - cpu_before, 4),
            "run_queue_wait_s": round(
                sched_after.run_queue_wait_s - sched_before.run_queue_wait_s, 4
            ),
            "involuntary_switches": (
                sched_after.involuntary_switches - sched_before.involuntary_switches
            ),
        }
    wait_s = sum(float(p["run_queue_wait_s"]) for p in processes.values())
    cpu_s = sum(float(p["cpu_s"]) for p in processes.values())
    duration_s = max(after.at_s - before.at_s, 1e-9)
    busy_s = after.host_busy_s - before.host_busy_s
    outside_cpu_s = max(0.0, busy_s - (after.inside_cpu_s - before.inside_cpu_s))
    outside_cores = outside_cpu_s / duration_s
    return {
        "processes": processes,
        "run_queue_wait_s": round(wait_s, 4),
        "wait_share": round(wait_s / (wait_s + cpu_s), 4) if wait_s + cpu_s > 0 else 0.0,
        "outside_cpu_s": round(outside_cpu_s, 4),
        "outside_cores": round(outside_cores, 4),
        "num_cores": num_cores,
        "duration_s": round(duration_s, 4),
        "is_contended": outside_cores >= CONTENDED_OUTSIDE_CORES,
    }
