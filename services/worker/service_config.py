"""The worker service's one config: the settings tree as is (`settings.worker` is its engine's
section; it also reads `settings.model` and the scheduler's step budget), plus the wiring the
deployer decides (where it listens, its role, its /metrics address). Built by deploy/spec.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.config import WORKER_ROLES, HopscopeConfig


@dataclass(slots=True)
class WorkerServiceConfig:
    settings: HopscopeConfig = field(default_factory=HopscopeConfig)
    listen: str = "127.0.0.1:50053"  # "HOST:PORT" or "unix:PATH"
    node_id: str = ""
    metrics_address: str = ""  # "HOST:PORT" for /metrics; "" = off
    # "mixed" (prompts and decodes in the same steps), "prefill" or "decode" (disaggregated
    # placements): reported in Info, the scheduler schedules it by it
    role: str = "mixed"

    def __post_init__(self) -> None:
        if self.role not in WORKER_ROLES:
            raise ValueError(
                f"worker role must be one of {', '.join(WORKER_ROLES)}, got {self.role!r}"
            )
