"""The load client's channel to a front door: plaintext, or TLS trusting one CA (`--tls-ca`, the
`ca.crt` of `hopscope certs` for a front door served with `--tls-dir`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc


def open_channel(address: str, tls_ca: str = "", interceptors: Any = None) -> grpc.aio.Channel:
    if not tls_ca:
        return grpc.aio.insecure_channel(address, interceptors=interceptors)
    try:
        ca_pem = Path(tls_ca).read_bytes()
    except OSError as exc:
        raise ValueError(f"--tls-ca {tls_ca}: cannot read it ({exc.strerror})") from None
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    return grpc.aio.secure_channel(address, credentials, interceptors=interceptors)
