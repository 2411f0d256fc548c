"""What `hopscope serve` deploys: the configuration tree (services/config.py), and the one
mapping from it to each service's config (what a service process, actor or in-process core
receives, and all it reads)."""

from __future__ import annotations

import dataclasses
import re
import socket
from typing import Any

from services.common.metrics import metrics_port
from services.config import HopscopeConfig, engine_threads_count
from services.scheduler.service_config import SchedulerServiceConfig
from services.tokenizer.service_config import TokenizerServiceConfig
from services.worker.config import WorkerConfig
from services.worker.server import WorkerServiceConfig

NO_RAY_PLACEMENTS = ("inproc", "colocated", "colocated-tcp", "disagg")
HTTP_LINE_PREFIX = "hopscope http: "
HTTP_RE = re.compile(rf"^{HTTP_LINE_PREFIX}(?P<url>http://\S+)$")
MIB = 1024 * 1024


def announce_http(url: str) -> None:
    """The line a user (and a launcher) waits for: `hopscope http: http://HOST:PORT`."""
    print(f"{HTTP_LINE_PREFIX}{url}", flush=True)


def with_concrete_http_port(config: HopscopeConfig) -> HopscopeConfig:
    """Port 0 resolved to a free port now, for placements whose front door is a child that may
    be restarted (it must come back on the same port)."""
    if config.deploy.http_port != 0:
        return config
    with socket.socket() as sock:
        sock.bind((config.deploy.host, 0))
        return config.with_(http_port=int(sock.getsockname()[1]))


def front_door_credentials(config: HopscopeConfig) -> Any:
    """What the deployer's own health checks of its front door dial with: TLS with the TLS
    directory's CA and client certificate, or None (plaintext)."""
    if not config.security.tls_dir:
        return None
    from services.common.tls import client_credentials_from_dir

    return client_credentials_from_dir(config.security.tls_dir)


def metrics_address(config: HopscopeConfig, service: str) -> str:
    deploy = config.deploy
    if not deploy.is_metrics_enabled:
        return ""
    return f"{deploy.host}:{metrics_port(service, deploy.metrics_base_port)}"


def worker_config(
    config: HopscopeConfig, listen: str, node_id: str = "", role: str = "mixed"
) -> WorkerServiceConfig:
    worker = config.worker
    engine = WorkerConfig(
        model=config.model.model,
        device=worker.device,
        dtype=worker.dtype,
        kernels=worker.kernels,
        kv_cache_bytes=worker.kv_cache_mb * MIB,
        max_num_batched_tokens=config.scheduler.max_num_batched_tokens,
        swap_space_bytes=worker.swap_space_mb * MIB,
        max_model_len=config.model.max_model_len,
        num_threads=engine_threads_count(worker.engine_threads),
        wait_policy=worker.engine_wait_policy,
        cuda_graphs=worker.cuda_graphs,
        cuda_graph_max_batch=worker.cuda_graph_max_batch,
        compile=worker.compile,
        kv_export_thread=worker.kv_export_thread,
        quantization=worker.quantization,
        quantization_group_size=worker.quantization_group_size,
    )
    return WorkerServiceConfig(
        engine=engine,
        listen=listen,
        node_id=node_id,
        metrics_address=metrics_address(config, "worker"),
        tls_dir=config.security.tls_dir,
        internal_token=config.security.internal_token,
        role=role,
    )


def scheduler_config(
    config: HopscopeConfig,
    listen: str,
    worker_address: str,
    node_id: str = "",
    extra_worker_addresses: list[str] | None = None,
) -> SchedulerServiceConfig:
    return SchedulerServiceConfig(
        scheduler=config.scheduler,  # the section as is: a new scheduler setting needs no line here
        worker_address=worker_address,
        listen=listen,
        node_id=node_id,
        metrics_address=metrics_address(config, "scheduler"),
        extra_worker_addresses=list(extra_worker_addresses or []),
        tls_dir=config.security.tls_dir,
        internal_token=config.security.internal_token,
        kv_transport=config.worker.kv_transport,
        stream_catch_up=config.tokenizer.stream_catch_up,
    )


def tokenizer_names(num_replicas: int) -> list[str]:
    """The front-door replicas (`--tokenizer-replicas`): `tokenizer`, then `tokenizer-1`, ..."""
    return ["tokenizer", *(f"tokenizer-{i}" for i in range(1, num_replicas))]


def check_tokenizer_replicas(config: HopscopeConfig) -> None:
    """ValueError for front-door replicas the placement cannot run (before anything starts):
    `inproc` (one process, with or without Ray). Elsewhere each replica is a process (`--no-ray`)
    or an actor on the tokenizer's node (Ray), all on the one front-door port."""
    replicas = config.deploy.tokenizer_replicas
    if replicas > 1 and config.deploy.placement == "inproc":
        raise ValueError(
            f"--tokenizer-replicas {replicas} needs a front door of its own per replica: "
            "placement inproc runs the whole pipeline in one process (one front door); use "
            "--placement colocated (or colocated-tcp)"
        )


def tokenizer_config(
    config: HopscopeConfig,
    listen: str,
    scheduler_address: str,
    node_id: str = "",
    name: str = "tokenizer",
) -> TokenizerServiceConfig:
    """`name`: the front-door replica (tokenizer_names). With several, each shares `listen` and
    the HTTP port with the others (SO_REUSEPORT); `tokenizer-1`, ... serve /metrics on any
    free port (`tokenizer` keeps the tokenizer's)."""
    metrics = metrics_address(config, "tokenizer")
    if metrics and name != "tokenizer":
        metrics = f"{config.deploy.host}:0"
    return TokenizerServiceConfig(
        tokenizer=config.tokenizer,  # the sections as they are: a new setting needs no line here
        model=config.model,
        scheduler_address=scheduler_address,
        listen=listen,
        node_id=node_id,
        placement=config.deploy.placement,
        metrics_address=metrics,
        http_listen=config.deploy.http_listen,
        tls_dir=config.security.tls_dir,
        internal_token=config.security.internal_token,
        name=name,
        reuse_port=config.deploy.tokenizer_replicas > 1,
    )


def with_internal_token(config: HopscopeConfig, token: str) -> HopscopeConfig:
    return dataclasses.replace(
        config, security=dataclasses.replace(config.security, internal_token=token)
    )
