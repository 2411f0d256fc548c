"""The scheduler service's one config: the settings tree as is (`settings.scheduler` is what
its core and runner read; it also acts on `worker.kv_transport` and `tokenizer.stream_catch_up`,
and on `security`), plus the wiring the deployer decides (where it listens, which workers it
drives, how their paths are shaped). Built by deploy/spec.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.config import HopscopeConfig


@dataclass(slots=True)
class SchedulerServiceConfig:
    settings: HopscopeConfig = field(default_factory=HopscopeConfig)
    worker_address: str = "127.0.0.1:50053"  # "HOST:PORT" or "unix:PATH"
    listen: str = "127.0.0.1:50052"
    node_id: str = ""
    worker_link: str = ""  # how the path to the worker is shaped: "" | "netem" | "relay"
    worker_link_delay_ms: float = 0.0  # the emulated link's one-way delay (Describe reports it)
    worker_link_rate_mbit: float = 0.0
    # per replica (worker_address first): how its path is shaped, when replicas differ (on Ray
    # a replica on the scheduler's node has no network link); empty: `worker_link` for all
    worker_links: list[str] = field(default_factory=list)
    metrics_address: str = ""  # "HOST:PORT" for /metrics; "" = off
    # worker replicas beyond `worker_address` (each its own KV cache and batch;
    # `settings.scheduler.routing` picks one per request)
    extra_worker_addresses: list[str] = field(default_factory=list)
    # per replica (worker_address first): the link's bandwidth in Mbit/s for the router's
    # transfer term; 0 or missing = unknown (left out)
    link_bandwidth_mbps: list[float] = field(default_factory=list)

    @property
    def worker_addresses(self) -> list[str]:
        return [self.worker_address, *self.extra_worker_addresses]
