"""`hopscope serve` on Ray: each service a restartable actor, placed by the placement resolver
with a placement group (one bundle per node: STRICT_PACK together, STRICT_SPREAD apart; bundles
pinned to `hopscope-node` labels where the cluster has them)."""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from deploy.cluster import (
    ClusterError,
    LinkSettings,
    find_record,
    prepare_ray_driver,
    start_cluster,
    stop_cluster,
)
from deploy.lifecycle import (
    START_TIMEOUT_S,
    StopRequest,
    announce_front_door,
    announce_metrics,
    supervise,
    wait_serving,
)
from deploy.placement import (
    EDGES,
    NODE_LABEL_KEY,
    NodePlan,
    NodeView,
    Placement,
    PlacementError,
    assign_nodes,
    internal_address,
    resolve_placement,
)
from deploy.ray_actors import ActorPlan, actor_class
from deploy.spec import (
    announce_http,
    front_door_credentials,
    tokenizer_names,
    with_internal_token,
)
from services.common.threads import openmp_env_defaults
from services.config import HopscopeConfig

err = Console(stderr=True, highlight=False)

RESERVE_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0
BUNDLE_CPU = 0.01  # Ray needs non-empty bundles; the services themselves ask for next to nothing
ACTOR_CPU = 0.003
# passed on to every actor's environment (HOPSCOPE_API_KEY: the front door's key, never logged)
OTEL_PREFIXES = ("OTEL_", "HOPSCOPE_TRACE", "HOPSCOPE_API_KEY")
CODE_ROOT = Path(__file__).resolve().parents[1]  # holds deploy/, services/, ...: already importable


class DeployError(RuntimeError):
    """The deployment could not start or lost a service for good; the message says why."""


