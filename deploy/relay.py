"""Emulated links without netem: a TCP relay that delays the bytes on the path.

Where the kernel has no `tc netem` (this CI kernel has only tbf/htb), a "remote" link is emulated
by putting a relay between caller and callee: every chunk read from one side is stamped on arrival
and written to the other side at `arrival + delay` (after pacing to `rate_mbit`, when set). The
chunks in flight form a pipe: the reader keeps reading while the writer waits, so a delay adds
latency without serializing messages, and order is preserved. Both directions are independent, so
full-duplex protocols (gRPC/HTTP2) work. Service code never sleeps: the delay shows up as network
time in traces (CLIENT duration - SERVER duration).

Threads, not asyncio: asyncio's epoll timeouts have 1 ms resolution, too coarse for 0.25 ms
delays; `time.sleep` sleeps with clock_nanosleep. Daemon threads run in whatever process starts
the relay (a Ray actor, the driver) without touching its event loop.

    relay = start_relay("127.0.0.2", "127.0.0.3:50052", delay_ms=0.5, rate_mbit=1000)
    channel = create_channel(relay.address)
    ...
    relay.stop()
"""

from __future__ import annotations

import ctypes
import functools
import logging
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Self

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
# Chunks buffered per direction before the reader stops reading (TCP backpressure to the sender).
MAX_CHUNKS_IN_FLIGHT = 1024
CONNECT_TIMEOUT_S = 5.0
_EOF = None  # queued after the last chunk of a direction: half-close the destination
_PR_SET_TIMERSLACK = 29  # <linux/prctl.h>
_TIMER_SLACK_NS = 1_000


class RelayError(RuntimeError):
    """The relay could not listen, or its target address is malformed."""


@dataclass(slots=True)
class _Link:
    """The shaping of one direction of one connection: one-way delay, then pacing."""

    delay_s: float
    rate_bytes_per_s: float
    link_free_at: float = 0.0

    def due(self, arrival: float, num_bytes: int) -> float:
        """When a chunk that arrived at `arrival` leaves the far end of the link."""
        if self.rate_bytes_per_s <= 0:
            return arrival + self.delay_s
        start = max(arrival, self.link_free_at)
        self.link_free_at = start + num_bytes / self.rate_bytes_per_s
        return self.link_free_at + self.delay_s


@dataclass
class Relay:
    """A running relay: connect to `address` to reach `target` through the emulated link."""

    address: str
    target: str
    delay_ms: float
    rate_mbit: float
    _listener: socket.socket
    _stopping: threading.Event = field(default_factory=threading.Event)
    _sockets: set[socket.socket] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _num_bytes_read: int = 0  # from either side, cumulative
    _num_bytes_written: int = 0  # to either side, cumulative

    @property
    def num_connections(self) -> int:
        with self._lock:
            return len(self._sockets) // 2

    @property
    def num_bytes_in_flight(self) -> int:
        """Bytes read from one side and not yet written to the other: on the emulated link."""
        with self._lock:
            return self._num_bytes_read - self._num_bytes_written

    def _count(self, num_read: int = 0, num_written: int = 0) -> None:
        with self._lock:
            self._num_bytes_read += num_read
            self._num_bytes_written += num_written

    def stop(self) -> None:
        """Stop listening and cut every relayed connection (both peers see the connection drop).

        Returns at once (safe on an event loop): the relay's threads end on their own once
        their sockets are closed; `join` waits for them."""
        self._stopping.set()
        _close(self._listener)
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _close(sock)

    def join(self, timeout_s: float = 5.0) -> bool:
        """Wait (blocking) until the relay's threads ended; False if some still run."""
        with self._lock:
            threads = list(self._threads)
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_relay(listen_host: str, target: str, delay_ms: float, rate_mbit: float = 0.0) -> Relay:
    """Listen on `listen_host` (a free port) and relay each connection to `target` ("HOST:PORT"),
    delaying every chunk by `delay_ms` one way in each direction and pacing to `rate_mbit` (> 0)."""
    if delay_ms < 0 or rate_mbit < 0:
        raise RelayError(f"delay_ms and rate_mbit must be >= 0, got {delay_ms}, {rate_mbit}")
    target_host, target_port = _split_address(target)
    try:
        listener = socket.create_server((listen_host, 0))
    except OSError as exc:
        raise RelayError(f"relay cannot listen on {listen_host}: {exc}") from exc
    port = listener.getsockname()[1]
    relay = Relay(f"{listen_host}:{port}", target, delay_ms, rate_mbit, listener)
    _spawn(relay, _accept_loop, relay, (target_host, target_port), name=f"relay-accept-{port}")
    return relay


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RelayError(f"relay target must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def _spawn(relay: Relay, target: object, *args: object, name: str) -> None:
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)  # type: ignore[arg-type]
    with relay._lock:
        relay._threads = [t for t in relay._threads if t.is_alive()]
        relay._threads.append(thread)
    thread.start()


