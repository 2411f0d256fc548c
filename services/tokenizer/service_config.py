"""The tokenizer service's one config: the settings tree as is (`settings.tokenizer`:
timeouts and streaming; `settings.model`: what is served; `settings.deploy`: the placement and
the HTTP front door; `settings.security`), plus the wiring the deployer decides (where it
listens, which scheduler it fronts, its replica name). Built by deploy/spec.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.config import HopscopeConfig


@dataclass(slots=True)
class TokenizerServiceConfig:
    settings: HopscopeConfig = field(default_factory=HopscopeConfig)
    scheduler_address: str = "127.0.0.1:50052"
    listen: str = "127.0.0.1:50051"
    node_id: str = ""
    scheduler_link: str = ""  # how the path to the scheduler is shaped: "" | "netem" | "relay"
    scheduler_link_delay_ms: float = 0.0  # the emulated link's one-way delay (Describe)
    scheduler_link_rate_mbit: float = 0.0
    is_ray: bool = False
    metrics_address: str = ""  # "HOST:PORT" for /metrics; "" = off
    name: str = "tokenizer"  # a front-door replica's name: `tokenizer`, `tokenizer-1`, ...
    reuse_port: bool = False  # share `listen` / the HTTP port with the other replicas