@dataclass
class RayDeployment:
    """The actors of one deployment; `start` returns the front-door address."""

    spec: HopscopeConfig
    placement: Placement
    link: LinkSettings = field(default_factory=LinkSettings)
    actors: dict[str, Any] = field(default_factory=dict)  # role -> actor handle
    infos: dict[str, dict[str, Any]] = field(default_factory=dict)
    pg: Any = None
    deploy_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        # a placement file's `worker_replicas` sets the count (PlacementError if the flag differs)
        replicas = self.placement.num_replicas(self.spec.deploy.worker_replicas)
        self.spec = self.spec.with_(worker_replicas=replicas)

    def start(self, timeout_s: float = START_TIMEOUT_S) -> str:
        try:
            plan = self._assign(alive_nodes())
            plans = self._actor_plans(plan, self._reserve(plan))
            cls = actor_class()
            for role, actor_plan in plans.items():  # all at once: each waits for its downstream
                self.actors[role] = self._create(cls, actor_plan, self._bundle_of(plan, role))
            self._wait_started(timeout_s)
            # its health follows every downstream
            wait_serving(self.front_door, timeout_s, front_door_credentials(self.spec))
        except TimeoutError as exc:
            self.stop()
            raise DeployError(f"the pipeline did not become healthy: {exc}") from exc
        except BaseException:
            self.stop()
            raise
        return self.front_door

    @property
    def metrics_urls(self) -> dict[str, str]:
        urls: dict[str, str] = {}
        for info in self.infos.values():
            urls.update(info.get("metrics", {}))
        return urls

    @property
    def front_door(self) -> str:
        return str(self.infos["pipeline" if self.placement.is_inproc else "tokenizer"]["address"])

    def _reserve(self, plan: NodePlan) -> list[NodeView]:
        """A placement group, one bundle per node; returns each bundle's node."""
        import ray
        from ray.util.placement_group import placement_group, placement_group_table

        cpus = [self._bundle_cpu(plan, i) for i in range(len(plan.labels))]
        refusal = room_refusal(plan, cpus, node_cpus(), ray.available_resources().get("CPU", 0.0))
        if refusal:  # what Ray would only say by timing out after RESERVE_TIMEOUT_S
            raise DeployError(f"placement {self.placement.name!r}: {refusal}")
        self.pg = placement_group(
            [{"CPU": cpu} for cpu in cpus],
            strategy=plan.strategy,
            bundle_label_selector=plan.selectors,
            name=f"hopscope-{self.deploy_id}",
        )
        try:
            ray.get(self.pg.ready(), timeout=RESERVE_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError as exc:
            needs = ", ".join(
                f"node {label}: {cpu:g} CPU" for label, cpu in zip(plan.labels, cpus, strict=True)
            )
            replicas = self.spec.deploy.worker_replicas
            with_replicas = f" with {replicas} worker replicas" if replicas > 1 else ""
            raise DeployError(
                f"could not reserve {len(plan.labels)} node(s) ({plan.strategy}) for placement "
                f"{self.placement.name!r}{with_replicas} within {RESERVE_TIMEOUT_S:.0f} s "
                f"({needs}): are the nodes out of CPU? `ray status` shows what is free"
            ) from exc
        bundle_nodes = placement_group_table(self.pg)["bundles_to_node_id"]
        nodes = {n.node_id: n for n in alive_nodes()}
        return [nodes[bundle_nodes[i]] for i in range(len(plan.labels))]

    def _assign(self, nodes: list[NodeView]) -> NodePlan:
        return assign_nodes(self.placement, nodes, num_replicas=self.spec.deploy.worker_replicas)

    @property
    def front_doors(self) -> list[str]:
        """The front-door actors (`--tokenizer-replicas`): `tokenizer`, `tokenizer-1`, ..."""
        if self.placement.is_inproc:
            return []
        return tokenizer_names(self.spec.deploy.tokenizer_replicas)

    def _bundle_of(self, plan: NodePlan, role: str) -> int:
        """The bundle (node) of an actor: a worker replica's own, else its service's (every
        front-door replica on the tokenizer's node: they share its port)."""
        workers = self.placement.worker_names(self.spec.deploy.worker_replicas)
        if role in workers:
            return plan.bundle_of_replica(self.placement, workers.index(role))
        if role == "pipeline" or role in self.front_doors:
            return plan.bundle_of(self.placement, "tokenizer")
        return plan.bundle_of(self.placement, role)

    def _bundle_cpu(self, plan: NodePlan, bundle: int) -> float:
        """Room for every actor placed in the bundle: the services on its node and the worker
        replicas placed there."""
        if self.placement.is_inproc:
            return BUNDLE_CPU
        roles = [
            *self.front_doors,
            "scheduler",
            *self.placement.worker_names(self.spec.deploy.worker_replicas),
        ]
        num_actors = sum(self._bundle_of(plan, role) == bundle for role in roles)
        return max(BUNDLE_CPU, ACTOR_CPU * num_actors)

    def _actor_plans(self, plan: NodePlan, bundle_nodes: list[NodeView]) -> dict[str, ActorPlan]:
        placement, spec = self.placement, self.spec
        workers = placement.worker_names(spec.deploy.worker_replicas)
        roles = ["tokenizer", "scheduler", *workers]
        node_of = {role: bundle_nodes[self._bundle_of(plan, role)] for role in roles}
        ip_of = {role: node.ip for role, node in node_of.items()}
        host = spec.deploy.host
        front_port = spec.deploy.port or free_port(node_of["tokenizer"], host)
        front_door = f"{host}:{front_port}"
        otel_env = _actor_env()
        if placement.is_inproc:
            pipeline = ActorPlan("pipeline", spec, front_door, otel_env=otel_env)
            return _with_secrets({"pipeline": pipeline}, spec.security.tls_dir)
        socket_dir = f"/tmp/hs-{self.deploy_id}"
        listen = {"tokenizer": front_door}
        transport_of = {"scheduler": placement.listen_transport("scheduler")}
        for i, name in enumerate(workers):  # each replica its own address, on its own node
            transport_of[name] = placement.replica_transport(plan.replica_label(placement, i))
        for name in ("scheduler", *workers):
            transport = transport_of[name]
            port = free_port(node_of[name], ip_of[name]) if transport == "tcp" else 0
            listen[name] = internal_address(transport, ip_of[name], socket_dir, name, port)
        links = {edge: self._edge_link(edge) for edge in EDGES}
        # each replica's hop is a network link (shaped) when it crosses nodes over TCP
        worker_links = [
            self.link
            if node_of[name] != node_of["scheduler"] and transport_of[name] == "tcp"
            else LinkSettings()
            for name in workers
        ]
        # further replicas may share a node with `worker`: their /metrics take any free port
        replica_spec = spec.with_(metrics_port=0) if spec.deploy.is_metrics_enabled else spec
        plans = {
            name: ActorPlan(
                name, spec if name == workers[0] else replica_spec, listen[name], otel_env=otel_env
            )
            for name in workers
        }
        plans |= {
            "scheduler": ActorPlan(
                "scheduler",
                spec,
                listen["scheduler"],
                listen[workers[0]],
                worker_links[0],
                otel_env,
                extra_downstreams=[listen[name] for name in workers[1:]],
                extra_links=worker_links[1:],
            ),
        }
        # the front-door replicas: one actor each on the tokenizer's node, all on the one port
        # (gRPC and HTTP, SO_REUSEPORT; tokenizer_config), each its own Connect stream
        for name in self.front_doors:
            plans[name] = ActorPlan(
                name, spec, front_door, listen["scheduler"], links[EDGES[0]], otel_env
            )
        return _with_secrets(plans, spec.security.tls_dir)

    def _edge_link(self, edge: str) -> LinkSettings:
        """Only a TCP edge between two nodes is a network link that can be shaped."""
        client, server = edge.split("->")
        is_cross_node = self.placement.nodes[client] != self.placement.nodes[server]
        is_shaped = is_cross_node and self.placement.transports[edge] == "tcp"
        return self.link if is_shaped else LinkSettings()

    def _create(self, cls: Any, plan: ActorPlan, bundle: int) -> Any:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=bundle)
        return cls.options(
            num_cpus=ACTOR_CPU,
            scheduling_strategy=strategy,
            name=f"hopscope-{self.deploy_id}-{plan.role}",
        ).remote(plan)

    def _wait_started(self, timeout_s: float) -> None:
        import ray

        refs = {role: actor.info.remote() for role, actor in self.actors.items()}
        deadline = time.monotonic() + timeout_s
        for role, ref in refs.items():
            try:
                self.infos[role] = ray.get(ref, timeout=max(1.0, deadline - time.monotonic()))
            except ray.exceptions.GetTimeoutError as exc:
                raise DeployError(f"{role} did not start within {timeout_s:.0f} s") from exc
            except ray.exceptions.RayError as exc:
                raise DeployError(f"{role} could not start: {actor_error(exc)}") from exc

    def supervise_once(self) -> list[str]:
        """Check every actor; restart one whose service died. Returns what happened."""
        import ray

        events = []
        for role, actor in self.actors.items():
            try:
                ray.get(actor.check_health.remote(), timeout=10.0)
            except ray.exceptions.ActorDiedError as exc:
                raise DeployError(f"{role} is gone for good: {actor_error(exc)}") from exc
            except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
                events.append(f"{role} is restarting")
            except ray.exceptions.RayTaskError as exc:
                events.append(f"{role} unhealthy ({actor_error(exc)}); restarting it")
                ray.kill(actor, no_restart=False)
        return events

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Front door first (it drains its streams), then scheduler, worker; then the nodes."""
        import ray
        from ray.util.placement_group import remove_placement_group

        replicas = self.placement.worker_names(self.spec.deploy.worker_replicas)
        for role in ("pipeline", *self.front_doors, "scheduler", *replicas):
            actor = self.actors.pop(role, None)
            if actor is None:
                continue
            try:
                ray.get(actor.stop.remote(grace_s), timeout=grace_s + 15.0)
            except ray.exceptions.RayError:
                pass  # dead or never started: killing it below is all that is left
            ray.kill(actor, no_restart=True)
        if self.pg is not None:
            remove_placement_group(self.pg)
            self.pg = None


def _with_secrets(plans: dict[str, ActorPlan], tls_dir: str) -> dict[str, ActorPlan]:
    """One internal token for the deployment, and each actor's TLS files by content (read here,
    in the driver): actors never assume the driver's disk."""
    from services.common.peer_auth import new_internal_token
    from services.common.tls import read_tls_files

    token = new_internal_token()
    secured = {}
    for role, plan in plans.items():
        identity = "tokenizer" if role == "pipeline" else plan.service
        files = read_tls_files(tls_dir, (identity,)) if tls_dir else {}
        spec = with_internal_token(plan.spec.with_(tls_dir=""), token)
        secured[role] = replace(plan, spec=spec, tls_files=files)
    return secured


