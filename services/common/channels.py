"""The one channel factory. Every client of a hopscope service gets its channel here."""

from __future__ import annotations

import grpc

from services.common.server import MAX_MESSAGE_BYTES

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]


def create_channel(address: str, *, is_traced: bool = False) -> grpc.aio.Channel:
    """An insecure aio channel to `address` ("HOST:PORT" or "unix:PATH").

    `is_traced` adds OpenTelemetry's client interceptors (CLIENT spans, traceparent injected):
    used for front-door calls; the internal streams carry trace context themselves.
    """
    interceptors = None
    if is_traced:
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        interceptors = aio_client_interceptors()
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=interceptors)


def transport_of(address: str) -> str:
    """The edge transport an address implies: "uds", "tcp" or "inproc"."""
    if address == "inproc":
        return "inproc"
    return "uds" if address.startswith("unix:") else "tcp"
