"""The tokenizer process (front door): serve `hopscope.v1.Tokenizer` in front of a scheduler."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from protos import hopscope_pb2_grpc as pb_grpc
from services.common.health import HealthPublisher
from services.common.identity import identify
from services.common.metrics import serve_metrics
from services.common.server import GrpcServer, start_server
from services.common.tls import load_tls
from services.models import resolve_model
from services.tokenizer.core import TokenizerCore
from services.tokenizer.scheduler_client import GrpcSchedulerClient
from services.tokenizer.servicer import SchedulerClient, TokenizerServicer

FRONT_DOOR_SERVICE = "hopscope.v1.Tokenizer"


@dataclass(slots=True)
class TokenizerServiceConfig:
    model: str = "tiny"  # preset name or local Hugging Face directory (its tokenizer.json)
    scheduler_address: str = "127.0.0.1:50052"
    listen: str = "127.0.0.1:50051"
    node_id: str = ""
    placement: str = "colocated"
    request_timeout_s: float = 600.0  # cap on a request without its own deadline
    connect_timeout_s: float = 60.0
    scheduler_link: str = ""  # how the path to the scheduler is shaped: "" | "netem" | "relay"
    is_ray: bool = False
    metrics_address: str = ""  # "HOST:PORT" for /metrics; "" = off
    tls_dir: str = ""  # TLS on the front door, mutual TLS to the scheduler; "" = off
    internal_token: str = field(default="", repr=False)  # sent to the scheduler

    def __post_init__(self) -> None:
        if self.request_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("request_timeout_s and connect_timeout_s must be > 0")


@dataclass
class TokenizerServer:
    grpc_server: GrpcServer
    scheduler: SchedulerClient
    servicer: TokenizerServicer

    @property
    def address(self) -> str:
        return self.grpc_server.address

    @property
    def metrics_urls(self) -> dict[str, str]:
        return {"tokenizer": self.servicer.metrics.url}

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.grpc_server.stop(grace_s)  # NOT_SERVING, then in-flight streams finish
        await self.scheduler.close()  # type: ignore[attr-defined]
        self.servicer.metrics.stop_server()


def build_core(model: str) -> TokenizerCore:
    source = resolve_model(model)
    return TokenizerCore(source.tokenizer_path, source.max_context, source.vocab_size)


async def start_tokenizer(
    config: TokenizerServiceConfig,
    scheduler: SchedulerClient | None = None,
    health: HealthPublisher | None = None,
) -> TokenizerServer:
    """Start the front door; `scheduler` (and the `health` its owner feeds) are given for the
    in-process placement. SERVING exactly while the scheduler is. A failed start stops what it
    started."""
    tls = load_tls(config.tls_dir, "tokenizer") if config.tls_dir else None
    core = await asyncio.to_thread(build_core, config.model)
    if health is None:
        health = HealthPublisher(is_serving=False)
    started: list[Callable[[], Awaitable[None] | None]] = []
    try:
        if scheduler is None:
            client = GrpcSchedulerClient(
                config.scheduler_address,
                health.set_serving,
                tls=tls,
                internal_token=config.internal_token,
            )
            started.append(client.close)
            await client.connect(config.connect_timeout_s)
            scheduler = client
        identity = identify("tokenizer", config.listen, config.node_id)
        metrics = serve_metrics("tokenizer", config.metrics_address)
        started.append(metrics.stop_server)
        servicer = TokenizerServicer(core, scheduler, identity, config, metrics)

        def register(server: object) -> list[str]:
            pb_grpc.add_TokenizerServicer_to_server(servicer, server)
            return [FRONT_DOOR_SERVICE]

        # the front door: TLS without client certificates (callers authenticate with a key)
        grpc_server = await start_server(
            config.listen, register, health_publisher=health, tls=tls, require_client_cert=False
        )
    except BaseException:
        for stop in reversed(started):
            result = stop()
            if result is not None:
                await result
        raise
    identity.address = grpc_server.address
    return TokenizerServer(grpc_server, scheduler, servicer)
