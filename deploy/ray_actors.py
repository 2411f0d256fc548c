"""One Ray actor per service: it hosts that service's gRPC server on an address chosen before
the actor was created, so that Ray's restart (max_restarts=-1) of a killed actor binds the very
same address and the scheduler / tokenizer reconnect to it on their own.

The service runs on its own asyncio loop in a thread started by `__init__` (which Ray re-runs on
every restart); the actor's methods are synchronous and reach the loop thread-safely.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from deploy.cluster import LinkSettings
from deploy.lifecycle import START_TIMEOUT_S
from deploy.placement import NODE_LABEL_KEY, worker_role
from deploy.spec import scheduler_config, tokenizer_config, worker_config
from services.common.identity import NODE_NAME_ENV
from services.config import HopscopeConfig

ROLES = ("worker", "scheduler", "tokenizer", "pipeline")  # pipeline: all three, inproc


class ServiceStartError(RuntimeError):
    """The service inside the actor could not start; the message says which and why."""


@dataclass(slots=True)
class ActorPlan:
    """Everything one actor needs; Ray keeps it and passes it again on restart."""

    role: str
    spec: HopscopeConfig
    listen: str  # concrete: "IP:PORT" or "unix:PATH" (never port 0, so restarts rebind it)
    downstream: str = ""  # the address this service connects to
    link: LinkSettings = field(default_factory=LinkSettings)  # shaped: a relay to downstream
    otel_env: dict[str, str] = field(default_factory=dict)
    # the TLS files this role needs, read by the driver (services/common/tls.py: read_tls_files):
    # contents, not a path, so no node needs the driver's disk; `spec.tls_dir` is set on the node
    tls_files: dict[str, bytes] = field(default_factory=dict, repr=False)
    # the scheduler's further worker replicas (`worker-1`, ...), each dialled like `downstream`,
    # through its own link (shaped: its own relay; a replica on the scheduler's node: none)
    extra_downstreams: list[str] = field(default_factory=list)
    extra_links: list[LinkSettings] = field(default_factory=list)

    def __post_init__(self) -> None:
        assert self.service in ROLES, self.role

    @property
    def links(self) -> list[LinkSettings]:
        """One per downstream (`downstream` first); missing extra links are `link`'s."""
        extra = [*self.extra_links, *[self.link] * len(self.extra_downstreams)]
        return [self.link, *extra[: len(self.extra_downstreams)]]

    @property
    def service(self) -> str:
        """`worker` for every replica (`worker-1`, ...); otherwise the role itself."""
        return self.role.partition("-")[0]


class ServiceHost:
    """The actor body (wrapped with `ray.remote` by `actor_class`)."""

    def __init__(self, plan: ActorPlan) -> None:
        import ray

        self.plan = plan
        context = ray.get_runtime_context()
        self.node_id = context.get_node_id()
        # this process's services name their node as `cluster up` did (services/common/identity)
        os.environ[NODE_NAME_ENV] = str(context.get_node_labels().get(NODE_LABEL_KEY, ""))
        self.loop = asyncio.new_event_loop()
        self.service: Any = None
        self.relay: Any = None
        self.relays: list[Any] = []
        self.tls_dir: Path | None = None
        self.failure: BaseException | None = None
        self.is_ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"hopscope-{plan.role}", daemon=True)
        self.thread.start()
        if not self.is_ready.wait(START_TIMEOUT_S):
            raise ServiceStartError(f"{plan.role} did not start within {START_TIMEOUT_S:.0f} s")
        if self.failure is not None:
            raise ServiceStartError(
                f"{plan.role} could not start: {self.failure}"
            ) from self.failure

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.service = self.loop.run_until_complete(self._start())
        except BaseException as exc:  # noqa: BLE001 - reported by __init__ to the driver
            self.failure = exc
            self.is_ready.set()
            return
        self.is_ready.set()
        self.loop.run_forever()

    async def _start(self) -> Any:
        os.environ.update(self.plan.otel_env)
        from tracing.setup import configure_tracing

        configure_tracing(
            f"hopscope-{self.plan.role}",
            {
                "hopscope.placement": self.plan.spec.deploy.placement,
                "hopscope.model": self.plan.spec.model.model,
                "ray.node_id": self.node_id,
            },
        )
        if self.plan.listen.startswith("unix:"):
            socket_path = Path(self.plan.listen.removeprefix("unix:"))
            _private_dir(socket_path.parent)
            socket_path.unlink(missing_ok=True)  # left behind by a killed predecessor
        plan = self.plan
        if plan.tls_files:
            from services.common.tls import write_tls_files

            self.tls_dir = write_tls_files(plan.tls_files)
            plan = replace(plan, spec=plan.spec.with_(tls_dir=str(self.tls_dir)))
        downstreams = [plan.downstream, *plan.extra_downstreams]
        # only this process dials the relays (one per shaped downstream): they listen on loopback
        for i, (target, link) in enumerate(zip(downstreams, plan.links, strict=True)):
            if link.is_shaped:
                relay = await _start_relay("127.0.0.1", target, link)
                self.relays.append(relay)
                downstreams[i] = relay.address
        self.relay = self.relays[0] if plan.link.is_shaped else None
        return await _start_service(plan, downstreams, self.node_id)

    @property
    def host_ip(self) -> str:
        import ray

        return str(ray.util.get_node_ip_address())

    def info(self) -> dict[str, Any]:
        return {
            "role": self.plan.role,
            "address": self.service.address,
            "pid": os.getpid(),
            "node_id": self.node_id,
            "host": self.host_ip,
            "relay": getattr(self.relay, "address", ""),
            "relays": [relay.address for relay in self.relays],  # one per shaped downstream
            # a replica's /metrics is its own (`worker-1`), not the first worker's
            "metrics": {
                (self.plan.role if name == self.plan.service else name): url
                for name, url in self.service.metrics_urls.items()
            },
        }

    def check_health(self) -> None:
        """Raises when the service's loop has died (the driver then restarts this actor)."""
        if self.failure is not None or not self.thread.is_alive() or not self.loop.is_running():
            raise ServiceStartError(f"{self.plan.role} is not running: {self.failure}")

    def stop(self, grace_s: float = 5.0) -> None:
        """Drain (health NOT_SERVING, in-flight streams finish), then stop the loop."""
        future = asyncio.run_coroutine_threadsafe(self._stop(grace_s), self.loop)
        future.result(timeout=grace_s + 10.0)
        self.loop.call_soon_threadsafe(self.loop.stop)

    async def _stop(self, grace_s: float) -> None:
        from tracing.setup import shutdown_tracing

        await self.service.stop(grace_s)
        # the actor is killed right after: flush its spans now or they are lost
        await asyncio.to_thread(shutdown_tracing)
        for relay in self.relays:
            relay.stop()  # returns at once: its threads end on their own
        if self.tls_dir is not None:
            shutil.rmtree(self.tls_dir, ignore_errors=True)
        if self.plan.listen.startswith("unix:"):
            socket_path = Path(self.plan.listen.removeprefix("unix:"))
            socket_path.unlink(missing_ok=True)
            try:
                socket_path.parent.rmdir()  # the last service of this deployment on the node
            except OSError:
                pass


