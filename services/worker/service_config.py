"""The worker service's one config: its engine's settings plus where it listens (built from the
configuration tree by deploy/spec.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.config import WORKER_ROLES
from services.worker.config import WorkerConfig


@dataclass(slots=True)
class WorkerServiceConfig:
    engine: WorkerConfig = field(default_factory=WorkerConfig)
    listen: str = "127.0.0.1:50053"  # "HOST:PORT" or "unix:PATH"
    node_id: str = ""
    metrics_address: str = ""  # "HOST:PORT" for /metrics; "" = off
    tls_dir: str = ""  # mutual TLS on a TCP listener (services/common/tls.py); "" = off
    internal_token: str = field(default="", repr=False)  # callers must send it; "" = no check
    # "mixed" (prompts and decodes in the same steps), "prefill" or "decode" (disaggregated
    # placements): reported in Info, the scheduler schedules it by it
    role: str = "mixed"

    def __post_init__(self) -> None:
        if self.role not in WORKER_ROLES:
            raise ValueError(
                f"worker role must be one of {', '.join(WORKER_ROLES)}, got {self.role!r}"
            )
