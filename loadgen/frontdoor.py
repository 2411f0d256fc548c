"""Reaching a hopscope front door before using it: the one connect check that `bench`,
`generate` and `describe` share, with a message a person can act on instead of gRPC's text."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from loadgen.channel import open_channel
from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc

DEFAULT_CONNECT_TIMEOUT_S = 3.0


class UnreachableError(ConnectionError):
    """The server did not answer before any request was sent."""


async def wait_reachable(channel: grpc.aio.Channel, address: str, timeout_s: float) -> None:
    """Wait for the channel to connect; UnreachableError (one clear line) when it does not."""
    try:
        await asyncio.wait_for(channel.channel_ready(), timeout_s)
    except TimeoutError:
        raise UnreachableError(
            f"no server answers at {address} (waited {timeout_s:g} s); is "
            "`hopscope serve` running, is the address right (and a TLS front door given --tls-ca)?"
        ) from None


async def check_reachable(
    address: str, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S, tls_ca: str = ""
) -> pb.DescribeResponse | None:
    """Describe the deployment, or raise UnreachableError; None if Describe is not served.
    `tls_ca`: the CA that signed a TLS front door's certificate (`--tls-ca`)."""
    async with open_channel(address, tls_ca) as channel:
        await wait_reachable(channel, address, timeout_s)
        try:
            stub = pb_grpc.TokenizerStub(channel)
            return await stub.Describe(pb.DescribeRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise UnreachableError(
                f"{address} did not answer Describe: {exc.code().name} {exc.details()}"
            ) from None


def describe_dict(address: str, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> dict[str, Any]:
    """Describe as a plain dict (protobuf's JSON mapping), {} when Describe is not served."""
    from google.protobuf.json_format import MessageToDict

    described = asyncio.run(check_reachable(address, timeout_s))
    return {} if described is None else MessageToDict(described)
