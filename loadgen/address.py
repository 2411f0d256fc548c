"""The one parser of front-door addresses, used by `generate`, `bench` and `describe`.

gRPC reads a target without a port as port 443 (its DNS resolver's default), so `localhost`
would silently dial the wrong port; here a missing port is hopscope's default port instead.
Imports nothing heavy (services/config.py is pure data): `hopscope bench --help` must stay cheap.
"""

from __future__ import annotations

from services.config import DEFAULT_PORT  # `hopscope serve --port` default


class AddressError(ValueError):
    """An address that cannot be dialled; the message says what form is expected."""


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> str:
    """`HOST[:PORT]`, `[IPv6][:PORT]` or `unix:PATH` -> a gRPC target with an explicit port."""
    address = text.strip()
    if not address:
        raise AddressError("the address is empty: give HOST:PORT, e.g. 127.0.0.1:50051")
    if address.startswith(("unix:", "unix-abstract:")):
        return address
    if "://" in address:
        raise AddressError(f"{text!r}: give HOST:PORT (no scheme), e.g. 127.0.0.1:{default_port}")
    host, port = _split(address)
    if not host:
        raise AddressError(
            f"{text!r} has no host: give HOST:PORT, e.g. 127.0.0.1:{port or default_port}"
        )
    if port is None:
        port = str(default_port)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise AddressError(f"{text!r}: the port must be a number in 1..65535")
    return f"{host}:{int(port)}"


def _split(address: str) -> tuple[str, str | None]:
    if address.startswith("["):  # [::1] or [::1]:50051
        host, sep, rest = address.partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise AddressError(f"{address!r}: an IPv6 address is written [ADDR]:PORT")
        return host + "]", rest[1:] if rest else None
    if address.count(":") > 1:  # a bare IPv6 address, no port
        return f"[{address}]", None
    host, sep, port = address.partition(":")
    return host, port if sep else None
