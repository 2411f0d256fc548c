"""The scheduler process: connect to the worker, serve `hopscope.v1.Scheduler`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from protos import hopscope_pb2_grpc as pb_grpc
from services.common.channels import transport_of
from services.common.health import HealthPublisher
from services.common.identity import ServiceIdentity, identify
from services.common.metrics import serve_metrics
from services.common.server import GrpcServer, start_server
from services.common.tls import load_tls
from services.common.types import ModelInfo
from services.scheduler.core import Scheduler
from services.scheduler.runner import RunnerSettings, SchedulerRunner
from services.scheduler.service_config import SchedulerServiceConfig
from services.scheduler.servicer import SchedulerServicer
from services.scheduler.worker_client import GrpcWorkerClient, WorkerClient


@dataclass
class SchedulerServer:
    grpc_server: GrpcServer
    runner: SchedulerRunner

    @property
    def address(self) -> str:
        return self.grpc_server.address

    @property
    def metrics_urls(self) -> dict[str, str]:
        return {"scheduler": self.runner.metrics.url}

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.grpc_server.stop(grace_s)
        await self.runner.stop()


def build_runner(
    config: SchedulerServiceConfig,
    worker: WorkerClient,
    on_health: Callable[[bool], None] = lambda is_serving: None,
) -> SchedulerRunner:
    def core_factory(info: ModelInfo) -> Scheduler:
        return Scheduler(config.core, info)

    settings = RunnerSettings(
        step_timeout_s=config.step_timeout_s,
        connect_timeout_s=config.connect_timeout_s,
        worker_reconnect_timeout_s=config.worker_reconnect_timeout_s,
    )
    metrics = serve_metrics("scheduler", config.metrics_address)
    return SchedulerRunner(core_factory, worker, settings, on_health, metrics)


async def start_scheduler(config: SchedulerServiceConfig) -> SchedulerServer:
    """SERVING exactly while the worker is up. A failed start stops what it started."""
    tls = load_tls(config.tls_dir, "scheduler") if config.tls_dir else None
    worker = GrpcWorkerClient(
        config.worker_address, config.step_timeout_s, tls=tls, internal_token=config.internal_token
    )
    health = HealthPublisher(is_serving=False)
    runner = build_runner(config, worker, health.set_serving)
    identity: ServiceIdentity = identify("scheduler", config.listen, config.node_id)
    servicer = SchedulerServicer(runner, identity, transport_of(config.listen), config.worker_link)

    def register(server: object) -> list[str]:
        pb_grpc.add_SchedulerServicer_to_server(servicer, server)
        return ["hopscope.v1.Scheduler"]

    try:
        await runner.start()
        grpc_server = await start_server(
            config.listen,
            register,
            health_publisher=health,
            tls=tls,
            internal_token=config.internal_token,
        )
    except BaseException:
        await runner.stop()  # the worker channel, the loop and the metrics server
        raise
    identity.address = grpc_server.address
    return SchedulerServer(grpc_server, runner)
