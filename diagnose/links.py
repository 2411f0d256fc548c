"""The scheduler -> worker link and its wire cost: the transport's idle round trip (calibrated on
this machine), the emulated link's delay (one way, in each direction: `hopscope cluster up
--delay-ms d` adds 2·d to every round trip, see deploy/relay.py) and the bytes of one step's
messages over the emulated rate (paced in each direction)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from diagnose.calibrate import Calibration
from diagnose.hop_echo import echo_step, make_step_request
from diagnose.steps import StepSample

_SPAN_TRANSPORT = {"unix": "uds", "tcp": "tcp", "inproc": "inproc"}


@dataclass(slots=True, frozen=True)
class HopLink:
    """One edge: transport ("inproc" | "uds" | "tcp"), whether the relay shapes it, and how."""

    transport: str
    is_relayed: bool = False
    delay_ms: float = 0.0  # one way, each direction
    rate_mbit: float = 0.0  # 0 = unlimited

    @property
    def calibration_key(self) -> str:
        return "relay" if self.is_relayed else self.transport

    def with_delay(self, delay_ms: float, rate_mbit: float = 0.0) -> HopLink:
        """This link moved across an emulated link of `delay_ms` (TCP through the relay)."""
        is_shaped = delay_ms > 0 or rate_mbit > 0
        transport = "tcp" if is_shaped else self.transport
        return replace(
            self, transport=transport, is_relayed=is_shaped, delay_ms=delay_ms, rate_mbit=rate_mbit
        )

    def describe(self) -> str:
        shaping = f", relay {self.delay_ms:g} ms one way" if self.is_relayed else ""
        rate = f", {self.rate_mbit:g} Mbit/s" if self.rate_mbit > 0 else ""
        return f"{self.transport}{shaping}{rate}"


def step_message_bytes(batch_size: float) -> tuple[int, int]:
    """(request, response) bytes of one decode step of `batch_size` sequences on the wire."""
    num_seqs = max(1, round(batch_size))
    request = make_step_request(num_seqs)
    return request.ByteSize(), echo_step(request).ByteSize()


def wire_ms(link: HopLink, calibration: Calibration | None, batch_size: float) -> float:
    """What the wire costs one step: idle round trip + 2·delay + bytes / rate each way."""
    idle_ms = calibration.wire_ms(link.calibration_key, batch_size) if calibration else 0.0
    pacing_ms = 0.0
    if link.rate_mbit > 0:
        request_bytes, response_bytes = step_message_bytes(batch_size)
        pacing_ms = (request_bytes + response_bytes) * 8 / (link.rate_mbit * 1e6) * 1e3
    return idle_ms + 2 * link.delay_ms + pacing_ms


def scheduler_worker_link(
    describe: dict[str, Any] | None, samples: Sequence[StepSample]
) -> HopLink:
    """From Describe's scheduler -> worker edge; the step spans' transport when it is missing."""
    for edge in (describe or {}).get("edges", []):
        if edge.get("from") == "scheduler" and edge.get("to") == "worker":
            return HopLink(
                transport=str(edge.get("transport") or "tcp"),
                is_relayed=edge.get("link") == "relay",
                delay_ms=float(edge.get("delayMs", edge.get("delay_ms", 0.0)) or 0.0),
                rate_mbit=float(edge.get("rateMbit", edge.get("rate_mbit", 0.0)) or 0.0),
            )
    transports = {s.transport for s in samples}
    transport = _SPAN_TRANSPORT.get(transports.pop(), "tcp") if len(transports) == 1 else "tcp"
    return HopLink(transport)