def _private_dir(path: Path) -> None:
    """The Unix sockets' directory: ours alone (0700), so only this user's processes connect."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise ServiceStartError(f"{path} belongs to another user; refusing to put sockets in it")
    path.chmod(0o700)


async def _start_service(plan: ActorPlan, downstreams: list[str], node_id: str) -> Any:
    spec, link = plan.spec, plan.link.mechanism
    downstream = downstreams[0]
    if plan.service == "worker":
        from services.worker.server import start_worker

        return await start_worker(
            worker_config(spec, plan.listen, node_id, role=worker_role(plan.role))
        )
    if plan.role == "scheduler":
        from services.scheduler.server import start_scheduler

        config = scheduler_config(spec, plan.listen, downstream, node_id, downstreams[1:])
        config.worker_link = link
        config.worker_link_delay_ms = plan.link.delay_ms
        config.worker_link_rate_mbit = plan.link.rate_mbit
        shaped = [lk for lk in plan.links if lk.is_shaped]
        if shaped:  # the cluster's one link shape, on the replicas whose hop crosses nodes
            config.worker_link_delay_ms = shaped[0].delay_ms
            config.worker_link_rate_mbit = shaped[0].rate_mbit
        config.worker_links = [lk.mechanism for lk in plan.links]
        # the router's transfer term: each replica's own link bandwidth (0: not capped, left out)
        config.link_bandwidth_mbps = [lk.rate_mbit for lk in plan.links]
        return await start_scheduler(config)
    if plan.service == "tokenizer":  # `tokenizer`, or a front-door replica (`tokenizer-1`, ...)
        from services.tokenizer.server import start_tokenizer

        front = tokenizer_config(spec, plan.listen, downstream, node_id, name=plan.role)
        front.scheduler_link, front.is_ray = link, True
        front.scheduler_link_delay_ms = plan.link.delay_ms
        front.scheduler_link_rate_mbit = plan.link.rate_mbit
        return await start_tokenizer(front)
    from deploy.inproc import start_inproc

    host, port = plan.listen.rsplit(":", 1)
    return await start_inproc(spec.with_(host=host, port=int(port)), node_id, is_ray=True)


async def _start_relay(listen_host: str, target: str, link: LinkSettings) -> Any:
    """The emulated link (deploy/relay.py, built separately): delays the bytes on the path."""
    try:
        from deploy.relay import start_relay  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise ServiceStartError(
            "this cluster has link settings (delay/rate) but deploy/relay.py is not available; "
            "start the cluster without --delay-ms/--rate-mbit"
        ) from exc
    relay = start_relay(listen_host, target, link.delay_ms, link.rate_mbit)
    return await relay if inspect.isawaitable(relay) else relay


def actor_class() -> Any:
    """`ServiceHost` as a Ray actor class: restarted forever on the node it was placed on."""
    import ray

    return ray.remote(max_restarts=-1, max_task_retries=0)(ServiceHost)
