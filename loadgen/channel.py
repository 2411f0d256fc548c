"""The load client's channel to a front door, from the one channel factory
(services/common/channels.py: its options and keepalive): plaintext, or TLS trusting one CA
(`--tls-ca`, the `ca.crt` of `hopscope certs` for a front door served with `--tls-dir`)."""

from __future__ import annotations

import grpc

from services.common.channels import create_channel, front_door_credentials


def open_channel(address: str, tls_ca: str = "", *, is_traced: bool = False) -> grpc.aio.Channel:
    """`is_traced`: OpenTelemetry's client interceptors (a CLIENT span per request)."""
    return create_channel(address, is_traced=is_traced, credentials=front_door_credentials(tls_ca))
