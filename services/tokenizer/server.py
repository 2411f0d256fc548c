"""The tokenizer process (front door): serve `hopscope.v1.Tokenizer` in front of a scheduler."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from protos import hopscope_pb2_grpc as pb_grpc
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

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.grpc_server.stop(grace_s)  # NOT_SERVING, then in-flight streams finish
        await self.scheduler.close()  # type: ignore[attr-defined]
        self.servicer.metrics.stop_server()


def build_core(model: str) -> TokenizerCore:
    source = resolve_model(model)
    return TokenizerCore(source.tokenizer_path, source.max_context, source.vocab_size)


async def start_tokenizer(
    config: TokenizerServiceConfig, scheduler: SchedulerClient | None = None
) -> TokenizerServer:
    """Start the front door; `scheduler` is given for the in-process placement."""
    tls = load_tls(config.tls_dir, "tokenizer") if config.tls_dir else None
    core = await asyncio.to_thread(build_core, config.model)
    holder: dict[str, GrpcServer] = {}

    def on_health(is_serving: bool) -> None:
        if "server" in holder:
            asyncio.get_running_loop().create_task(holder["server"].set_serving(is_serving))

    if scheduler is None:
        client = GrpcSchedulerClient(
            config.scheduler_address, on_health, tls=tls, internal_token=config.internal_token
        )
        await client.connect(config.connect_timeout_s)
        scheduler = client
    identity = identify("tokenizer", config.listen, config.node_id)
    metrics = serve_metrics("tokenizer", config.metrics_address)
    servicer = TokenizerServicer(core, scheduler, identity, config, metrics)

    def register(server: object) -> list[str]:
        pb_grpc.add_TokenizerServicer_to_server(servicer, server)
        return [FRONT_DOOR_SERVICE]

    # the front door: TLS without client certificates (callers authenticate with the API key)
    grpc_server = await start_server(
        config.listen, register, is_serving=scheduler.is_ready, tls=tls, require_client_cert=False
    )
    holder["server"] = grpc_server
    identity.address = grpc_server.address
    return TokenizerServer(grpc_server, scheduler, servicer)
