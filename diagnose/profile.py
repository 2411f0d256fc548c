"""`hopscope profile`: which code is hot.

- py-spy samples every service process (the pids Describe reports) for the window: a flame graph
  SVG and a speedscope JSON per service. Processes on another machine cannot be attached from
  here (py-spy reads the target's memory); they are listed as skipped.
- torch.profiler records the worker's steps for the same window through the Worker.Profile RPC
  on the worker's own address (Describe gives it; it is the address the scheduler uses, so it is
  reachable wherever the front door's Describe is); written as a Chrome trace JSON (Perfetto,
  chrome://tracing, TensorBoard). The `inproc` placement has no worker server: only py-spy.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console

RPC_GRACE_S = 30.0  # beyond --duration-s: the profiler's stop and the trace's export
PTRACE_HINT = (
    "py-spy could not attach to pid {pid} ({name}): reading another process's memory needs "
    "ptrace permission. Run hopscope profile as the same user with "
    "`sysctl kernel.yama.ptrace_scope=0`, as root, or in a container started with "
    "`--cap-add SYS_PTRACE`."
)


class ProfileError(RuntimeError):
    """Nothing could be profiled (no front door, no permission, ...)."""


@dataclass(slots=True)
class Target:
    name: str  # "tokenizer", "scheduler", "worker", or "tokenizer+scheduler+worker" (inproc)
    pid: int
    host: str


def py_spy_path() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise ProfileError("py-spy is not installed: pip install py-spy")
    return found


async def _describe(address: str) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    from protos import hopscope_pb2 as pb
    from protos import hopscope_pb2_grpc as pb_grpc
    from services.common.channels import create_channel

    async with create_channel(address) as channel:
        try:
            response = await pb_grpc.TokenizerStub(channel).Describe(
                pb.DescribeRequest(), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            raise ProfileError(
                f"cannot Describe the front door at {address}: {exc.details()}"
            ) from exc
    return MessageToDict(response, preserving_proto_field_name=True)


def targets(describe: dict[str, Any]) -> tuple[list[Target], list[str]]:
    """One target per local process (services sharing a process share one), and what is
    skipped because it runs on another machine."""
    by_pid: dict[int, Target] = {}
    skipped = []
    local_names = {socket.gethostname(), socket.getfqdn(), "localhost"}
    for service in describe.get("services", []):
        pid, name = int(service.get("pid", 0)), str(service.get("name", ""))
        host = str(service.get("host", ""))
        is_local = (host in local_names or host.startswith("127.")) and Path(
            f"/proc/{pid}"
        ).exists()
        if not pid or not is_local:
            skipped.append(f"{name} (pid {pid} on {host or '?'}): not a process on this machine")
            continue
        if pid in by_pid:
            by_pid[pid].name += f"+{name}"
        else:
            by_pid[pid] = Target(name, pid, host)
    return list(by_pid.values()), skipped


def _py_spy(target: Target, seconds: float, rate_hz: int, fmt: str, out: Path) -> subprocess.Popen:
    argv = [
        py_spy_path(),
        "record",
        "--pid",
        str(target.pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(rate_hz),
        "--format",
        fmt,
        "--output",
        str(out),
        "--nonblocking",  # never pause the service: its latency is what is being measured
        "--idle",  # a mostly idle front door still gets a graph (where its event loop waits)
    ]
    return subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=out.parent
    )


async def _torch_trace(address: str, seconds: float) -> tuple[bytes, int, str]:
    from protos import hopscope_pb2 as pb
    from protos import hopscope_pb2_grpc as pb_grpc
    from services.common.channels import create_channel

    chunks: list[bytes] = []
    num_steps, device = 0, ""
    async with create_channel(address) as channel:
        call = pb_grpc.WorkerStub(channel).Profile(
            pb.ProfileRequest(seconds=seconds), timeout=seconds + RPC_GRACE_S
        )
        async for response in call:
            chunks.append(response.chrome_trace_gz)
            num_steps, device = response.num_steps, response.device
    return gzip.decompress(b"".join(chunks)), num_steps, device


def _worker_address(describe: dict[str, Any]) -> str | None:
    for service in describe.get("services", []):
        if service.get("name") == "worker":
            address = str(service.get("address", ""))
            return None if address in ("", "inproc") else address
    return None


async def _profile(
    address: str, seconds: float, out_dir: Path, rate_hz: int, console: Console
) -> list[Path]:
    describe = await _describe(address)
    found, skipped = targets(describe)
    for line in skipped:
        console.print(f"skipped {line}", highlight=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    spies: list[tuple[Target, Path, subprocess.Popen]] = []
    for target in found:
        for fmt, suffix in (("flamegraph", ".svg"), ("speedscope", ".speedscope.json")):
            path = (out_dir / f"{target.name}{suffix}").resolve()
            spies.append((target, path, _py_spy(target, seconds, rate_hz, fmt, path)))
    worker = _worker_address(describe)
    if worker and not worker.startswith("unix:"):
        # the worker's TCP port wants the deployment's internal token (services/common/peer_auth)
        console.print(
            f"skipped torch.profiler on the worker at {worker}: over TCP its Profile call needs "
            "the deployment's internal token; only its Unix socket (same user) serves it without",
            highlight=False,
        )
        worker = None
    console.print(
        f"recording {seconds:g} s: py-spy on {len(found)} process(es)"
        + (", torch.profiler on the worker" if worker else ""),
        highlight=False,
    )
    written: list[Path] = []
    problems: list[str] = []
    if worker is not None:
        try:
            trace, num_steps, device = await _torch_trace(worker, seconds)
            path = out_dir / "worker.torch_trace.json"
            path.write_bytes(trace)
            written.append(path)
            console.print(f"worker: {num_steps} steps on {device} recorded", highlight=False)
        except grpc.aio.AioRpcError as exc:
            problems.append(f"torch.profiler on the worker at {worker}: {exc.details()}")
    else:
        console.print("no worker server (inproc placement): no torch.profiler trace")
    written += await asyncio.to_thread(_wait_spies, spies, seconds, problems)
    if problems:
        raise ProfileError("\n".join(problems) + _written_note(written))
    return written


def _wait_spies(
    spies: list[tuple[Target, Path, subprocess.Popen]], seconds: float, problems: list[str]
) -> list[Path]:
    written = []
    for target, path, process in spies:
        try:
            _, stderr = process.communicate(timeout=seconds + RPC_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
        if process.returncode == 0 and path.exists():
            written.append(path)
        elif "permission" in (stderr or "").lower() or "ptrace" in (stderr or "").lower():
            message = PTRACE_HINT.format(pid=target.pid, name=target.name)
            if message not in problems:
                problems.append(message)
        else:
            lines = [line for line in (stderr or "").splitlines() if line.strip()]
            cause = next((line for line in lines if line.startswith("Error")), " ".join(lines[:2]))
            problems.append(f"py-spy on {target.name} (pid {target.pid}) failed: {cause}")
    return written


def _written_note(written: list[Path]) -> str:
    if not written:
        return ""
    return "\n(written anyway: " + ", ".join(str(p) for p in written) + ")"


def profile(
    address: str, seconds: float, out_dir: Path, *, rate_hz: int = 100, console: Console
) -> list[Path]:
    """Profile the deployment behind `address` for `seconds`; the files written."""
    if os.name != "posix":
        raise ProfileError("hopscope profile needs Linux or macOS (py-spy attaches by pid)")
    return asyncio.run(_profile(address, seconds, out_dir, rate_hz, console))
