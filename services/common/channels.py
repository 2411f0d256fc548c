"""The one channel factory. Every client of a hopscope service gets its channel here."""

from __future__ import annotations

import grpc

from services.common.grpc_options import KEEPALIVE, Keepalive, channel_options


def create_channel(
    address: str, *, is_traced: bool = False, keepalive: Keepalive = KEEPALIVE
) -> grpc.aio.Channel:
    """An insecure aio channel to `address` ("HOST:PORT" or "unix:PATH").

    `is_traced` adds OpenTelemetry's client interceptors (CLIENT spans, traceparent injected):
    used for front-door calls; the internal streams carry trace context themselves.
    `keepalive` must match the server's (start_server's): the default on both ends does.
    """
    interceptors = None
    if is_traced:
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        interceptors = aio_client_interceptors()
    return grpc.aio.insecure_channel(
        address, options=channel_options(keepalive), interceptors=interceptors
    )


def transport_of(address: str) -> str:
    """The edge transport an address implies: "uds", "tcp" or "inproc"."""
    if address == "inproc":
        return "inproc"
    return "uds" if address.startswith("unix:") else "tcp"
