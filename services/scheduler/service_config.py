"""The scheduler service's one config: the core's batching settings plus where it listens and
which worker it drives."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.scheduler.config import SchedulerConfig

# How long the scheduler holds requests for a lost worker before failing them UNAVAILABLE: long
# enough for a restarted worker to load its model and rebuild its kernels (15-25 s seen on CPU).
WORKER_RESTART_TIMEOUT_S = 60.0


@dataclass(slots=True)
class SchedulerServiceConfig:
    core: SchedulerConfig = field(default_factory=SchedulerConfig)
    worker_address: str = "127.0.0.1:50053"  # "HOST:PORT" or "unix:PATH"
    listen: str = "127.0.0.1:50052"
    node_id: str = ""
    step_timeout_s: float = 120.0
    connect_timeout_s: float = 60.0
    worker_reconnect_timeout_s: float = WORKER_RESTART_TIMEOUT_S
    worker_link: str = ""
    metrics_address: str = ""  # "HOST:PORT" for /metrics; "" = off  # how the path to the worker is shaped: "" | "netem" | "relay"
    tls_dir: str = ""  # mutual TLS on TCP hops, both ways (services/common/tls.py); "" = off
    internal_token: str = field(default="", repr=False)  # sent to the worker, required of callers

    def __post_init__(self) -> None:
        if self.step_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("step_timeout_s and connect_timeout_s must be > 0")
        if self.worker_reconnect_timeout_s < 0:
            raise ValueError("worker_reconnect_timeout_s must be >= 0")
