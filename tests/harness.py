"""Running real deployments from tests: `hopscope serve` as a child process on port 0, and a
small synchronous front-door client. Every server started here is stopped in `finally`."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc

ADDRESS_RE = re.compile(r"hopscope front door: (\S+)")


@dataclass
class Served:
    address: str
    process: subprocess.Popen[bytes]

    def stub(self) -> pb_grpc.TokenizerStub:
        return pb_grpc.TokenizerStub(grpc.insecure_channel(self.address))

    def describe(self) -> pb.DescribeResponse:
        with grpc.insecure_channel(self.address) as channel:
            return pb_grpc.TokenizerStub(channel).Describe(pb.DescribeRequest(), timeout=10)


def generate(
    address: str, timeout_s: float = 60.0, **fields: object
) -> tuple[list[int], str, pb.GenerateResponse]:
    """Run one Generate; returns (token_ids, text, last message)."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.TokenizerStub(channel)
        ids: list[int] = []
        text: list[str] = []
        last = pb.GenerateResponse()
        for response in stub.Generate(pb.GenerateRequest(**fields), timeout=timeout_s):  # type: ignore[arg-type]
            ids.extend(response.token_ids)
            text.append(response.text)
            last = response
    return ids, "".join(text), last


@contextlib.contextmanager
def serve(placement: str, *args: str, timeout_s: float = 120.0) -> Iterator[Served]:
    """`hopscope serve --no-ray --placement P --port 0 ARGS`; asserts a clean drain at exit."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deploy.cli",
            "serve",
            "--no-ray",
            "--placement",
            placement,
            "--port",
            "0",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        address = _wait_address(process, timeout_s)
        yield Served(address, process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, process.stderr.read().decode() if process.stderr else ""
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_address(process: subprocess.Popen[bytes], timeout_s: float) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline().decode()
            if match := ADDRESS_RE.search(line):
                return match.group(1)
        if process.poll() is not None:
            err = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"serve exited with {process.returncode}: {err}")
    raise TimeoutError("serve did not print its address in time")


def wait_until_idle(served: Served, timeout_s: float = 30.0) -> pb.SchedulerStats:
    """Poll Describe until the scheduler holds no sequence; returns the last stats."""
    deadline = time.monotonic() + timeout_s
    stats = served.describe().scheduler_stats
    while time.monotonic() < deadline:
        stats = served.describe().scheduler_stats
        if (
            stats.num_running == 0
            and stats.num_waiting == 0
            and stats.num_free_blocks == stats.num_blocks
        ):
            return stats
        time.sleep(0.1)
    return stats
