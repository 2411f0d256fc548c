"""The tokenizer service's one config: its settings sections as they are (`tokenizer`:
services/config.py TokenizerSettings, timeouts and streaming; `model`: what is served), plus the
wiring the deployer decides (where it listens, which scheduler it fronts, built by
deploy/spec.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.config import DEFAULTS, ModelSettings, TokenizerSettings


@dataclass(slots=True)
class TokenizerServiceConfig:
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    scheduler_address: str = "127.0.0.1:50052"
    listen: str = "127.0.0.1:50051"
    node_id: str = ""
    placement: str = DEFAULTS.deploy.placement  # recorded on spans and in Describe
    scheduler_link: str = ""  # how the path to the scheduler is shaped: "" | "netem" | "relay"
    scheduler_link_delay_ms: float = 0.0  # the emulated link's one-way delay (Describe)
    scheduler_link_rate_mbit: float = 0.0
    is_ray: bool = False
    metrics_address: str = ""  # "HOST:PORT" for /metrics; "" = off
    http_listen: str = ""  # "HOST:PORT" (port 0 = any) for the OpenAI-compatible HTTP API
    tls_dir: str = ""  # TLS on the front door, mutual TLS to the scheduler; "" = off
    internal_token: str = field(default="", repr=False)  # sent to the scheduler
    name: str = "tokenizer"  # a front-door replica's name: `tokenizer`, `tokenizer-1`, ...
    reuse_port: bool = False  # share `listen` / `http_listen` with the other replicas
