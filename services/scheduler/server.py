"""The scheduler process: connect to the worker, serve `hopscope.v1.Scheduler`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from protos import hopscope_pb2_grpc as pb_grpc
from services.common.channels import transport_of
from services.common.health import HealthPublisher
from services.common.identity import ServiceIdentity, identify
from services.common.metrics import ServiceMetrics, serve_metrics
from services.common.server import GrpcServer, start_server
from services.common.tls import load_tls
from services.common.types import ModelInfo
from services.scheduler.core import Scheduler
from services.scheduler.replicas import ReplicaSet, RequestRunner
from services.scheduler.router import Router
from services.scheduler.runner import SchedulerRunner
from services.scheduler.service_config import SchedulerServiceConfig
from services.scheduler.servicer import SchedulerServicer
from services.scheduler.worker_client import GrpcWorkerClient, WorkerClient


@dataclass
class SchedulerServer:
    grpc_server: GrpcServer
    runner: RequestRunner

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
    metrics: ServiceMetrics | None = None,
) -> SchedulerRunner:
    settings = config.settings.scheduler  # the section as is: a new knob needs no line here

    def core_factory(info: ModelInfo) -> Scheduler:
        return Scheduler(settings, info)

    if metrics is None:
        metrics = serve_metrics("scheduler", config.metrics_address)
    return SchedulerRunner(core_factory, worker, settings, on_health, metrics)


def build_replicas(
    config: SchedulerServiceConfig,
    workers: list[WorkerClient],
    on_health: Callable[[bool], None] = lambda is_serving: None,
) -> ReplicaSet:
    """A runner per worker behind one router: one worker is a set of one (the same path)."""
    metrics = serve_metrics("scheduler", config.metrics_address)
    runners = [build_runner(config, w, metrics=metrics) for w in workers]
    for runner in runners:
        runner.kv_transport = config.settings.worker.kv_transport
    return ReplicaSet(
        runners,
        Router(config.settings.scheduler.routing),
        metrics,
        config.link_bandwidth_mbps,
        on_health,
    )


async def start_scheduler(config: SchedulerServiceConfig) -> SchedulerServer:
    """SERVING exactly while the worker is up. A failed start stops what it started."""
    settings, security = config.settings.scheduler, config.settings.security
    tls = load_tls(security.tls_dir, "scheduler") if security.tls_dir else None
    workers: list[WorkerClient] = [
        GrpcWorkerClient(
            address,
            settings.step_timeout_s,
            tls=tls,
            internal_token=security.internal_token,
            step_encoding=settings.step_encoding,
        )
        for address in config.worker_addresses
    ]
    health = HealthPublisher(is_serving=False)
    runner = build_replicas(config, workers, health.set_serving)
    identity: ServiceIdentity = identify("scheduler", config.listen, config.node_id)
    servicer = SchedulerServicer(runner, identity, transport_of(config.listen), config.worker_link)
    servicer.worker_link_shape = (config.worker_link_delay_ms, config.worker_link_rate_mbit)
    servicer.worker_links = list(config.worker_links)
    servicer.stream_catch_up = config.settings.tokenizer.stream_catch_up

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
            internal_token=security.internal_token,
        )
    except BaseException:
        await runner.stop()  # the worker channel, the loop and the metrics server
        raise
    identity.address = grpc_server.address
    return SchedulerServer(grpc_server, runner)
