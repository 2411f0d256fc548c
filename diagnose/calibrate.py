"""The wire cost of each transport on this machine: a grpc.aio bidi-stream echo of a worker-shaped
step between two processes, over a Unix socket, TCP loopback, and TCP through the emulated-link
relay with no delay (the relay's own copying, in the caller's process as deployments run it). Measured once per machine and stored under
`~/.hopscope/calibration.json`; `hopscope diagnose --calibrate` measures again.

The *idle* round trip is what the wire costs when nobody else wants the CPU. On a shared machine
the samples also hold time spent waiting for a core, so the stored figure is a low quantile
(`IDLE_QUANTILE`) of many round trips, alternating transports in rounds so drift hits all alike.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.lifecycle import Child, launch
from diagnose.hop_echo import bidi_round_trip, make_step_request

CALIBRATION_VERSION = 1
IDLE_QUANTILE = 0.25
BATCH_SIZES = (1, 32)  # step shapes measured; others are interpolated
TRANSPORTS = ("uds", "tcp", "relay")
CHILD_START_TIMEOUT_S = 30.0
_ADDRESSES_RE = re.compile(r"^\{.*\}$")  # the one JSON line the echo child prints


def calibration_path() -> Path:
    return Path(os.environ.get("HOPSCOPE_HOME", Path.home() / ".hopscope")) / "calibration.json"


@dataclass(slots=True, frozen=True)
class Calibration:
    """Idle bidi round trips in µs: transport -> batch size -> µs."""

    round_trip_us: dict[str, dict[int, float]]
    host: str
    measured_at: str

    def wire_ms(self, transport: str, batch_size: float) -> float:
        """The idle round trip of one step message over `transport` ("inproc": a direct call)."""
        by_size = self.round_trip_us.get(transport)
        if transport == "inproc" or not by_size:
            return 0.0
        sizes = sorted(by_size)
        low, high = sizes[0], sizes[-1]
        if high == low:
            return by_size[low] / 1e3
        weight = min(1.0, max(0.0, (batch_size - low) / (high - low)))
        return (by_size[low] + weight * (by_size[high] - by_size[low])) / 1e3

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "measured_at": self.measured_at,
            "idle_quantile": IDLE_QUANTILE,
            "round_trip_us": {
                t: {str(size): us for size, us in by_size.items()}
                for t, by_size in self.round_trip_us.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        round_trip_us = {
            t: {int(size): float(us) for size, us in by_size.items()}
            for t, by_size in data["round_trip_us"].items()
        }
        return cls(round_trip_us, str(data.get("host", "")), str(data.get("measured_at", "")))


def load_calibration(path: Path | None = None) -> Calibration | None:
    """This machine's stored calibration, or None when it was never measured here."""
    path = path or calibration_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entry = data["machines"][socket.gethostname()]
        if data.get("version") != CALIBRATION_VERSION:
            return None
        return Calibration.from_json(entry)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store_calibration(calibration: Calibration, path: Path | None = None) -> Path:
    path = path or calibration_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        machines = data.get("machines", {}) if data.get("version") == CALIBRATION_VERSION else {}
    except (OSError, ValueError, AttributeError):
        machines = {}
    machines[calibration.host] = calibration.to_json()
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"version": CALIBRATION_VERSION, "machines": machines}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def get_calibration(*, measure_if_missing: bool = True) -> Calibration | None:
    """The stored calibration; measured and stored first when missing (a few seconds)."""
    stored = load_calibration()
    if stored is not None or not measure_if_missing:
        return stored
    calibration = measure()
    store_calibration(calibration)
    return calibration


# --- measuring


@contextmanager
def echo_child(args: list[str]) -> Iterator[dict[str, str]]:
    """`python -P -m diagnose.hop_echo ARGS`: yields the addresses it prints; stopped on exit."""
    with echo_process(args) as (_child, addresses):
        yield addresses


@contextmanager
def echo_process(args: list[str]) -> Iterator[tuple[Child, dict[str, str]]]:
    """The hop echo child through the lifecycle kit (its own process group, output in a log
    file, ready once its JSON line is there within CHILD_START_TIMEOUT_S); stopped on exit,
    however the block ends. Its stdin stays open until then (it serves until stdin closes)."""
    with tempfile.TemporaryDirectory(prefix="hopscope-echo-") as log_dir:
        child = launch(
            ["-m", "diagnose.hop_echo", *args],
            name="the hop echo child",
            log_path=Path(log_dir) / "hop_echo.log",
            cwd=Path(tempfile.gettempdir()),  # -P: never imports from the working directory
            stdin_pipe=True,
        )
        try:
            line = child.wait_for_line(_ADDRESSES_RE, CHILD_START_TIMEOUT_S)
            yield child, json.loads(line.group(0))
        finally:
            child.stop()


async def _measure_async(
    addresses: dict[str, str], rounds: int, iters: int
) -> dict[str, dict[int, float]]:
    from services.common.channels import create_channel

    channels = {t: create_channel(address) for t, address in addresses.items()}
    trips = {t: bidi_round_trip(channel) for t, channel in channels.items()}
    requests = {size: make_step_request(size) for size in BATCH_SIZES}
    samples: dict[tuple[str, int], list[int]] = {(t, s): [] for t in trips for s in requests}
    try:
        for round_index in range(rounds + 1):  # round 0 warms up and is dropped
            order = (
                list(trips)[round_index % len(trips) :] + list(trips)[: round_index % len(trips)]
            )
            for transport in order:
                for size, request in requests.items():
                    for _ in range(iters):
                        started = time.perf_counter_ns()
                        await trips[transport](request)
                        if round_index > 0:
                            samples[(transport, size)].append(time.perf_counter_ns() - started)
    finally:
        for channel in channels.values():
            await channel.close()
    result: dict[str, dict[int, float]] = {t: {} for t in trips}
    for (transport, size), values in samples.items():
        ordered = sorted(values)
        result[transport][size] = round(ordered[int(IDLE_QUANTILE * (len(ordered) - 1))] / 1e3, 1)
    return result


def measure(rounds: int = 10, iters: int = 40) -> Calibration:
    """Measure every transport now (a few seconds; one child process)."""
    from deploy.relay import start_relay

    with ExitStack() as stack:
        socket_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="hopscope-cal-"))
        servers = stack.enter_context(
            echo_child(["serve", "--uds", f"{socket_dir}/echo.sock", "--host", "127.0.0.1"])
        )
        # the relay runs in the caller's process, as a deployment runs it in the scheduler's
        # (deploy/ray_actors.py): its threads share that process's interpreter
        relay = start_relay("127.0.0.1", servers["tcp"], delay_ms=0.0)
        stack.callback(relay.stop)
        addresses = {"uds": servers["uds"], "tcp": servers["tcp"], "relay": relay.address}
        round_trip_us = asyncio.run(_measure_async(addresses, rounds, iters))
    measured_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return Calibration(round_trip_us, socket.gethostname(), measured_at)