def actor_error(exc: BaseException) -> str:
    """The one line of a Ray error that says what went wrong inside the actor."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    ours = [ln for ln in lines if "ServiceStartError" in ln or "Error:" in ln]
    return (ours or lines or [type(exc).__name__])[-1]


def room_refusal(
    plan: NodePlan, cpus: list[float], nodes: list[tuple[NodeView, float]], free_cpu: float
) -> str | None:
    """Why the bundles (`cpus`, one per `plan.labels`) cannot fit the alive `nodes` (each with
    its CPU count), known without asking Ray to reserve: a labelled node with too few CPUs, too
    few nodes with room for a spread, or less free CPU in the cluster than the bundles need.
    None when they may fit (then only the reservation can tell)."""
    if plan.selectors is not None:  # each bundle on the node with its label
        for label, cpu in zip(plan.labels, cpus, strict=True):
            sizes = [total for node, total in nodes if node.hopscope_label == label]
            if sizes and max(sizes) < cpu:
                return (
                    f"node {label} has {max(sizes):g} CPU, its actors need {cpu:g}: start it "
                    "with CPUs (`ray start --num-cpus N`)"
                )
    else:
        roomy = [node for node, total in nodes if total >= max(cpus)]
        if len(roomy) < len(cpus):
            return (
                f"needs {len(cpus)} nodes with at least {max(cpus):g} CPU each; this cluster has "
                f"{len(roomy)} of {len(nodes)} (nodes started with `--num-cpus 0` take no actor)"
            )
    if free_cpu < sum(cpus):
        return (
            f"needs {sum(cpus):g} CPU and the cluster has {free_cpu:g} free (held by other "
            "deployments or tasks: `ray status` shows what is used)"
        )
    return None


def node_cpus() -> list[tuple[NodeView, float]]:
    """The alive nodes with their CPU counts (what Ray can place bundles on)."""
    import ray

    return [
        (
            NodeView(n["NodeID"], n["NodeManagerAddress"], dict(n.get("Labels") or {})),
            float((n.get("Resources") or {}).get("CPU", 0.0)),
        )
        for n in ray.nodes()
        if n["Alive"]
    ]


def alive_nodes() -> list[NodeView]:
    return [node for node, _ in node_cpus()]


def free_port(node: NodeView, bind_host: str) -> int:
    """A free port for a listener on `node`; found here when that node is this machine."""
    if node.ip.startswith("127.") or node.ip == _own_ip():
        with socket.socket() as sock:
            sock.bind((bind_host, 0))
            return int(sock.getsockname()[1])
    return _free_port_on_node(node.node_id, bind_host)


def _own_ip() -> str:
    import ray

    return str(ray.util.get_node_ip_address())


def _free_port_on_node(node_id: str, bind_host: str) -> int:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)  # type: ignore[misc]
    def probe() -> int:
        with socket.socket() as sock:
            sock.bind((bind_host, 0))
            return int(sock.getsockname()[1])

    strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
    return int(ray.get(probe.options(scheduling_strategy=strategy).remote(), timeout=60.0))


def _actor_env() -> dict[str, str]:
    """What every actor's process gets: tracing settings, the API key, and the OpenMP defaults
    (an actor's process does not inherit the driver's environment)."""
    passed = {k: v for k, v in os.environ.items() if k.startswith(OTEL_PREFIXES)}
    return passed | _openmp_env() | openmp_env_defaults(os.environ)


def _openmp_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}


def connect(ray_address: str) -> None:
    """Join a Ray cluster as a driver (on its head's loopback IP when it is a local cluster)."""
    prepare_ray_driver()
    import ray

    if ray.is_initialized():
        return
    host = ray_address.rsplit(":", 1)[0]
    kwargs: dict[str, Any] = {"_node_ip_address": host} if host.startswith("127.") else {}
    try:
        with _in_directory(CODE_ROOT):
            ray.init(address=ray_address, log_to_driver=False, **kwargs)
    except (ConnectionError, RuntimeError) as exc:
        raise DeployError(f"cannot join the Ray cluster at {ray_address}: {exc}") from exc


@contextlib.contextmanager
def _in_directory(path: Path) -> Iterator[None]:
    """Ray puts the driver's working directory on every worker's sys.path (its
    `py_driver_sys_path`): joining from the user's directory would let a `tracing.py` there
    replace hopscope's modules inside the actors. Join from hopscope's own code root instead."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


# ---------------------------------------------------------------------------- the command
def run_ray_serve(spec: HopscopeConfig, ray_address: str) -> int:
    """Deploy on Ray, print the front door once healthy, supervise; drain on SIGINT/SIGTERM."""
    try:
        placement = resolve_placement(spec.deploy.placement)
        num_replicas = placement.num_replicas(spec.deploy.worker_replicas)
        if not ray_address:  # refuse before starting anything: the embedded Ray has one node
            embedded_view = [NodeView("embedded", "", {NODE_LABEL_KEY: "a"})]
            where = "the embedded local Ray (no --ray-address)"
            assign_nodes(placement, embedded_view, where, num_replicas)
    except PlacementError as exc:
        err.print(f"error: {exc}")
        return 2
    stop = StopRequest()
    embedded = None
    try:
        if not ray_address:
            embedded = start_cluster(1, is_recorded=False)
            ray_address = embedded.address
            err.print(
                f"started a local one-node Ray at {ray_address} (--ray-address joins a cluster)"
            )
        record = find_record(ray_address)
        connect(ray_address)
        stop.install()  # again: ray.init installs its own SIGTERM handler, which exits
        deployment = RayDeployment(spec, placement, record.link if record else LinkSettings())
        try:
            address = deployment.start()
            announce_front_door(address, spec.deploy.placement, spec.model.model)
            if spec.deploy.http_listen:
                announce_http(f"http://{spec.deploy.http_listen}")
            announce_metrics(deployment.metrics_urls)
            supervise(deployment.supervise_once, stop, 1.0, err.print)
            err.print("draining: front door first, then scheduler and worker")
        finally:
            deployment.stop()
    except PlacementError as exc:
        err.print(f"error: {exc}")
        return 2
    except (DeployError, ClusterError) as exc:
        err.print(f"error: {exc}")
        return 1
    finally:
        _disconnect()
        if embedded is not None:
            stop_cluster(embedded)
    return 0


def _disconnect() -> None:
    import sys

    if "ray" in sys.modules:
        import ray

        ray.shutdown()
