"""The scheduler service's one config: the core's batching settings plus where it listens and
which worker it drives."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.convert import STEP_ENCODINGS
from services.config import DEFAULTS, check_multi_step
from services.scheduler.config import SchedulerConfig
from services.scheduler.router import ROUTING_POLICIES

# How long the scheduler holds requests for a lost worker before failing them UNAVAILABLE: long
# enough for a restarted worker to load its model and rebuild its kernels (15-25 s seen on CPU).
# `serve --worker-restart-timeout-s`; the default is the configuration tree's.
WORKER_RESTART_TIMEOUT_S = DEFAULTS.scheduler.worker_restart_timeout_s


@dataclass(slots=True)
class SchedulerServiceConfig:
    core: SchedulerConfig = field(default_factory=SchedulerConfig)
    worker_address: str = "127.0.0.1:50053"  # "HOST:PORT" or "unix:PATH"
    listen: str = "127.0.0.1:50052"
    node_id: str = ""
    step_timeout_s: float = DEFAULTS.scheduler.step_timeout_s
    connect_timeout_s: float = DEFAULTS.scheduler.worker_connect_timeout_s
    worker_reconnect_timeout_s: float = WORKER_RESTART_TIMEOUT_S
    worker_link: str = ""
    worker_link_delay_ms: float = 0.0  # the emulated link's one-way delay (Describe reports it)
    worker_link_rate_mbit: float = 0.0
    # per replica (worker_address first): how its path is shaped, when replicas differ (on Ray
    # a replica on the scheduler's node has no network link); empty: `worker_link` for all
    worker_links: list[str] = field(default_factory=list)
    metrics_address: str = ""  # "HOST:PORT" for /metrics; "" = off  # how the path to the worker is shaped: "" | "netem" | "relay"
    tls_dir: str = ""  # mutual TLS on TCP hops, both ways (services/common/tls.py); "" = off
    internal_token: str = field(default="", repr=False)  # sent to the worker, required of callers
    # how a step's sequences travel to the worker: nested | packed | delta (convert.StepEncoder)
    step_encoding: str = DEFAULTS.scheduler.step_encoding

    # worker replicas beyond `worker_address` (each its own KV cache and batch), and how a
    # request picks one: round_robin | least_load | prefix | network_aware
    extra_worker_addresses: list[str] = field(default_factory=list)
    routing: str = DEFAULTS.scheduler.routing
    # per replica (worker_address first): the link's bandwidth in Mbit/s for the router's
    # transfer term; 0 or missing = unknown (left out)
    link_bandwidth_mbps: list[float] = field(default_factory=list)
    # disaggregated placements: how a decode worker pulls KV from a prefill worker (grpc | shm)
    kv_transport: str = "grpc"
    # steps queued up behind a front door that reads slowly go to it as one message
    stream_catch_up: bool = DEFAULTS.tokenizer.stream_catch_up

    @property
    def worker_addresses(self) -> list[str]:
        return [self.worker_address, *self.extra_worker_addresses]

    def __post_init__(self) -> None:
        if self.step_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("step_timeout_s and connect_timeout_s must be > 0")
        if self.routing not in ROUTING_POLICIES:
            raise ValueError(
                f"routing must be one of {', '.join(ROUTING_POLICIES)}, got {self.routing!r}"
            )
        if self.step_encoding not in STEP_ENCODINGS:
            raise ValueError(
                f"step_encoding must be one of {', '.join(STEP_ENCODINGS)}, "
                f"got {self.step_encoding!r}"
            )
        check_multi_step(self.step_encoding, self.core.num_scheduler_steps)
        if self.worker_reconnect_timeout_s < 0:
            raise ValueError("worker_reconnect_timeout_s must be >= 0")
