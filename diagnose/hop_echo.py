"""The far end of one hop: a worker-shaped echo, and the child processes that host it (a gRPC
server) and the emulated links in front of it (relays). `hopscope diagnose --calibrate` measures
each transport's idle round trip with it, and benchmarks/hop_cost.py every transport side by side.

The echo answers a StepRequest with the StepResponse a worker would send (one sampled token per
sequence), without a model, so the hop's own cost is all that is measured. Child processes print
one JSON line with their addresses, then serve until stdin closes or SIGTERM.

    python -m diagnose.hop_echo serve --uds /tmp/x.sock --host 127.0.0.1
    python -m diagnose.hop_echo relay --target 127.0.0.1:PORT --delays-ms 0.25,1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from protos import hopscope_pb2 as pb
from services.common.convert import StepEncoder
from services.common.types import SamplingParams, SeqStep

ECHO_SERVICE = "hopscope.bench.Echo"
UNARY_METHOD = f"/{ECHO_SERVICE}/Step"
STREAM_METHOD = f"/{ECHO_SERVICE}/StepStream"


def make_step_request(num_seqs: int, step_id: int = 0) -> pb.StepRequest:
    """A decode step of `num_seqs` sequences: one token each, a 512-token context in 32 blocks,
    in the packed encoding with whole block tables (the first step of a Step stream)."""
    seqs = [
        SeqStep(
            seq_id=1000 + i,
            token_ids=[17 + i],
            num_computed=511,
            block_table=list(range(32 * i, 32 * i + 32)),
            sampling=SamplingParams(temperature=0.7, top_p=0.9, top_k=50, seed=i),
        )
        for i in range(num_seqs)
    ]
    trace_context = {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}
    return StepEncoder("packed").encode(step_id, seqs, trace_context)


def echo_step(request: pb.StepRequest) -> pb.StepResponse:
    """What a worker answers to `request`, minus the model."""
    sampled = [seq_id for seq_id, s in zip(request.packed.seq_ids, request.packed.sample) if s]
    sampled += [seq.seq_id for seq in request.seqs if seq.sample]  # the nested encoding
    return pb.StepResponse(
        step_id=request.step_id,
        seq_ids=sampled,
        token_ids=[int(seq_id % 32000) for seq_id in sampled],
        step_ms=0.0,
    )


async def _unary(request: pb.StepRequest, _context: grpc.aio.ServicerContext) -> pb.StepResponse:
    return echo_step(request)


async def _stream(
    requests: AsyncIterator[pb.StepRequest], _context: grpc.aio.ServicerContext
) -> AsyncIterator[pb.StepResponse]:
    async for request in requests:
        yield echo_step(request)


def register_echo(server: grpc.aio.Server) -> list[str]:
    """The `register` callback for services.common.server.start_server."""
    handlers = {
        "Step": grpc.unary_unary_rpc_method_handler(
            _unary,
            request_deserializer=pb.StepRequest.FromString,
            response_serializer=pb.StepResponse.SerializeToString,
        ),
        "StepStream": grpc.stream_stream_rpc_method_handler(
            _stream,
            request_deserializer=pb.StepRequest.FromString,
            response_serializer=pb.StepResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ECHO_SERVICE, handlers),))
    return [ECHO_SERVICE]


RoundTrip = Callable[[pb.StepRequest], Awaitable[Any]]


def bidi_round_trip(channel: grpc.aio.Channel) -> RoundTrip:
    """One message each way on one long-lived bidi stream, as the scheduler talks to a worker."""
    open_stream = channel.stream_stream(
        STREAM_METHOD,
        request_serializer=pb.StepRequest.SerializeToString,
        response_deserializer=pb.StepResponse.FromString,
    )
    stream: list[Any] = []

    async def round_trip(request: pb.StepRequest) -> Any:
        if not stream:
            stream.append(open_stream())
        await stream[0].write(request)
        return await stream[0].read()

    return round_trip


async def _until_stopped() -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)

    def on_stdin() -> None:
        if not sys.stdin.read(1):  # closed by the parent
            stopped.set()

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    await stopped.wait()


async def _serve(uds_path: str, host: str) -> None:
    from services.common.server import start_server

    uds = await start_server(f"unix:{uds_path}", register_echo)
    tcp = await start_server(f"{host}:0", register_echo)
    print(json.dumps({"uds": uds.address, "tcp": tcp.address}), flush=True)
    try:
        await _until_stopped()
    finally:
        await uds.stop(0)
        await tcp.stop(0)


async def _relay(listen_host: str, target: str, delays_ms: list[float]) -> None:
    from deploy.relay import start_relay

    relays = [start_relay(listen_host, target, delay_ms) for delay_ms in delays_ms]
    print(json.dumps({str(d): r.address for d, r in zip(delays_ms, relays)}), flush=True)
    try:
        await _until_stopped()
    finally:
        for relay in relays:
            relay.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diagnose.hop_echo")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="echo server on a Unix socket and on TCP")
    serve.add_argument("--uds", required=True, help="Unix socket path")
    serve.add_argument("--host", default="127.0.0.1")
    relay = sub.add_parser("relay", help="relays with the given one-way delays to --target")
    relay.add_argument("--target", required=True, help="HOST:PORT")
    relay.add_argument("--listen-host", default="127.0.0.1")
    relay.add_argument("--delays-ms", required=True, help="comma-separated one-way delays")
    args = parser.parse_args(argv)
    if args.command == "serve":
        asyncio.run(_serve(args.uds, args.host))
    else:
        delays_ms = [float(d) for d in args.delays_ms.split(",")]
        asyncio.run(_relay(args.listen_host, args.target, delays_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
