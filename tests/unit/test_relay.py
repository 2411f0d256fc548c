"""The link-emulation relay: bytes pass unchanged both ways; link shaping arithmetic."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from deploy.relay import RelayError, _Link, link_mechanism, netem_available, start_relay
from tests.harness import wait_for


@pytest.fixture
def echo_address() -> Iterator[str]:
    """A TCP echo server on 127.0.0.1 (one thread per connection)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def _connect(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def _recv_exactly(sock: socket.socket, num_bytes: int) -> bytes:
    parts, received = [], 0
    while received < num_bytes:
        part = sock.recv(min(65536, num_bytes - received))
        assert part, "connection closed early"
        parts.append(part)
        received += len(part)
    return b"".join(parts)


def test_bytes_pass_unchanged_both_ways_while_both_directions_flow(echo_address: str) -> None:
    payload = os.urandom(2 * 1024 * 1024)
    with (
        start_relay("127.0.0.1", echo_address, delay_ms=1.0) as relay,
        _connect(relay.address) as sock,
    ):
        # Send and receive at once: the echo streams back while we still send (full duplex).
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        echoed = _recv_exactly(sock, len(payload))
        sender.join()
    assert echoed == payload


def test_a_half_close_reaches_the_other_side_after_the_last_bytes(echo_address: str) -> None:
    with (
        start_relay("127.0.0.1", echo_address, delay_ms=2.0) as relay,
        _connect(relay.address) as sock,
    ):
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        assert _recv_exactly(sock, 10) == b"last words"
        assert sock.recv(1) == b""  # the echo server saw EOF and closed: so do we


def test_several_connections_are_relayed_independently(echo_address: str) -> None:
    with start_relay("127.0.0.1", echo_address, delay_ms=0.5, rate_mbit=100) as relay:
        socks = [_connect(relay.address) for _ in range(3)]
        for i, sock in enumerate(socks):
            sock.sendall(f"conn {i}".encode())
        assert [_recv_exactly(s, 6) for s in socks] == [b"conn 0", b"conn 1", b"conn 2"]
        for sock in socks:
            sock.close()


def test_stop_cuts_relayed_connections(echo_address: str) -> None:
    relay = start_relay("127.0.0.1", echo_address, delay_ms=0.0)
    with _connect(relay.address) as sock:
        sock.sendall(b"ping")
        assert _recv_exactly(sock, 4) == b"ping"
        relay.stop()
        try:
            assert sock.recv(1) == b""
        except ConnectionResetError:
            pass
    with pytest.raises(OSError):
        _connect(relay.address).close()


def test_stop_does_not_wait_for_chunks_still_on_the_link(echo_address: str) -> None:
    """stop() runs on an event loop (the Ray actor's): it must not block on the relay's threads.
    A chunk is on a 60 s link when stop() is called; stop() used to join for up to 5 s."""
    relay = start_relay("127.0.0.1", echo_address, delay_ms=60_000.0)
    with _connect(relay.address) as sock:
        sock.sendall(b"ping")
        wait_for(lambda: relay.num_bytes_in_flight == 4, 10, "the relay never read the chunk")
        started = time.monotonic()
        relay.stop()
        stop_s = time.monotonic() - started
    assert stop_s < 2.0, f"stop() blocked for {stop_s:.1f} s"
    assert relay.join(0.0) is False  # the writer still sleeps: stop() did not wait for it


def test_a_malformed_target_or_negative_delay_is_refused() -> None:
    with pytest.raises(RelayError, match="HOST:PORT"):
        start_relay("127.0.0.1", "no-port-here", delay_ms=1.0)
    with pytest.raises(RelayError, match=">= 0"):
        start_relay("127.0.0.1", "127.0.0.1:1", delay_ms=-1.0)


def test_link_delays_each_chunk_without_serializing_them() -> None:
    link = _Link(delay_s=0.010, rate_bytes_per_s=0)
    assert link.due(1.000, 100) == pytest.approx(1.010)
    assert link.due(1.001, 100) == pytest.approx(1.011)  # in flight together, not 1.020


def test_link_paces_to_its_rate_then_adds_the_delay() -> None:
    link = _Link(delay_s=0.001, rate_bytes_per_s=1_000_000)  # 8 Mbit/s
    assert link.due(0.0, 10_000) == pytest.approx(0.011)  # 10 ms on the wire + 1 ms
    assert link.due(0.0, 10_000) == pytest.approx(0.021)  # queued behind the first chunk
    assert link.due(1.0, 1_000) == pytest.approx(1.002)  # an idle link starts at arrival


def test_link_mechanism_says_what_shapes_the_link() -> None:
    assert link_mechanism(0.0, 0.0) == ""
    assert link_mechanism(0.5, 0.0) in ("netem", "relay")
    assert link_mechanism(0.5, 0.0) == ("netem" if netem_available() else "relay")
