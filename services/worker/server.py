"""The worker process: load the engine, serve `hopscope.v1.Worker`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from protos import hopscope_pb2_grpc as pb_grpc
from services.common.channels import transport_of
from services.common.identity import identify
from services.common.memory import bound_native_memory
from services.common.metrics import serve_metrics
from services.common.server import GrpcServer, start_server
from services.common.tls import load_tls
from services.worker.service_config import WorkerServiceConfig
from services.worker.servicer import WorkerService, WorkerServicer


@dataclass
class WorkerServer:
    grpc_server: GrpcServer
    service: WorkerService

    @property
    def address(self) -> str:
        return self.grpc_server.address

    @property
    def metrics_urls(self) -> dict[str, str]:
        return {"worker": self.service.metrics.url}

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.grpc_server.stop(grace_s)
        self.service.close()


def build_worker_service(config: WorkerServiceConfig, address: str) -> WorkerService:
    bound_native_memory()  # before the engine makes its first oneDNN primitive
    metrics = serve_metrics("worker", config.metrics_address)
    try:
        return WorkerService.load(
            config.settings, identify("worker", address, config.node_id, config.role), metrics
        )
    except BaseException:
        metrics.stop_server()
        raise


async def start_worker(config: WorkerServiceConfig) -> WorkerServer:
    security = config.settings.security
    tls = load_tls(security.tls_dir, "worker") if security.tls_dir else None  # before loading
    # loading weights is slow and blocking: keep the loop free meanwhile
    service = await asyncio.to_thread(build_worker_service, config, config.listen)
    servicer = WorkerServicer(
        service, transport_of(config.listen), tls=tls, internal_token=security.internal_token
    )

    def register(server: object) -> list[str]:
        pb_grpc.add_WorkerServicer_to_server(servicer, server)
        return ["hopscope.v1.Worker"]

    try:
        grpc_server = await start_server(
            config.listen, register, tls=tls, internal_token=security.internal_token
        )
    except BaseException:
        service.close()  # the engine and the metrics server
        raise
    service.identity.address = grpc_server.address
    return WorkerServer(grpc_server, service)
