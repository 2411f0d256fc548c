"""What `hopscope serve` deploys: one typed spec, from which each service's config is derived."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.metrics import METRICS_PORTS
from services.scheduler.config import SchedulerConfig
from services.scheduler.service_config import SchedulerServiceConfig
from services.tokenizer.server import TokenizerServiceConfig
from services.worker.config import WorkerConfig
from services.worker.server import WorkerServiceConfig

NO_RAY_PLACEMENTS = ("inproc", "colocated", "colocated-tcp")
DEFAULT_PORT = 50051


@dataclass(slots=True)
class ServeSpec:
    placement: str = "inproc"
    model: str = "tiny"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    device: str = "cpu"
    dtype: str | None = None
    kernels: str = "auto"
    kv_cache_mb: int = 256
    batching: str = "continuous"
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    max_queue_len: int = 512
    prefix_caching: str = "on"  # "on" | "off"
    preemption: str = "recompute"  # "recompute" | "swap"
    swap_space_mb: int = 0
    worker_replicas: int = 1  # model workers, each its own KV cache and batch
    routing: str = "network_aware"  # round_robin | least_load | prefix | network_aware
    request_timeout_s: float = 600.0
    worker_reconnect_timeout_s: float = 10.0
    is_metrics_enabled: bool = False  # /metrics on METRICS_PORTS at `host`

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.kv_cache_mb < 1:
            raise ValueError("kv_cache_mb must be >= 1")
        if self.prefix_caching not in ("on", "off"):
            raise ValueError(f"prefix_caching must be on or off, got {self.prefix_caching!r}")
        if self.worker_replicas < 1:
            raise ValueError(f"worker_replicas must be >= 1, got {self.worker_replicas}")
        if self.swap_space_mb < 0:
            raise ValueError(f"swap_space_mb must be >= 0, got {self.swap_space_mb}")
        if self.preemption == "swap" and self.swap_space_mb == 0:
            raise ValueError("preemption swap needs host memory: give --swap-space-mb (e.g. 256)")

    @property
    def front_door(self) -> str:
        return f"{self.host}:{self.port}"

    def metrics_address(self, service: str) -> str:
        return f"{self.host}:{METRICS_PORTS[service]}" if self.is_metrics_enabled else ""

    def worker_config(self, listen: str, node_id: str = "") -> WorkerServiceConfig:
        engine = WorkerConfig(
            model=self.model,
            device=self.device,
            dtype=self.dtype,
            kernels=self.kernels,
            kv_cache_bytes=self.kv_cache_mb * 1024 * 1024,
            max_num_batched_tokens=self.max_num_batched_tokens,
            swap_space_bytes=self.swap_space_mb * 1024 * 1024,
        )
        return WorkerServiceConfig(
            engine=engine,
            listen=listen,
            node_id=node_id,
            metrics_address=self.metrics_address("worker"),
        )

    def scheduler_config(
        self,
        listen: str,
        worker_address: str,
        node_id: str = "",
        extra_worker_addresses: list[str] | None = None,
    ) -> SchedulerServiceConfig:
        core = SchedulerConfig(
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_queue_len=self.max_queue_len,
            batching=self.batching,  # type: ignore[arg-type]
            enable_prefix_caching=self.prefix_caching == "on",
            preemption=self.preemption,  # type: ignore[arg-type]
        )
        return SchedulerServiceConfig(
            core=core,
            worker_address=worker_address,
            listen=listen,
            node_id=node_id,
            worker_reconnect_timeout_s=self.worker_reconnect_timeout_s,
            metrics_address=self.metrics_address("scheduler"),
            extra_worker_addresses=list(extra_worker_addresses or []),
            routing=self.routing,
        )

    def tokenizer_config(
        self, listen: str, scheduler_address: str, node_id: str = ""
    ) -> TokenizerServiceConfig:
        return TokenizerServiceConfig(
            model=self.model,
            scheduler_address=scheduler_address,
            listen=listen,
            node_id=node_id,
            placement=self.placement,
            request_timeout_s=self.request_timeout_s,
            metrics_address=self.metrics_address("tokenizer"),
        )
