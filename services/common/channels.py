"""The one channel factory. Every client of a hopscope service gets its channel here: the aio
face (`create_channel`) for the services, the load generator and `generate`; the synchronous face
(`create_sync_channel`) for launchers and scripts that wait on a server from plain code (health
checks, Describe). Both carry the same options (message limits, keepalive matching the servers',
reconnect backoff) and the same TLS choices."""

from __future__ import annotations

from pathlib import Path

import grpc

from services.common.grpc_options import KEEPALIVE, Keepalive, channel_options
from services.common.tls import INTERNAL_SERVER_NAME, TlsMaterial, channel_credentials


def create_channel(
    address: str,
    *,
    is_traced: bool = False,
    keepalive: Keepalive = KEEPALIVE,
    tls: TlsMaterial | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.aio.Channel:
    """An aio channel to `address` ("HOST:PORT" or "unix:PATH").

    `is_traced` adds OpenTelemetry's client interceptors (CLIENT spans, traceparent injected):
    used for front-door calls; the internal streams carry trace context themselves.
    `keepalive` must match the server's (start_server's): the default on both ends does.
    Internal hops: `tls` makes a TCP hop mutual TLS (our certificate; the server's checked
    against the CA and INTERNAL_SERVER_NAME, whatever address, relay or node it is reached at);
    a Unix socket stays plaintext. The internal token is call metadata, not a channel
    setting (services/common/peer_auth.py: token_metadata).
    Front-door callers: `credentials` (the CA they trust, maybe a client certificate), checked
    against the host they dial.
    """
    interceptors: list[grpc.aio.ClientInterceptor] = []
    if is_traced:
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        interceptors += aio_client_interceptors()
    options, credentials = _options_and_credentials(address, keepalive, tls, credentials)
    if credentials is not None:
        return grpc.aio.secure_channel(
            address, credentials, options=options, interceptors=interceptors or None
        )
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors or None)


def create_sync_channel(
    address: str,
    *,
    keepalive: Keepalive = KEEPALIVE,
    tls: TlsMaterial | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> grpc.Channel:
    """The synchronous face of `create_channel`: the same options and TLS choices, no tracing
    interceptors (the launchers' health waits and Describe calls are not request traffic)."""
    options, credentials = _options_and_credentials(address, keepalive, tls, credentials)
    if credentials is not None:
        return grpc.secure_channel(address, credentials, options=options)
    return grpc.insecure_channel(address, options=options)


def front_door_credentials(tls_ca: str = "") -> grpc.ChannelCredentials | None:
    """A load client's TLS to a front door served with `--tls-dir`: trust the CA file `tls_ca`
    (`--tls-ca`, the `ca.crt` of `hopscope certs`); None (plaintext) when it is empty."""
    if not tls_ca:
        return None
    try:
        ca_pem = Path(tls_ca).read_bytes()
    except OSError as exc:
        raise ValueError(f"--tls-ca {tls_ca}: cannot read it ({exc.strerror})") from None
    return grpc.ssl_channel_credentials(root_certificates=ca_pem)


def _options_and_credentials(
    address: str,
    keepalive: Keepalive,
    tls: TlsMaterial | None,
    credentials: grpc.ChannelCredentials | None,
) -> tuple[list[tuple[str, int | str]], grpc.ChannelCredentials | None]:
    options: list[tuple[str, int | str]] = list(channel_options(keepalive))
    if tls is not None and not address.startswith("unix:"):
        credentials = channel_credentials(tls)
        options.append(("grpc.ssl_target_name_override", INTERNAL_SERVER_NAME))
    return options, credentials


def transport_of(address: str) -> str:
    """The edge transport an address implies: "uds", "tcp" or "inproc"."""
    if address == "inproc":
        return "inproc"
    return "uds" if address.startswith("unix:") else "tcp"
