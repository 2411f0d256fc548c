"""The one server bootstrap (services/common/server.py) with the one channel factory, as a
client meets them: health Check/Watch tell the truth, malformed bytes are the caller's fault,
idle streams survive keepalive, a failed bind leaves nothing running."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from protos import hopscope_pb2_grpc as pb_grpc
from services.common.channels import create_channel
from services.common.grpc_options import Keepalive
from services.common.health import HealthPublisher
from services.common.server import BindError, start_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _register_tokenizer(server: grpc.aio.Server) -> list[str]:
    # the generated base servicer (UNIMPLEMENTED): bytes that do not parse never reach it
    pb_grpc.add_TokenizerServicer_to_server(pb_grpc.TokenizerServicer(), server)
    return ["hopscope.v1.Tokenizer"]


def test_health_watch_streams_each_change() -> None:
    asyncio.run(_health_watch_streams_each_change())


async def _health_watch_streams_each_change() -> None:
    health = HealthPublisher(is_serving=True)
    server = await start_server("127.0.0.1:0", _register_tokenizer, health_publisher=health)
    try:
        async with create_channel(server.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            watch = stub.Watch(health_pb2.HealthCheckRequest(service="hopscope.v1.Tokenizer"))
            first = await asyncio.wait_for(watch.read(), 10)
            health.set_serving(False, part="downstream")
            second = await asyncio.wait_for(watch.read(), 10)
            health.set_serving(True, part="downstream")
            third = await asyncio.wait_for(watch.read(), 10)
            watch.cancel()
            check = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    finally:
        await server.stop(0)
    assert [first.status, second.status, third.status] == [SERVING, NOT_SERVING, SERVING]
    assert check.status == SERVING


def test_health_set_before_the_server_exists_is_published_and_drain_wins() -> None:
    asyncio.run(_health_set_before_the_server_exists_is_published_and_drain_wins())


async def _health_set_before_the_server_exists_is_published_and_drain_wins() -> None:
    health = HealthPublisher(is_serving=False)
    health.set_serving(True)  # e.g. the worker came up before the server started
    server = await start_server("127.0.0.1:0", _register_tokenizer, health_publisher=health)
    try:
        async with create_channel(server.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            before = (await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)).status
            await health.drain()
            health.set_serving(True)  # a late "worker is back" must not undo the drain
            await health.flush()
            after = (await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)).status
    finally:
        await server.stop(0)
    assert (before, after) == (SERVING, NOT_SERVING)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x0a\x03\xff\xfe\xfd",  # field 1 (prompt: string) holding bytes that are not UTF-8
        b"\x10\xff\xff",  # field 2 (max_tokens: varint) cut short
    ],
    ids=["bad-utf8", "truncated-varint"],
)
def test_malformed_request_bytes_are_invalid_argument(payload: bytes) -> None:
    asyncio.run(_malformed_request_bytes_are_invalid_argument(payload))


async def _malformed_request_bytes_are_invalid_argument(payload: bytes) -> None:
    server = await start_server("127.0.0.1:0", _register_tokenizer)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            call = channel.unary_stream(
                "/hopscope.v1.Tokenizer/Generate",
                request_serializer=lambda raw: raw,
                response_deserializer=lambda raw: raw,
            )(payload, timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in call:
                    pass
            describe = channel.unary_unary(
                "/hopscope.v1.Tokenizer/Describe",
                request_serializer=lambda raw: raw,
                response_deserializer=lambda raw: raw,
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught_unary:
                await describe(b"\x0a\x05ab", timeout=10)
    finally:
        await server.stop(0)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    assert caught_unary.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught_unary.value


def test_an_idle_stream_outlives_many_keepalive_pings() -> None:
    asyncio.run(_an_idle_stream_outlives_many_keepalive_pings())


async def _an_idle_stream_outlives_many_keepalive_pings() -> None:
    """Both ends configured from one Keepalive: the client pings every second (gRPC's floor)
    with a stream open and no data for 10 s. With gRPC's default server policy (one ping per
    5 minutes without data, 2 strikes) the server answers GOAWAY too_many_pings after ~7 s."""
    keepalive = Keepalive(time_ms=1_000, timeout_ms=5_000)
    server = await start_server("127.0.0.1:0", lambda _s: [], keepalive=keepalive)
    try:
        async with create_channel(server.address, keepalive=keepalive) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            requests: asyncio.Queue[reflection_pb2.ServerReflectionRequest] = asyncio.Queue()

            async def outgoing():  # type: ignore[no-untyped-def]
                while True:
                    yield await requests.get()

            stream = stub.ServerReflectionInfo(outgoing())
            ask = reflection_pb2.ServerReflectionRequest(list_services="")
            await requests.put(ask)
            first = await asyncio.wait_for(stream.read(), 10)
            await asyncio.sleep(10.0)  # ~10 client pings without data on an open stream
            await requests.put(ask)
            second = await asyncio.wait_for(stream.read(), 10)
            stream.cancel()
            health = health_pb2_grpc.HealthStub(channel)
            check = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    finally:
        await server.stop(0)
    assert second != grpc.aio.EOF, "the idle stream was closed (GOAWAY too_many_pings?)"
    assert first.list_services_response == second.list_services_response
    assert check.status == SERVING


def test_a_taken_port_is_a_bind_error() -> None:
    asyncio.run(_a_taken_port_is_a_bind_error())


async def _a_taken_port_is_a_bind_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(BindError, match=str(port)):
            await start_server(f"127.0.0.1:{port}", _register_tokenizer)
