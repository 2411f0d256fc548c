"""The one channel factory. Every client of a hopscope service gets its channel here."""

from __future__ import annotations

import grpc

from services.common.peer_auth import token_interceptors
from services.common.server import MAX_MESSAGE_BYTES
from services.common.tls import INTERNAL_SERVER_NAME, TlsMaterial, channel_credentials

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


def create_channel(
    address: str,
    *,
    is_traced: bool = False,
    tls: TlsMaterial | None = None,
    internal_token: str = "",
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.aio.Channel:
    """An aio channel to `address` ("HOST:PORT" or "unix:PATH").

    `is_traced` adds OpenTelemetry's client interceptors (CLIENT spans, traceparent injected):
    used for front-door calls; the internal streams carry trace context themselves.
    Internal hops: `tls` makes a TCP hop mutual TLS (our certificate; the server's checked
    against the CA and INTERNAL_SERVER_NAME, whatever address, relay or node it is reached at);
    a Unix socket stays plaintext. `internal_token` is sent on every call.
    Front-door callers: `credentials` (the CA they trust, maybe a client certificate), checked
    against the host they dial.
    """
    interceptors: list[grpc.aio.ClientInterceptor] = []
    if is_traced:
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        interceptors += aio_client_interceptors()
    if internal_token:
        interceptors += token_interceptors(internal_token)
    options: list[tuple[str, int | str]] = list(CHANNEL_OPTIONS)
    if tls is not None and not address.startswith("unix:"):
        credentials = channel_credentials(tls)
        options.append(("grpc.ssl_target_name_override", INTERNAL_SERVER_NAME))
    if credentials is not None:
        return grpc.aio.secure_channel(
            address, credentials, options=options, interceptors=interceptors or None
        )
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors or None)


def transport_of(address: str) -> str:
    """The edge transport an address implies: "uds", "tcp" or "inproc"."""
    if address == "inproc":
        return "inproc"
    return "uds" if address.startswith("unix:") else "tcp"
