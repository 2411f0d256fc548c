"""Channel and server options, from one place, so both ends of every hopscope channel agree.

Keepalive is the case in point: a client that pings more often than the server allows gets
GOAWAY `too_many_pings` and loses its streams (an idle scheduler lost its worker stream that way
after minutes without traffic). The client's ping interval and the server's ping policy are both
derived here from one `Keepalive`.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_CONCURRENT_STREAMS = 1024
GrpcOptions = list[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class Keepalive:
    """Clients ping every `time_ms` (idle or not) and give up after `timeout_ms` without an
    answer; servers accept pings that often and ping their clients as often."""

    time_ms: int = 10_000
    timeout_ms: int = 5_000

    def __post_init__(self) -> None:
        assert self.time_ms > 0 and self.timeout_ms > 0, self

    def client_options(self) -> GrpcOptions:
        return [
            ("grpc.keepalive_time_ms", self.time_ms),
            ("grpc.keepalive_timeout_ms", self.timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),  # keepalive pings never stop on idle
        ]

    def server_options(self) -> GrpcOptions:
        return [
            ("grpc.keepalive_time_ms", self.time_ms),
            ("grpc.keepalive_timeout_ms", self.timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            # (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS) half the clients' interval:
            # timer jitter never turns a keepalive into a strike
            ("grpc.http2.min_ping_interval_without_data_ms", self.time_ms // 2),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.http2.max_pings_without_data", 0),
        ]


KEEPALIVE = Keepalive()


def channel_options(keepalive: Keepalive = KEEPALIVE) -> GrpcOptions:
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        *keepalive.client_options(),
        ("grpc.enable_retries", 0),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1_000),
    ]


def server_options(keepalive: Keepalive = KEEPALIVE, *, reuse_port: bool = False) -> GrpcOptions:
    """`reuse_port`: share the port with this deployment's other front-door replicas
    (SO_REUSEPORT); otherwise a taken port must fail to bind, not be shared silently."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
        *keepalive.server_options(),
    ]
