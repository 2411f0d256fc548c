"""What one hop costs: the same worker-step payload over every transport a placement can pick.

Variants, for a 32-sequence decode step and a 1-sequence one: a direct call (in-process async
function, what `inproc` does), gRPC over a Unix socket and over TCP loopback (unary RPC, and one
message round trip on an open bidi stream, which is how the scheduler talks to the worker), gRPC
over TCP through the emulated-link relay (deploy/relay.py) with 0.25 ms and 1 ms one-way delay,
and a Ray actor call (`ray.get`). The gRPC server runs in another process (services.common.server,
the one bootstrap) and the relay in a third one, like the network between two hosts. Variants
alternate in rounds so drift on a shared machine hits them all alike.

    python -m benchmarks.hop_cost [--rounds 20] [--iters 100] [--no-ray]
        [--out benchmarks/results/hop_cost.json]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from benchmarks.hop_notes import PREDICTION, build_notes
from deploy.relay import link_mechanism, netem_available
from diagnose.calibrate import echo_child
from diagnose.hop_echo import UNARY_METHOD, bidi_round_trip, echo_step, make_step_request
from protos import hopscope_pb2 as pb
from services.common.channels import create_channel

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "hop_cost.json"
PAYLOADS = {"step32": 32, "step1": 1}  # name -> sequences in the step
RELAY_DELAYS_MS = (0.0, 0.25, 1.0)  # 0: the relay's own cost, without emulated delay
CHILD_START_TIMEOUT_S = 30.0

RoundTrip = Callable[[pb.StepRequest], Awaitable[Any]]


@dataclass(slots=True)
class Variant:
    name: str
    transport: str  # inproc | uds | tcp | ray
    mode: str  # call | unary | bidi
    payload: str
    round_trip: RoundTrip
    link_delay_ms: float = 0.0
    is_relayed: bool = False
    samples_ns: list[int] = field(default_factory=list)


@dataclass(slots=True, frozen=True)
class HopCostConfig:
    rounds: int = 20
    iters_per_round: int = 100
    warmup_iters: int = 50
    use_ray: bool = True
    out: Path = DEFAULT_OUT

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.iters_per_round < 1 or self.warmup_iters < 0:
            raise ValueError("rounds and iters must be >= 1, warmup_iters >= 0")


# --- child processes: the echo server and the relays


# --- Ray: a local single-node cluster of our own, on its own loopback address


@contextmanager
def _ray_actor() -> Iterator[Any]:
    # DESIGN.md, "Ray on one machine"; Ray reads it when first imported, so set it before.
    os.environ["RAY_AUTH_MODE"] = "token"
    import ray

    temp_dir = tempfile.mkdtemp(prefix="hopscope-ray-")
    node_ip = f"127.0.0.{random.randint(100, 199)}"
    ray.init(
        _node_ip_address=node_ip,
        _temp_dir=temp_dir,
        num_cpus=1,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}},
    )
    try:
        actor_class: Any = ray.remote(EchoActor)
        actor = actor_class.remote()
        ray.get(actor.ready.remote(), timeout=60)
        yield actor
    finally:
        ray.shutdown()  # stops exactly the processes this ray.init started
        shutil.rmtree(temp_dir, ignore_errors=True)


class EchoActor:
    """The worker end of a Ray hop: protobuf objects in and out, pickled by Ray."""

    def ready(self) -> bool:
        return True

    def step(self, request: pb.StepRequest) -> pb.StepResponse:
        return echo_step(request)


# --- round trips


async def _direct(request: pb.StepRequest) -> pb.StepResponse:
    return echo_step(request)


def _unary(channel: grpc.aio.Channel) -> RoundTrip:
    call = channel.unary_unary(
        UNARY_METHOD,
        request_serializer=pb.StepRequest.SerializeToString,
        response_deserializer=pb.StepResponse.FromString,
    )

    async def round_trip(request: pb.StepRequest) -> pb.StepResponse:
        return await call(request)

    return round_trip


def _ray_round_trip(actor: Any) -> RoundTrip:
    import ray

    async def round_trip(request: pb.StepRequest) -> Any:
        return ray.get(actor.step.remote(request))  # blocking, as a synchronous caller pays it

    return round_trip


def _variants(
    servers: dict[str, str], relays: dict[str, str], actor: Any | None
) -> tuple[list[Variant], list[grpc.aio.Channel]]:
    edges: list[tuple[str, str, float | None]] = [
        ("uds", servers["uds"], None),
        ("tcp", servers["tcp"], None),
    ]
    edges += [("tcp", relays[str(d)], d) for d in RELAY_DELAYS_MS]
    channels: list[grpc.aio.Channel] = []
    variants: list[Variant] = []
    for payload in PAYLOADS:
        variants.append(Variant(f"direct/{payload}", "inproc", "call", payload, _direct))
        for transport, address, delay_ms in edges:
            link = "" if delay_ms is None else f"+relay{delay_ms:g}ms"
            for mode, make in (("unary", _unary), ("bidi", bidi_round_trip)):
                channel = create_channel(address)  # one connection per variant
                channels.append(channel)
                name = f"{transport}{link}/{mode}/{payload}"
                round_trip = make(channel)
                delay = delay_ms or 0.0
                is_relayed = delay_ms is not None
                variants.append(
                    Variant(name, transport, mode, payload, round_trip, delay, is_relayed)
                )
        if actor is not None:
            variants.append(
                Variant(f"ray/call/{payload}", "ray", "call", payload, _ray_round_trip(actor))
            )
    return variants, channels


async def _measure(variant: Variant, request: pb.StepRequest, num_iters: int, keep: bool) -> None:
    for _ in range(num_iters):
        started = time.perf_counter_ns()
        await variant.round_trip(request)
        if keep:
            variant.samples_ns.append(time.perf_counter_ns() - started)


async def _run_rounds(variants: list[Variant], config: HopCostConfig) -> None:
    requests = {name: make_step_request(num_seqs) for name, num_seqs in PAYLOADS.items()}
    for variant in variants:
        await _measure(variant, requests[variant.payload], config.warmup_iters, keep=False)
    for round_index in range(config.rounds):
        shift = round_index % len(variants)  # rotate the order: no variant always goes first
        for variant in variants[shift:] + variants[:shift]:
            await _measure(variant, requests[variant.payload], config.iters_per_round, keep=True)


# --- results


def _percentile_us(sorted_ns: list[int], q: float) -> float:
    index = max(0, math.ceil(q * len(sorted_ns)) - 1)  # nearest rank
    return round(sorted_ns[index] / 1e3, 1)


def _summaries(variants: list[Variant]) -> list[dict[str, Any]]:
    requests = {name: make_step_request(num_seqs) for name, num_seqs in PAYLOADS.items()}
    direct_p50 = {
        v.payload: _percentile_us(sorted(v.samples_ns), 0.5)
        for v in variants
        if v.mode == "call" and v.transport == "inproc"
    }
    rows = []
    for v in variants:
        ordered = sorted(v.samples_ns)
        p50 = _percentile_us(ordered, 0.5)
        rows.append(
            {
                "name": v.name,
                "transport": v.transport,
                "mode": v.mode,
                "payload": v.payload,
                "request_bytes": requests[v.payload].ByteSize(),
                "response_bytes": echo_step(requests[v.payload]).ByteSize(),
                "link_delay_ms": v.link_delay_ms,
                "link_mechanism": "relay" if v.is_relayed else "",
                "num_samples": len(ordered),
                "p50_us": p50,
                "p90_us": _percentile_us(ordered, 0.9),
                "p99_us": _percentile_us(ordered, 0.99),
                "mean_us": round(sum(ordered) / len(ordered) / 1e3, 1),
                "ratio_p50_vs_direct": round(p50 / max(direct_p50[v.payload], 0.1), 1),
            }
        )
    return rows


def _machine() -> dict[str, Any]:
    versions = {"python": platform.python_version(), "grpcio": grpc.__version__}
    try:
        versions["ray"] = importlib.metadata.version("ray")  # not imported: see _ray_actor
    except importlib.metadata.PackageNotFoundError:
        pass
    load_1m = round(os.getloadavg()[0], 2)  # other work on the machine inflates every figure
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "load_1m": load_1m, **versions}


async def _run(
    config: HopCostConfig, servers: dict[str, str], relays: dict[str, str], actor: Any
) -> list[Variant]:
    variants, channels = _variants(servers, relays, actor)
    try:
        await _run_rounds(variants, config)
    finally:
        for channel in channels:
            await channel.close()
    return variants


def run(config: HopCostConfig) -> dict[str, Any]:
    started = time.monotonic()
    machine = _machine()  # load average before the run
    with ExitStack() as stack:
        socket_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="hopscope-hop-"))
        servers = stack.enter_context(echo_child(["serve", "--uds", f"{socket_dir}/echo.sock"]))
        delays = ",".join(f"{d:g}" for d in RELAY_DELAYS_MS)
        relays = stack.enter_context(
            echo_child(["relay", "--target", servers["tcp"], "--delays-ms", delays])
        )
        relays = {str(float(d)): address for d, address in relays.items()}
        actor = stack.enter_context(_ray_actor()) if config.use_ray else None
        variants = asyncio.run(_run(config, servers, relays, actor))
    rows = _summaries(variants)
    load_after = round(os.getloadavg()[0], 2)
    load_note = (
        f"Machine load (1-min average) {machine['load_1m']} before and {load_after} after, on "
        f"{machine['cpus']} cores shared with other work: where it exceeds the core count every "
        "figure here is inflated, the ratios between variants less so. "
    )
    return {
        "benchmark": "hop_cost: one worker-step round trip over each transport",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        "config": {
            "rounds": config.rounds,
            "iters_per_round": config.iters_per_round,
            "warmup_iters": config.warmup_iters,
            "payloads": PAYLOADS,
            "processes": "client+direct+ray driver | gRPC echo server | relays (3 processes)",
        },
        "link": {
            "mechanism": "relay",
            "mechanism_a_deployment_would_use": link_mechanism(max(RELAY_DELAYS_MS), 0.0),
            "netem_available": netem_available(),
            "delays_ms": list(RELAY_DELAYS_MS),
            "note": "the relay variants always use deploy/relay.py, even where netem exists",
        },
        "variants": rows,
        "prediction": PREDICTION,
        "notes": load_note + build_notes(rows),
        "load_1m_after": load_after,
        "duration_s": round(time.monotonic() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hop_cost", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--iters", type=int, default=100, help="round trips per variant per round")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument(
        "--no-ray",
        action="store_true",
        help="skip the Ray actor variant (skipped anyway without Ray)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    use_ray = not args.no_ray and importlib.util.find_spec("ray") is not None
    config = HopCostConfig(args.rounds, args.iters, args.warmup, use_ray, args.out)
    result = run(config)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in result["variants"]:
        print(
            f"{row['name']:<28} p50 {row['p50_us']:>8.1f} µs  p90 {row['p90_us']:>8.1f}  p99 {row['p99_us']:>8.1f}  x{row['ratio_p50_vs_direct']}"
        )
    print(f"wrote {config.out} in {result['duration_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
