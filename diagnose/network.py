"""Honest network attribution: a hop's CLIENT − SERVER time = wire + wait.

Wire is what the link costs with nobody else on the CPU: the transport's calibrated idle round
trip plus the emulated link (2·delay + bytes/rate). Wait is the rest — the message sat in a socket
buffer until a busy event loop read it — and belongs to the host's CPU, not to the network. When
the measured hop is shorter than the wire estimate (calibration on a busier moment, noise), the
whole hop is wire and wait is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from diagnose.calibrate import Calibration
from diagnose.links import HopLink, wire_ms
from diagnose.signals import Signals
from tracing.decompose import NET_SCHEDULER_WORKER


@dataclass(slots=True, frozen=True)
class HopSplit:
    name: str  # the decomposition's component name, e.g. "network.scheduler_worker"
    transport: str
    per: str  # "step" (scheduler <-> worker, every step) or "request" (once per request)
    hop_ms: float
    wire_ms: float

    @property
    def wait_ms(self) -> float:
        return max(0.0, self.hop_ms - self.wire_ms)

    def to_json(self) -> dict[str, float | str]:
        return {
            "transport": self.transport,
            "per": self.per,
            "hop_ms": round(self.hop_ms, 4),
            "wire_ms": round(self.wire_ms, 4),
            "wait_ms": round(self.wait_ms, 4),
        }


def split_hops(signals: Signals, calibration: Calibration | None) -> list[HopSplit]:
    """Every hop of the run, split into wire and wait."""
    splits = []
    cycle = signals.cycle
    if cycle is not None:
        wire = wire_ms(signals.link, calibration, cycle.mean_batch_size)
        transport = signals.link.describe()
        hop = cycle.hop_ms
        splits.append(HopSplit(NET_SCHEDULER_WORKER, transport, "step", hop, min(hop, wire)))
    for name, hop in signals.edge_hop_ms.items():
        transport = signals.edge_transport.get(name, "tcp")
        if transport == "inproc":
            continue
        # Generate is a server stream and Submit rides a shared stream: each crosses once each
        # way per request on its hop, so one idle round trip of a one-sequence message
        wire = wire_ms(HopLink(transport), calibration, 1)
        splits.append(HopSplit(name, transport, "request", hop, min(hop, wire)))
    return splits


def wire_ms_per_token(splits: list[HopSplit], signals: Signals) -> float:
    """Wire time one output token pays: every step's wire, plus the per-request hops spread
    over the request's output tokens."""
    total = 0.0
    for split in splits:
        if split.per == "step":
            total += split.wire_ms * signals.decode_steps_per_token
        elif signals.mean_output_tokens > 0:
            total += split.wire_ms / signals.mean_output_tokens
    return total


def wait_ms_per_token(splits: list[HopSplit], signals: Signals) -> float:
    total = 0.0
    for split in splits:
        if split.per == "step":
            total += split.wait_ms * signals.decode_steps_per_token
        elif signals.mean_output_tokens > 0:
            total += split.wait_ms / signals.mean_output_tokens
    return total
