"""The internal token through the one server bootstrap and channel factory: a real server on
port 0 answers a client with the deployment's token and refuses, UNAUTHENTICATED, one without it
or with another; health checks stay open."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc
from services.common.channels import create_channel
from services.common.peer_auth import (
    is_loopback,
    new_internal_token,
    token_metadata,
    warn_if_exposed,
)
from services.common.server import start_server


async def _reflect(address: str, token: str) -> str:
    """A bidi-stream call (reflection), like the pipeline's internal streams. The server refuses
    a stream before reading it; when that beats the client's first write, grpc's client turns the
    failed write into a local INTERNAL (the server's status is lost, seen once in CI under load):
    such a probe is tried again, at most 5 times."""
    for _ in range(5):
        code = await _reflect_once(address, token)
        if code != "INTERNAL":
            break
    return code


async def _reflect_once(address: str, token: str) -> str:
    async with create_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(metadata=token_metadata(token))
        try:
            await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            answer = await asyncio.wait_for(call.read(), 10)
            await call.done_writing()
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        code = await call.code()
        if code != grpc.StatusCode.OK:
            return str(code.name)
        return "OK" if answer.list_services_response.service else "EMPTY"


async def _health(address: str) -> str:
    async with create_channel(address) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


async def _calls(token: str) -> dict[str, str]:
    server = await start_server("127.0.0.1:0", lambda _server: [], internal_token=token)
    try:
        return {
            "right": await _reflect(server.address, token),
            "none": await _reflect(server.address, ""),
            "wrong": await _reflect(server.address, new_internal_token()),
            "health_without_token": await _health(server.address),
        }
    finally:
        await server.stop(0)


def test_internal_token_is_required_except_for_health() -> None:
    assert asyncio.run(_calls(new_internal_token())) == {
        "right": "OK",
        "none": "UNAUTHENTICATED",
        "wrong": "UNAUTHENTICATED",
        "health_without_token": "SERVING",
    }


def test_tokens_are_random_and_hidden_from_config_reprs() -> None:
    from services.config import HopscopeConfig
    from services.worker.service_config import WorkerServiceConfig

    token = new_internal_token()
    assert len(token) >= 40 and token != new_internal_token()
    settings = HopscopeConfig.of(internal_token=token)
    assert token not in repr(WorkerServiceConfig(settings)) and token not in repr(settings)


@pytest.mark.parametrize(
    ("address", "is_protected", "warns"),
    [
        ("0.0.0.0:50051", False, True),
        ("[::]:50051", False, True),
        (":50051", False, True),
        ("0.0.0.0:50051", True, False),  # TLS or a key
        ("127.0.0.1:50051", False, False),
        ("127.0.3.7:50051", False, False),  # a local cluster's node address
        ("localhost:50051", False, False),
        ("[::1]:50051", False, False),
        ("unix:/tmp/x.sock", False, False),
    ],
)
def test_unprotected_non_loopback_listeners_warn(
    address: str, is_protected: bool, warns: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert warn_if_exposed("the front door", address, is_protected=is_protected) is warns
    assert ("without TLS or a key" in caplog.text) is warns


def test_loopback_hosts() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("")


class _ProfilingWorker(pb_grpc.WorkerServicer):
    async def Profile(self, request: pb.ProfileRequest, context: object) -> AsyncIterator[Any]:
        yield pb.ProfileResponse(num_steps=3, device="cpu")


def _register_worker(server: grpc.aio.Server) -> list[str]:
    pb_grpc.add_WorkerServicer_to_server(_ProfilingWorker(), server)
    return ["hopscope.v1.Worker"]


async def _profile_without_token(address: str) -> str:
    server = await start_server(address, _register_worker, internal_token=new_internal_token())
    try:
        async with create_channel(server.address) as channel:
            call = pb_grpc.WorkerStub(channel).Profile(pb.ProfileRequest(seconds=1), timeout=10)
            try:
                return f"OK {[r.num_steps async for r in call]}"
            except grpc.aio.AioRpcError as exc:
                return str(exc.code().name)
    finally:
        await server.stop(0)


def test_worker_profile_without_the_token_only_over_the_unix_socket(tmp_path: Path) -> None:
    # `hopscope profile` reaches the worker from outside the deployment; the socket's directory
    # keeps other users out, and over TCP the token is still required
    assert asyncio.run(_profile_without_token(f"unix:{tmp_path}/worker.sock")) == "OK [3]"
    assert asyncio.run(_profile_without_token("127.0.0.1:0")) == "UNAUTHENTICATED"
