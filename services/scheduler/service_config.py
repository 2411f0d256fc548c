"""The scheduler service's one config: its settings section as is (`scheduler`,
services/config.py SchedulerSettings: batching, timeouts, routing, step encoding), plus the
wiring the deployer decides (where it listens, which workers it drives, how their paths are
shaped)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.config import DEFAULTS, SchedulerSettings


@dataclass(slots=True)
class SchedulerServiceConfig:
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
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
    tls_dir: str = ""  # mutual TLS on TCP hops, both ways (services/common/tls.py); "" = off
    internal_token: str = field(default="", repr=False)  # sent to the worker, required of callers
    # worker replicas beyond `worker_address` (each its own KV cache and batch; `scheduler.routing`
    # picks one per request)
    extra_worker_addresses: list[str] = field(default_factory=list)
    # per replica (worker_address first): the link's bandwidth in Mbit/s for the router's
    # transfer term; 0 or missing = unknown (left out)
    link_bandwidth_mbps: list[float] = field(default_factory=list)
    # two settings of other sections that the scheduler acts on too, under their own names:
    # how a decode worker pulls KV from a prefill worker (worker.kv_transport), and whether
    # steps queued up behind a slow front door go to it as one message (tokenizer.stream_catch_up)
    kv_transport: str = DEFAULTS.worker.kv_transport
    stream_catch_up: bool = DEFAULTS.tokenizer.stream_catch_up

    @property
    def worker_addresses(self) -> list[str]:
        return [self.worker_address, *self.extra_worker_addresses]
