"""Issue 10, end to end: health that tells the truth, and the chaos suite's short mode."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness import generate, serve

REPO = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _HealthWatch:
    """Every status the front door's health Watch streams, recorded from a thread."""

    def __init__(self, address: str) -> None:
        self.statuses: list[int] = []
        self._changed = threading.Condition()
        self._channel = grpc.insecure_channel(address)
        self._call = health_pb2_grpc.HealthStub(self._channel).Watch(
            health_pb2.HealthCheckRequest()
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for response in self._call:
                with self._changed:
                    self.statuses.append(response.status)
                    self._changed.notify_all()
        except grpc.RpcError:
            pass

    def wait_for(self, statuses: list[int], timeout_s: float) -> None:
        """Until the recorded statuses end with `statuses`; a wait that runs out fails."""
        with self._changed:
            is_done = self._changed.wait_for(
                lambda: self.statuses[-len(statuses) :] == statuses, timeout_s
            )
        assert is_done, f"health went {self.statuses}, expected it to end with {statuses}"

    def close(self) -> None:
        self._call.cancel()
        self._channel.close()


def _check(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status


def test_front_door_health_is_serving_exactly_while_the_scheduler_is() -> None:
    with serve("colocated") as served:  # waits for SERVING: a front door stuck NOT_SERVING fails
        assert _check(served.address) == SERVING
        watch = _HealthWatch(served.address)
        try:
            watch.wait_for([SERVING], 10)
            pid = next(s.pid for s in served.describe().services if s.name == "scheduler")
            os.kill(pid, signal.SIGKILL)
            watch.wait_for([NOT_SERVING], 30)  # while the scheduler is down
            watch.wait_for([NOT_SERVING, SERVING], 120)  # restarted by serve
        finally:
            watch.close()
        assert _check(served.address) == SERVING
        ids, _, _ = generate(served.address, prompt="back", max_tokens=3, ignore_eos=True)
        assert len(ids) == 3


def test_chaos_short_mode_passes(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    result = subprocess.run(
        [sys.executable, "-P", str(REPO / "benchmarks" / "chaos.py"), "--short", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    summary = json.loads(out.read_text())
    scenarios = {row["scenario"] for row in summary["rows"]}
    assert {"fuzz", "cancels", "overload 5x", "non-reader", "kill scheduler"} <= scenarios
    assert summary["passed"]
