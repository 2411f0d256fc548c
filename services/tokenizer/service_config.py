"""The tokenizer service's one config: what the front door serves and which scheduler it
fronts (built from the configuration tree by deploy/spec.py; defaults are the tree's)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.config import DEFAULTS


@dataclass(slots=True)
class TokenizerServiceConfig:
    model: str = DEFAULTS.model.model  # preset name or local Hugging Face directory
    scheduler_address: str = "127.0.0.1:50052"
    listen: str = "127.0.0.1:50051"
    node_id: str = ""
    placement: str = DEFAULTS.deploy.placement
    request_timeout_s: float = DEFAULTS.tokenizer.request_timeout_s  # without its own deadline
    connect_timeout_s: float = DEFAULTS.tokenizer.scheduler_connect_timeout_s
    # how long requests in flight wait for a lost scheduler to come back (then resubmitted)
    scheduler_reconnect_timeout_s: float = DEFAULTS.tokenizer.scheduler_reconnect_timeout_s
    scheduler_link: str = ""  # how the path to the scheduler is shaped: "" | "netem" | "relay"
    scheduler_link_delay_ms: float = 0.0  # the emulated link's one-way delay (Describe)
    scheduler_link_rate_mbit: float = 0.0
    is_ray: bool = False
    metrics_address: str = ""  # "HOST:PORT" for /metrics; "" = off
    http_listen: str = ""  # "HOST:PORT" (port 0 = any) for the OpenAI-compatible HTTP API
    max_model_len: int | None = None  # the context cap the worker serves (--max-model-len)
    tls_dir: str = ""  # TLS on the front door, mutual TLS to the scheduler; "" = off
    internal_token: str = field(default="", repr=False)  # sent to the scheduler
    # at most this many tokens per Generate message: 1 = one message per scheduler step; N > 1
    # sends the first token at once, then every N tokens (and the last), fewer messages to write
    stream_interval: int = DEFAULTS.tokenizer.stream_interval
    # tokens queued up for a stream (client or front door behind) go out in one message
    stream_catch_up: bool = DEFAULTS.tokenizer.stream_catch_up
    name: str = "tokenizer"  # a front-door replica's name: `tokenizer`, `tokenizer-1`, ...
    reuse_port: bool = False  # share `listen` / `http_listen` with the other replicas

    def __post_init__(self) -> None:
        if self.request_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("request_timeout_s and connect_timeout_s must be > 0")
        if self.scheduler_reconnect_timeout_s < 0:
            raise ValueError("scheduler_reconnect_timeout_s must be >= 0")
        if self.stream_interval < 1:
            raise ValueError(f"stream_interval must be >= 1, got {self.stream_interval}")
