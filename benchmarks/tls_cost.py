"""What safety costs (issue 16, "Cost"): mutual TLS and the internal token, per hop and per token.

Part 1, per hop: the worker-step echo of benchmarks/hop_cost.py over TCP loopback, served by
the one server bootstrap in a child process and reached through the one channel factory, as
  plain     no TLS, no token (what every internal hop was before issue 16)
  token     the per-deployment internal token (call metadata when a call opens, checked by a
            server interceptor with hmac.compare_digest)
  mtls      mutual TLS + the token: what an internal TCP hop is with --tls-dir
for a one-message round trip on an open bidi stream (the scheduler->worker shape) and a unary
call, 32-sequence and 1-sequence decode steps, plus `connect`: a new channel, its handshake and
one unary call (what a reconnect costs). Variants alternate in rounds.

Part 2, per token: `hopscope serve --no-ray --placement colocated-tcp` with and without
--tls-dir under the same closed-loop load (`hopscope bench`, --tls-ca for the TLS arm), a
fresh server per run, the two arms alternated in rounds; the ratio of output tokens/s per round.

    python -m benchmarks.tls_cost [--hop-rounds 10] [--hop-iters 200] [--rounds 3]
        [--num-requests 128] [--out benchmarks/results/tls_cost.json]
    python -m benchmarks.tls_cost serve --tls-dir DIR      # the echo child (internal)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from benchmarks import common
from deploy.lifecycle import launch
from diagnose.hop_echo import STREAM_METHOD, UNARY_METHOD, make_step_request, register_echo
from protos import hopscope_pb2 as pb
from services.common.channels import create_channel
from services.common.peer_auth import token_metadata
from services.common.tls import TlsMaterial, load_tls

ARMS = ("plain", "token", "mtls")
PAYLOADS = {"step32": 32, "step1": 1}
ECHO_START_TIMEOUT_S = 60.0
_ADDRESSES_RE = re.compile(r"^\{.*\}$")  # the one JSON line the echo child prints
TOKEN = "benchmark-token-" + "x" * 27  # the length of a real one (secrets.token_urlsafe(32))
PREDICTION = (
    "Per hop: on an open stream TLS adds one AES-GCM seal + open per message each way; for a "
    "~3 KB step32 message that is a few us of crypto plus a little extra framing, against a "
    "~150-300 us loopback gRPC round trip in Python: expect mTLS +5-15% on bidi/step32, less "
    "in relative terms on unary (more fixed Python cost per call). The token is a metadata "
    "entry per call: ~0 on the stream (sent once when it opens), a few us per unary call "
    "(the server interceptor's check). A new connection pays the TLS 1.3 handshake with ECDSA P-256 "
    "certificates both ways: ~1-3 ms vs ~0.5 ms plain. Per token: one bidi message pair per "
    "step per hop, a ~10-20 ms step on the tiny model under 32-way batching: the pipeline's "
    "tokens/s with TLS at 97-100% of without."
)


# ---------------------------------------------------------------------------- the echo child
async def _serve_echo(tls_dir: str) -> None:
    from services.common.server import start_server

    tls = load_tls(tls_dir, "worker")
    servers = {
        "plain": await start_server("127.0.0.1:0", register_echo),
        "token": await start_server("127.0.0.1:0", register_echo, internal_token=TOKEN),
        "mtls": await start_server("127.0.0.1:0", register_echo, tls=tls, internal_token=TOKEN),
    }
    print(json.dumps({arm: s.address for arm, s in servers.items()}), flush=True)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(), stopped.set)  # the parent closed it
    loop.add_signal_handler(signal.SIGTERM, stopped.set)  # Child.stop
    await stopped.wait()
    for server in servers.values():
        await server.stop(0)


@contextmanager
def _echo_child(tls_dir: Path) -> Iterator[dict[str, str]]:
    """The echo child through the lifecycle kit (its own process group, output in a log file next
    to the certificates, ready once its JSON line is there); stopped however the block ends."""
    child = launch(
        # the repository's benchmarks package, like benchmarks/hop_cost.py's children
        ["-m", "benchmarks.tls_cost", "serve", "--tls-dir", str(tls_dir)],
        name="the tls_cost echo child",
        log_path=tls_dir.parent / "echo.log",
        env=common.repo_env(),
        cwd=common.REPO,
        stdin_pipe=True,  # it serves until its stdin closes
    )
    try:
        line = child.wait_for_line(_ADDRESSES_RE, ECHO_START_TIMEOUT_S)
        yield json.loads(line.group(0))
    finally:
        child.stop()


# ---------------------------------------------------------------------------- per hop
@dataclass(slots=True)
class HopVariant:
    arm: str
    mode: str  # bidi | unary | connect
    payload: str
    address: str
    tls: TlsMaterial | None
    token: str
    channel: grpc.aio.Channel | None = None
    stream: Any = None
    samples_ns: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.arm}/{self.mode}/{self.payload}"

    def open(self) -> grpc.aio.Channel:
        return create_channel(self.address, tls=self.tls)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return token_metadata(self.token)

    async def round_trip(self, request: pb.StepRequest) -> None:
        if self.mode == "connect":
            async with self.open() as channel:
                await _unary_call(channel)(request, metadata=self.metadata)
            return
        if self.channel is None:
            self.channel = self.open()
        if self.mode == "unary":
            await _unary_call(self.channel)(request, metadata=self.metadata)
            return
        if self.stream is None:
            self.stream = self.channel.stream_stream(
                STREAM_METHOD,
                request_serializer=pb.StepRequest.SerializeToString,
                response_deserializer=pb.StepResponse.FromString,
            )(metadata=self.metadata)
        await self.stream.write(request)
        await self.stream.read()


def _unary_call(channel: grpc.aio.Channel) -> Any:
    return channel.unary_unary(
        UNARY_METHOD,
        request_serializer=pb.StepRequest.SerializeToString,
        response_deserializer=pb.StepResponse.FromString,
    )


def _hop_variants(addresses: dict[str, str], tls: TlsMaterial) -> list[HopVariant]:
    variants = []
    for payload in PAYLOADS:
        for mode in ("bidi", "unary", "connect"):
            if mode == "connect" and payload != "step1":
                continue  # the handshake does not depend on the payload
            for arm in ARMS:
                token = "" if arm == "plain" else TOKEN
                material = tls if arm == "mtls" else None
                variants.append(HopVariant(arm, mode, payload, addresses[arm], material, token))
    return variants


async def _measure_hops(variants: list[HopVariant], rounds: int, iters: int) -> None:
    requests = {name: make_step_request(n) for name, n in PAYLOADS.items()}

    def iterations(v: HopVariant) -> int:
        return max(1, iters // 10) if v.mode == "connect" else iters

    for v in variants:  # warm-up: connections, streams, code paths
        for _ in range(iterations(v) // 2 + 1):
            await v.round_trip(requests[v.payload])
    for round_index in range(rounds):
        shift = round_index % len(variants)  # rotated: no variant always goes first
        for v in variants[shift:] + variants[:shift]:
            for _ in range(iterations(v)):
                started = time.perf_counter_ns()
                await v.round_trip(requests[v.payload])
                v.samples_ns.append(time.perf_counter_ns() - started)
    for v in variants:
        if v.stream is not None:
            v.stream.cancel()
        if v.channel is not None:
            await v.channel.close()


def _hop_rows(variants: list[HopVariant]) -> list[dict[str, Any]]:
    plain_p50 = {
        (v.mode, v.payload): statistics.median(v.samples_ns) for v in variants if v.arm == "plain"
    }
    rows = []
    for v in variants:
        p50_ns = statistics.median(v.samples_ns)
        base = plain_p50[(v.mode, v.payload)]
        rows.append(
            {
                "name": v.name,
                "arm": v.arm,
                "mode": v.mode,
                "payload": v.payload,
                "num_samples": len(v.samples_ns),
                "p50_us": round(p50_ns / 1e3, 1),
                "p90_us": round(sorted(v.samples_ns)[int(0.9 * (len(v.samples_ns) - 1))] / 1e3, 1),
                "added_p50_us_vs_plain": round((p50_ns - base) / 1e3, 1),
                "ratio_p50_vs_plain": round(p50_ns / base, 3),
            }
        )
    return rows


def run_hops(tls_dir: Path, rounds: int, iters: int) -> list[dict[str, Any]]:
    tls = load_tls(tls_dir, "scheduler")  # the caller's identity, as on the real hop
    with _echo_child(tls_dir) as addresses:
        variants = _hop_variants(addresses, tls)
        asyncio.run(_measure_hops(variants, rounds, iters))
    return _hop_rows(variants)


# ---------------------------------------------------------------------------- per token
def run_pipeline(args: argparse.Namespace, tls_dir: Path, work_dir: Path) -> dict[str, Any]:
    serve_args = ["--placement", "colocated-tcp", "--model", args.model]
    bench_args = [*common.load_bench_args(args), "--output-len", str(args.output_len)]
    variants = [
        common.Variant("plain", serve_args, bench_args),
        common.Variant(
            "tls",
            [*serve_args, "--tls-dir", str(tls_dir)],
            [*bench_args, "--tls-ca", str(tls_dir / "ca.crt")],
        ),
    ]
    rounds = common.run_rounds(variants, args.rounds, work_dir)
    for record in rounds:  # CPU per token: far less sensitive to the machine's other load
        if "figures" in record:
            tokens = record["figures"]["completed"] * args.output_len
            cpu_us = record["server_cpu_s_incl_startup"] * 1e6 / tokens
            record["figures"]["server_cpu_us_per_token_incl_startup"] = round(cpu_us, 1)
    cpu_added = _paired_differences(rounds, "server_cpu_us_per_token_incl_startup")
    ratios = common.paired_ratios(rounds, "tls", "plain", "output_tok_s")
    tpot_ratios = common.paired_ratios(rounds, "tls", "plain", "tpot_p50_ms")
    return {
        "rounds": rounds,
        "medians": common.medians(rounds, ["plain", "tls"]),
        "ratios_per_round_tls_over_plain_output_tok_s": ratios,
        "median_ratio_tls_over_plain_output_tok_s": round(statistics.median(ratios), 4)
        if ratios
        else None,
        "ratios_per_round_tls_over_plain_tpot_p50": tpot_ratios,
        "server_cpu_us_per_token_tls_minus_plain_per_round": cpu_added,
        "median_server_cpu_us_per_token_tls_minus_plain": round(statistics.median(cpu_added), 1)
        if cpu_added
        else None,
    }


def _paired_differences(rounds: list[dict[str, Any]], figure: str) -> list[float]:
    """tls - plain of `figure` within each round."""
    out = []
    for index in sorted({r["round"] for r in rounds}):
        arms = {
            r["variant"]: r["figures"] for r in rounds if r["round"] == index and "figures" in r
        }
        if "tls" in arms and "plain" in arms:
            out.append(round(arms["tls"][figure] - arms["plain"][figure], 1))
    return out


# ---------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tls_cost")
    sub = parser.add_subparsers(dest="command")
    echo = sub.add_parser("serve", help="the echo child (started by the benchmark)")
    echo.add_argument("--tls-dir", required=True)
    parser.add_argument("--hop-rounds", type=int, default=10)
    parser.add_argument(
        "--hop-iters", type=int, default=200, help="round trips per variant per round"
    )
    # --rounds: pipeline rounds (0 skips the pipeline)
    common.add_load_args(parser, rounds=3, num_requests=128, warmup_requests=16, concurrency=32)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--out", type=Path, default=common.RESULTS_DIR / "tls_cost.json")
    parser.add_argument("--notes", default="", help="interpretation, stored in notes.result")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "serve":
        asyncio.run(_serve_echo(args.tls_dir))
        return 0
    from deploy.certs import write_certs

    started = time.monotonic()
    machine = common.machine_info()
    with tempfile.TemporaryDirectory(prefix="hopscope-tls-cost-") as tmp:
        tls_dir = Path(tmp) / "tls"
        write_certs(tls_dir, [])
        hops = run_hops(tls_dir, args.hop_rounds, args.hop_iters)
        for row in hops:
            common.log(
                f"{row['name']:<22} p50 {row['p50_us']:>8.1f} us  x{row['ratio_p50_vs_plain']}"
            )
        pipeline = run_pipeline(args, tls_dir, Path(tmp)) if args.rounds else {}
    payload = {
        "benchmark": "tls_cost: mutual TLS and the internal token, per hop and per token",
        "issue": 16,
        "command": "python -m benchmarks.tls_cost " + " ".join(argv or sys.argv[1:]),
        "machine": machine | {"load_avg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "config": {
            "hop_rounds": args.hop_rounds,
            "hop_iters_per_round": args.hop_iters,
            "hop_server": "services.common.server.start_server in a child process, TCP loopback",
            "hop_client": "services.common.channels.create_channel (the scheduler's identity)",
            "certificates": "hopscope certs: EC P-256, TLS 1.3 (gRPC's default)",
            "pipeline": {
                "placement": "colocated-tcp (both internal hops TCP)",
                "model": args.model,
                "rounds": args.rounds,
                "concurrency": args.concurrency,
                "input_len": args.input_len,
                "output_len": args.output_len,
                "num_requests_measured_per_run": args.num_requests,
                "order": "rotated every round, a fresh server per run",
            },
        },
        "hops": hops,
        "pipeline": pipeline,
        "notes": {
            "prediction": PREDICTION,
            "result": args.notes,
            "caveat": "a shared 2-core machine (other helpers' work on it): absolute figures are "
            "indicative; the ratios of alternating rounds less so",
        },
        "duration_s": round(time.monotonic() - started, 1),
    }
    common.write_json(args.out, payload)
    common.log(
        f"pipeline tls/plain tok/s per round {pipeline.get('ratios_per_round_tls_over_plain_output_tok_s')}; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
