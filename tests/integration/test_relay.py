"""gRPC through the link-emulation relay: calls work, and the delay is on the path."""

from __future__ import annotations

import asyncio
import socket
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from deploy.relay import start_relay
from services.common.channels import create_channel
from services.common.server import start_server

DELAY_MS = 20.0  # large against loopback noise: the checks below are orders of magnitude


async def _through_relay(delay_ms: float) -> tuple[str, list[str], float]:
    server = await start_server("127.0.0.1:0", lambda _server: [])
    relay = start_relay("127.0.0.1", server.address, delay_ms=delay_ms)
    try:
        async with create_channel(relay.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)  # unary
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            ask = reflection_pb2.ServerReflectionRequest(list_services="")
            async with asyncio.timeout(10):
                stream = reflection.ServerReflectionInfo()  # bidi stream, one message at a time
                await stream.write(ask)
                first = await stream.read()
                started = time.perf_counter()
                await stream.write(ask)
                await stream.read()
                round_trip_s = time.perf_counter() - started
                await stream.done_writing()
        services = [s.name for s in first.list_services_response.service]
        return (
            health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status),
            services,
            round_trip_s,
        )
    finally:
        relay.stop()
        await server.stop(0)


def test_unary_and_bidi_grpc_calls_work_through_the_relay() -> None:
    status, services, _ = asyncio.run(_through_relay(delay_ms=0.5))
    assert status == "SERVING"
    assert "grpc.health.v1.Health" in services


def test_a_round_trip_through_the_relay_takes_at_least_twice_the_one_way_delay() -> None:
    _, _, round_trip_s = asyncio.run(_through_relay(delay_ms=DELAY_MS))
    assert round_trip_s >= 2 * DELAY_MS / 1e3


def test_a_raw_tcp_round_trip_pays_the_delay_each_way() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        target = f"127.0.0.1:{listener.getsockname()[1]}"
        with start_relay("127.0.0.1", target, delay_ms=DELAY_MS) as relay:
            host, port = relay.address.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=10) as client:
                server_side, _ = listener.accept()
                with server_side:
                    started = time.perf_counter()
                    client.sendall(b"ping")
                    assert server_side.recv(4) == b"ping"
                    server_side.sendall(b"pong")
                    assert client.recv(4) == b"pong"
                    round_trip_s = time.perf_counter() - started
    assert round_trip_s >= 2 * DELAY_MS / 1e3


def test_the_relay_stopping_is_seen_by_grpc_callers_as_unavailable() -> None:
    async def call_after_stop() -> grpc.StatusCode:
        server = await start_server("127.0.0.1:0", lambda _server: [])
        relay = start_relay("127.0.0.1", server.address, delay_ms=0.0)
        try:
            async with create_channel(relay.address) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
                relay.stop()
                try:
                    await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
                return grpc.StatusCode.OK
        finally:
            await server.stop(0)

    assert asyncio.run(call_after_stop()) == grpc.StatusCode.UNAVAILABLE
