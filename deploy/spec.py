"""What `hopscope serve` deploys: one typed spec, from which each service's config is derived."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field, replace
from typing import Any

from loadgen.address import DEFAULT_PORT
from services.common.metrics import DEFAULT_METRICS_BASE_PORT, metrics_port
from services.scheduler.config import SchedulerConfig
from services.scheduler.service_config import WORKER_RESTART_TIMEOUT_S, SchedulerServiceConfig
from services.tokenizer.server import TokenizerServiceConfig
from services.worker.config import WorkerConfig
from services.worker.server import WorkerServiceConfig

NO_RAY_PLACEMENTS = ("inproc", "colocated", "colocated-tcp")
HTTP_LINE_PREFIX = "hopscope http: "
HTTP_RE = re.compile(rf"^{HTTP_LINE_PREFIX}(?P<url>http://\S+)$")


def announce_http(url: str) -> None:
    """The line a user (and a launcher) waits for: `hopscope http: http://HOST:PORT`."""
    print(f"{HTTP_LINE_PREFIX}{url}", flush=True)


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
    async_scheduling: str = "off"  # "on": build step N+1 while step N runs
    worker_replicas: int = 1  # model workers, each its own KV cache and batch
    routing: str = "network_aware"  # round_robin | least_load | prefix | network_aware
    request_timeout_s: float = 600.0
    worker_reconnect_timeout_s: float = WORKER_RESTART_TIMEOUT_S
    is_metrics_enabled: bool = False  # /metrics of each service at `host`
    metrics_base_port: int = DEFAULT_METRICS_BASE_PORT  # + 0, 1, 2 by service; 0: any free port
    http_port: int | None = None  # the OpenAI-compatible HTTP front door at `host` (0 = any)
    max_model_len: int | None = None  # caps the context (and the KV cache it needs)
    tls_dir: str = ""  # TLS on every TCP hop, mutual between services (`hopscope certs`)
    stream_interval: int = 1  # tokens per front-door message at most (first token at once)
    step_encoding: str = "delta"  # scheduler -> worker step messages: nested | packed | delta
    num_scheduler_steps: int = 1  # multi-step decoding: decode steps per worker round trip
    engine_threads: int = 0  # the worker engine's torch CPU threads (0: one per core)
    cuda_graphs: str = "off"  # "on": decode-only steps replayed from CUDA graphs (CUDA only)
    cuda_graph_max_batch: int = 64  # the largest decode batch captured
    compile: bool = False  # torch.compile of the model's dense parts (torch op set)
    # made by the deployer (deploy/local.py, deploy/ray_serve.py) for each deployment
    internal_token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if not 0 <= self.metrics_base_port <= 65535 - 2:
            raise ValueError(f"metrics port must be in [0, 65533], got {self.metrics_base_port}")
        if self.kv_cache_mb < 1:
            raise ValueError("kv_cache_mb must be >= 1")
        if self.prefix_caching not in ("on", "off"):
            raise ValueError(f"prefix_caching must be on or off, got {self.prefix_caching!r}")
        if self.async_scheduling not in ("on", "off"):
            raise ValueError(f"async_scheduling must be on or off, got {self.async_scheduling!r}")
        if self.worker_replicas < 1:
            raise ValueError(f"worker_replicas must be >= 1, got {self.worker_replicas}")
        if self.engine_threads < 0:
            raise ValueError(
                f"--engine-threads must be >= 0 (0: one per core), got {self.engine_threads}"
            )
        if self.num_scheduler_steps < 1:
            raise ValueError(f"--num-scheduler-steps must be >= 1, got {self.num_scheduler_steps}")
        if self.num_scheduler_steps > 1 and self.step_encoding == "nested":
            raise ValueError(
                "--num-scheduler-steps > 1 needs --step-encoding packed or delta (a nested step "
                "message carries one step)"
            )
        if self.swap_space_mb < 0:
            raise ValueError(f"swap_space_mb must be >= 0, got {self.swap_space_mb}")
        if self.preemption == "swap" and self.swap_space_mb == 0:
            raise ValueError("preemption swap needs host memory: give --swap-space-mb (e.g. 256)")
        if self.http_port is not None and not 0 <= self.http_port < 65536:
            raise ValueError(f"--http-port must be in [0, 65535], got {self.http_port}")
        if self.stream_interval < 1:
            raise ValueError(f"--stream-interval must be >= 1, got {self.stream_interval}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"--max-model-len must be >= 2, got {self.max_model_len}")
        self._check_step_loop()
        if not self.worker_reconnect_timeout_s >= 0:
            raise ValueError(
                f"--worker-restart-timeout must be >= 0 s, got {self.worker_reconnect_timeout_s}"
            )

    def _check_step_loop(self) -> None:
        """What can be refused before anything starts (the device itself is checked where the
        worker runs: on Ray that may be another node)."""
        if self.cuda_graphs not in ("on", "off"):
            raise ValueError(f"--cuda-graphs must be on or off, got {self.cuda_graphs!r}")
        if self.cuda_graphs == "on" and self.device == "cpu":
            raise ValueError(
                "--cuda-graphs needs CUDA (--device cuda); CPU steps run eagerly, leave it off"
            )
        if self.compile and self.kernels == "native":
            raise ValueError(
                "--compile compiles the torch op set; the native CPU kernels are already fused: "
                "use --kernels auto (or torch) with --compile"
            )

    @property
    def front_door(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def http_listen(self) -> str:
        return f"{self.host}:{self.http_port}" if self.http_port is not None else ""

    def with_concrete_http_port(self) -> ServeSpec:
        """Port 0 resolved to a free port now, for placements whose front door is a child that
        may be restarted (it must come back on the same port)."""
        if self.http_port != 0:
            return self
        with socket.socket() as sock:
            sock.bind((self.host, 0))
            return replace(self, http_port=int(sock.getsockname()[1]))

    def front_door_credentials(self) -> Any:
        """What the deployer's own health checks of its front door dial with: TLS with the TLS
        directory's CA and client certificate, or None (plaintext)."""
        if not self.tls_dir:
            return None
        from services.common.tls import client_credentials_from_dir

        return client_credentials_from_dir(self.tls_dir)

    def metrics_address(self, service: str) -> str:
        if not self.is_metrics_enabled:
            return ""
        return f"{self.host}:{metrics_port(service, self.metrics_base_port)}"

    def worker_config(self, listen: str, node_id: str = "") -> WorkerServiceConfig:
        engine = WorkerConfig(
            model=self.model,
            device=self.device,
            dtype=self.dtype,
            kernels=self.kernels,
            kv_cache_bytes=self.kv_cache_mb * 1024 * 1024,
            max_num_batched_tokens=self.max_num_batched_tokens,
            swap_space_bytes=self.swap_space_mb * 1024 * 1024,
            max_model_len=self.max_model_len,
            num_threads=self.engine_threads,
            cuda_graphs=self.cuda_graphs == "on",
            cuda_graph_max_batch=self.cuda_graph_max_batch,
            compile=self.compile,
        )
        return WorkerServiceConfig(
            engine=engine,
            listen=listen,
            node_id=node_id,
            metrics_address=self.metrics_address("worker"),
            tls_dir=self.tls_dir,
            internal_token=self.internal_token,
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
            async_scheduling=self.async_scheduling == "on",
            num_scheduler_steps=self.num_scheduler_steps,
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
            tls_dir=self.tls_dir,
            internal_token=self.internal_token,
            step_encoding=self.step_encoding,
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
            http_listen=self.http_listen,
            max_model_len=self.max_model_len,
            tls_dir=self.tls_dir,
            internal_token=self.internal_token,
            stream_interval=self.stream_interval,
        )
