"""The `inproc` placement: the three service cores in one process, wired with direct calls
(the same objects the servers use), behind one front-door gRPC server."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from deploy.spec import check_tokenizer_replicas, scheduler_config, tokenizer_config, worker_config
from services.common.health import HealthPublisher
from services.common.identity import identify
from services.config import HopscopeConfig
from services.scheduler.replicas import RequestRunner
from services.scheduler.server import build_replicas
from services.scheduler.worker_client import InprocWorkerClient
from services.tokenizer.scheduler_client import InprocSchedulerClient
from services.tokenizer.server import TokenizerServer, start_tokenizer
from services.worker.server import build_worker_service
from services.worker.servicer import WorkerService


@dataclass
class InprocPipeline:
    front_door: TokenizerServer
    runner: RequestRunner
    workers: list[WorkerService]

    @property
    def address(self) -> str:
        return self.front_door.address

    @property
    def worker(self) -> WorkerService:
        """The first worker replica (the only one unless `worker_replicas` > 1)."""
        return self.workers[0]

    @property
    def metrics_urls(self) -> dict[str, str]:
        return {
            **self.front_door.metrics_urls,
            "scheduler": self.runner.metrics.url,
            "worker": self.worker.metrics.url,
        }

    async def stop(self, grace_s: float = 10.0) -> None:
        await self.front_door.stop(grace_s)
        await self.runner.stop()
        for worker in self.workers:
            worker.close()


async def start_inproc(
    spec: HopscopeConfig, node_id: str = "", is_ray: bool = False
) -> InprocPipeline:
    """`node_id` / `is_ray` are what Describe reports (set when hosted in a Ray actor)."""
    check_tokenizer_replicas(spec)  # one process, one front door
    worker_service = worker_config(spec, "inproc", node_id)
    workers = [
        await asyncio.to_thread(build_worker_service, worker_service, "inproc")
        for _ in range(spec.deploy.worker_replicas)
    ]
    health = HealthPublisher(is_serving=False)  # the front door's: serving while the worker is up
    runner = build_replicas(
        scheduler_config(spec, "inproc", "inproc", node_id),
        [InprocWorkerClient(worker) for worker in workers],
        health.set_serving,
    )
    try:
        await runner.start()
        scheduler = InprocSchedulerClient(runner, identify("scheduler", "inproc", node_id))
        front_config = tokenizer_config(spec, spec.deploy.front_door, "inproc", node_id)
        front_config.is_ray = is_ray
        front = await start_tokenizer(front_config, scheduler, health)
    except BaseException:
        await runner.stop()
        for worker in workers:
            worker.close()
        raise
    return InprocPipeline(front, runner, workers)
