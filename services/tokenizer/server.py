"""The tokenizer process (front door): serve `hopscope.v1.Tokenizer` in front of a scheduler."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protos import hopscope_pb2_grpc as pb_grpc
from services.common.health import HealthPublisher
from services.common.identity import identify
from services.common.metrics import serve_metrics
from services.common.server import GrpcServer, start_server
from services.common.tls import load_tls
from services.models import ModelSource, resolve_model
from services.tokenizer.auth import ApiKey, ApiKeyInterceptor, api_key_from_env
from services.tokenizer.core import TokenizerCore
from services.tokenizer.scheduler_client import GrpcSchedulerClient
from services.tokenizer.service_config import TokenizerServiceConfig
from services.tokenizer.servicer import SchedulerClient, TokenizerServicer

if TYPE_CHECKING:  # FastAPI and uvicorn are imported only when the HTTP front door is on
    from services.tokenizer.http.server import HttpServer

FRONT_DOOR_SERVICE = "hopscope.v1.Tokenizer"


@dataclass
class TokenizerServer:
    grpc_server: GrpcServer
    scheduler: SchedulerClient
    servicer: TokenizerServicer
    http: HttpServer | None = None

    @property
    def address(self) -> str:
        return self.grpc_server.address

    @property
    def http_url(self) -> str:
        """`http://HOST:PORT` of the OpenAI-compatible API, "" when it is off."""
        return self.http.url if self.http is not None else ""

    @property
    def metrics_urls(self) -> dict[str, str]:
        return {"tokenizer": self.servicer.metrics.url}

    async def stop(self, grace_s: float = 5.0) -> None:
        # Both front doors drain at once: NOT_SERVING / no new connections, in-flight finish.
        http_stop = self.http.stop(grace_s) if self.http is not None else asyncio.sleep(0)
        await asyncio.gather(self.grpc_server.stop(grace_s), http_stop)
        await self.scheduler.close()  # type: ignore[attr-defined]
        self.servicer.metrics.stop_server()


def build_core(model: str, max_model_len: int | None = None) -> tuple[TokenizerCore, ModelSource]:
    source = resolve_model(model, max_model_len)
    core = TokenizerCore(
        source.load_tokenizer(), source.max_context, source.vocab_size, source.chat_template
    )
    return core, source


async def start_tokenizer(
    config: TokenizerServiceConfig,
    scheduler: SchedulerClient | None = None,
    health: HealthPublisher | None = None,
) -> TokenizerServer:
    """Start the front door; `scheduler` (and the `health` its owner feeds) are given for the
    in-process placement. SERVING exactly while the scheduler is. A failed start stops what it
    started."""
    settings = config.settings
    security = settings.security
    tls = load_tls(security.tls_dir, "tokenizer") if security.tls_dir else None
    core, source = await asyncio.to_thread(
        build_core, settings.model.model, settings.model.max_model_len
    )
    api_key = ApiKey(api_key_from_env())
    if health is None:
        health = HealthPublisher(is_serving=False)
    started: list[Callable[[], Awaitable[None] | None]] = []
    identity = identify(config.name, config.listen, config.node_id)
    try:
        if scheduler is None:
            client = GrpcSchedulerClient(
                config.scheduler_address,
                health.set_serving,
                settings.tokenizer.scheduler_reconnect_timeout_s,
                tls=tls,
                internal_token=security.internal_token,
                front_door=identity,
            )
            started.append(client.close)
            await client.connect(settings.tokenizer.scheduler_connect_timeout_s)
            scheduler = client
        metrics = serve_metrics("tokenizer", config.metrics_address)
        started.append(metrics.stop_server)
        servicer = TokenizerServicer(core, scheduler, identity, config, metrics)

        def register(server: object) -> list[str]:
            pb_grpc.add_TokenizerServicer_to_server(servicer, server)
            return [FRONT_DOOR_SERVICE]

        # the front door: TLS without client certificates (callers authenticate with a key)
        grpc_server = await start_server(
            config.listen,
            register,
            health_publisher=health,
            tls=tls,
            require_client_cert=False,
            has_key=api_key.is_required,
            interceptors=[ApiKeyInterceptor(api_key)] if api_key.is_required else [],
            reuse_port=config.reuse_port,
        )
    except BaseException:
        for stop in reversed(started):
            result = stop()
            if result is not None:
                await result
        raise
    identity.address = grpc_server.address
    front = TokenizerServer(grpc_server, scheduler, servicer)
    if settings.deploy.http_listen:
        from services.tokenizer.http.app import FrontDoorApp
        from services.tokenizer.http.server import start_http_server

        try:
            app = FrontDoorApp(servicer, source.name, api_key)
            front.http = await start_http_server(
                app, settings.deploy.http_listen, reuse_port=config.reuse_port
            )
        except BaseException:
            await front.stop(0)
            raise
    return front