def _accept_loop(relay: Relay, target: tuple[str, int]) -> None:
    while not relay._stopping.is_set():
        try:
            client, _ = relay._listener.accept()
        except OSError:
            return  # the listener was closed by stop()
        try:
            upstream = socket.create_connection(target, timeout=CONNECT_TIMEOUT_S)
        except OSError as exc:
            log.warning("relay %s: cannot reach %s:%s: %s", relay.address, *target, exc)
            _close(client)
            continue
        _relay_connection(relay, client, upstream)


def _relay_connection(relay: Relay, client: socket.socket, upstream: socket.socket) -> None:
    for sock in (client, upstream):
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with relay._lock:
        relay._sockets.update((client, upstream))
    num_open = [2]  # directions still running; the last one closes both sockets
    rate_bytes_per_s = relay.rate_mbit * 1e6 / 8
    for src, dst, direction in ((client, upstream, "up"), (upstream, client, "down")):
        link = _Link(relay.delay_ms / 1e3, rate_bytes_per_s)
        chunks: queue.Queue[tuple[float, bytes] | None] = queue.Queue(MAX_CHUNKS_IN_FLIGHT)
        name = f"relay-{relay.address}-{direction}"
        _spawn(relay, _read_side, relay, src, link, chunks, name=f"{name}-read")
        _spawn(relay, _write_side, relay, dst, chunks, (client, upstream), num_open, name=name)


def _read_side(
    relay: Relay, src: socket.socket, link: _Link, chunks: queue.Queue[tuple[float, bytes] | None]
) -> None:
    try:
        while data := src.recv(CHUNK_BYTES):
            relay._count(num_read=len(data))
            chunks.put((link.due(time.monotonic(), len(data)), data))
    except OSError:
        pass  # reset by the peer or closed by stop(): end this direction like an EOF
    chunks.put(_EOF)


def _write_side(
    relay: Relay,
    dst: socket.socket,
    chunks: queue.Queue[tuple[float, bytes] | None],
    pair: tuple[socket.socket, socket.socket],
    num_open: list[int],
) -> None:
    _tighten_timer_slack()
    is_drained = False
    try:
        while (item := chunks.get()) is not _EOF:
            due, data = item
            wait_s = due - time.monotonic()
            if wait_s > 0:
                time.sleep(wait_s)
            dst.sendall(data)
            relay._count(num_written=len(data))
        is_drained = True
        dst.shutdown(socket.SHUT_WR)  # the source half-closed: pass it on, after its last bytes
    except OSError:
        for sock in pair:  # the destination is gone: drop the whole connection
            _close(sock)
        while not is_drained and chunks.get() is not _EOF:
            pass  # unblock the reader, which ends on its closed socket
    with relay._lock:
        num_open[0] -= 1
        if num_open[0] == 0:
            relay._sockets.difference_update(pair)
            for sock in pair:
                _close(sock)


def _tighten_timer_slack() -> None:
    """Let this thread's sleeps end on time: Linux rounds them up by 50 µs of timer slack by
    default, which would add ~0.1 ms to every round trip. Best effort (Linux only)."""
    if sys.platform != "linux":
        return
    try:
        ctypes.CDLL(None).prctl(_PR_SET_TIMERSLACK, _TIMER_SLACK_NS, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv/accept on it
    except OSError:
        pass
    sock.close()


@functools.cache
def netem_available() -> bool:
    """Whether this kernel has `tc netem`, tried in a throwaway network namespace (never on the
    host's own interfaces). False where the namespace cannot be created (no privileges): hopscope
    could not shape links with tc there either."""
    if shutil.which("tc") is None or shutil.which("unshare") is None:
        return False
    script = "ip link set lo up && tc qdisc add dev lo root netem delay 1ms"
    try:
        done = subprocess.run(
            ["unshare", "--net", "sh", "-c", script], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def link_mechanism(delay_ms: float, rate_mbit: float) -> str:
    """What emulates a link with this shaping: "" (none asked for), "netem", or "relay"."""
    if delay_ms <= 0 and rate_mbit <= 0:
        return ""
    return "netem" if netem_available() else "relay"
