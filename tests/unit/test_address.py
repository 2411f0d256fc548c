"""Front-door addresses: a missing port is hopscope's 50051 (gRPC alone would dial 443)."""

from __future__ import annotations

import pytest

from loadgen.address import AddressError, parse_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost", "localhost:50051"),
        ("127.0.0.1:7000", "127.0.0.1:7000"),
        (" example.org ", "example.org:50051"),
        ("[::1]", "[::1]:50051"),
        ("[::1]:9", "[::1]:9"),
        ("::1", "[::1]:50051"),
        ("unix:/tmp/a.sock", "unix:/tmp/a.sock"),
    ],
)
def test_addresses_resolve_to_an_explicit_port(text: str, expected: str) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        (":50051", "no host"),
        ("host:http", "port must be a number"),
        ("host:70000", "port must be a number"),
        ("http://host:1", "no scheme"),
    ],
)
def test_bad_addresses_say_what_is_expected(text: str, message: str) -> None:
    with pytest.raises(AddressError, match=message):
        parse_address(text)
