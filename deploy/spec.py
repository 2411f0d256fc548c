"""What `hopscope serve` deploys: the configuration tree (services/config.py), and the one
mapping from it to each service's config (what a service process, actor or in-process core
receives, and all it reads)."""

from __future__ import annotations

import dataclasses
import re
import socket
from typing import Any

from services.common.metrics import metrics_port
from services.common.process import config_to_json
from services.config import HopscopeConfig
from services.scheduler.service_config import SchedulerServiceConfig
from services.tokenizer.service_config import TokenizerServiceConfig
from services.worker.service_config import WorkerServiceConfig

NO_RAY_PLACEMENTS = ("inproc", "colocated", "colocated-tcp", "disagg")
HTTP_LINE_PREFIX = "hopscope http: "
HTTP_RE = re.compile(rf"^{HTTP_LINE_PREFIX}(?P<url>http://\S+)$")


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
    return WorkerServiceConfig(
        settings=config,  # the tree as is: a new setting needs no line here
        listen=listen,
        node_id=node_id,
        metrics_address=metrics_address(config, "worker"),
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
        settings=config,  # the tree as is: a new setting needs no line here
        worker_address=worker_address,
        listen=listen,
        node_id=node_id,
        metrics_address=metrics_address(config, "scheduler"),
        extra_worker_addresses=list(extra_worker_addresses or []),
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
        settings=config,  # the tree as is: a new setting needs no line here
        scheduler_address=scheduler_address,
        listen=listen,
        node_id=node_id,
        metrics_address=metrics,
        name=name,
        reuse_port=config.deploy.tokenizer_replicas > 1,
    )


def service_json(service: Any) -> str:
    """A child's `--config`: its service config, the settings tree without its secrets (the
    internal token, the API key). A command line is visible to every user in `ps`; the child
    gets both from its environment (services/common/process.py, services/tokenizer/auth.py)."""
    security = dataclasses.replace(service.settings.security, internal_token="", api_key=None)
    settings = dataclasses.replace(service.settings, security=security)
    return config_to_json(dataclasses.replace(service, settings=settings))


def with_internal_token(config: HopscopeConfig, token: str) -> HopscopeConfig:
    return dataclasses.replace(
        config, security=dataclasses.replace(config.security, internal_token=token)
    )
