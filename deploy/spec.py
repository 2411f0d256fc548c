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
from services.scheduler.config import SchedulerConfig
from services.scheduler.service_config import SchedulerServiceConfig
from services.tokenizer.service_config import TokenizerServiceConfig
from services.worker.config import WorkerConfig
from services.worker.server import WorkerServiceConfig

NO_RAY_PLACEMENTS = ("inproc", "colocated", "colocated-tcp", "disagg")
HTTP_LINE_PREFIX = "hopscope http: "
HTTP_RE = re.compile(rf"^{HTTP_LINE_PREFIX}(?P<url>http://\S+)$")
MIB = 1024 * 1024

# The older names of settings that `ServeSpec(...)` still takes (now: HopscopeConfig.of(...)).
_OLD_NAMES = {
    "worker_reconnect_timeout_s": "worker_restart_timeout_s",
    "is_metrics_enabled": "metrics",
    "metrics_base_port": "metrics_port",
}


def ServeSpec(**values: Any) -> HopscopeConfig:
    """Deprecated: `HopscopeConfig.of(...)`. Takes the old flat names too (`is_metrics_enabled`,
    `metrics_base_port`, `worker_reconnect_timeout_s`, `prefix_caching="on"|"off"`, ...)."""
    renamed = {_OLD_NAMES.get(key, key): value for key, value in values.items()}
    for key in ("prefix_caching", "async_scheduling", "cuda_graphs"):
        if isinstance(renamed.get(key), str):
            renamed[key] = renamed[key] == "on"
    return HopscopeConfig.of(**renamed)


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


# SchedulerConfig fields whose tree setting has another name, and those that are not settings.
_CORE_RENAMES = {"enable_prefix_caching": "prefix_caching"}
_CORE_NOT_SETTINGS = frozenset({"enable_chunked_prefill"})


def scheduler_core_config(config: HopscopeConfig) -> SchedulerConfig:
    """The scheduler core's config: each of its fields from the scheduler setting of the same
    name, so a new core knob is its tree setting and its SchedulerConfig field, no line here.
    A field with no such setting is a bug (it would silently keep its default): refused."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(SchedulerConfig):
        if field.name in _CORE_NOT_SETTINGS:
            continue
        name = _CORE_RENAMES.get(field.name, field.name)
        if not hasattr(config.scheduler, name):
            raise TypeError(f"SchedulerConfig.{field.name} has no scheduler setting {name!r}")
        values[field.name] = getattr(config.scheduler, name)
    return SchedulerConfig(**values)


def scheduler_config(
    config: HopscopeConfig,
    listen: str,
    worker_address: str,
    node_id: str = "",
    extra_worker_addresses: list[str] | None = None,
) -> SchedulerServiceConfig:
    sched = config.scheduler
    return SchedulerServiceConfig(
        core=scheduler_core_config(config),
        worker_address=worker_address,
        listen=listen,
        node_id=node_id,
        step_timeout_s=sched.step_timeout_s,
        connect_timeout_s=sched.worker_connect_timeout_s,
        worker_reconnect_timeout_s=sched.worker_restart_timeout_s,
        metrics_address=metrics_address(config, "scheduler"),
        extra_worker_addresses=list(extra_worker_addresses or []),
        routing=sched.routing,
        tls_dir=config.security.tls_dir,
        internal_token=config.security.internal_token,
        step_encoding=sched.step_encoding,
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
    tok = config.tokenizer
    metrics = metrics_address(config, "tokenizer")
    if metrics and name != "tokenizer":
        metrics = f"{config.deploy.host}:0"
    return TokenizerServiceConfig(
        model=config.model.model,
        scheduler_address=scheduler_address,
        listen=listen,
        node_id=node_id,
        placement=config.deploy.placement,
        request_timeout_s=tok.request_timeout_s,
        connect_timeout_s=tok.scheduler_connect_timeout_s,
        scheduler_reconnect_timeout_s=tok.scheduler_reconnect_timeout_s,
        metrics_address=metrics,
        http_listen=config.deploy.http_listen,
        max_model_len=config.model.max_model_len,
        tls_dir=config.security.tls_dir,
        internal_token=config.security.internal_token,
        stream_interval=tok.stream_interval,
        stream_catch_up=tok.stream_catch_up,
        name=name,
        reuse_port=config.deploy.tokenizer_replicas > 1,
    )


def with_internal_token(config: HopscopeConfig, token: str) -> HopscopeConfig:
    return dataclasses.replace(
        config, security=dataclasses.replace(config.security, internal_token=token)
    )
