"""The one placement resolver: which node each service lands on, and the transport of each edge.

A placement maps each service to a node label and derives each edge's transport — same process →
`inproc` (direct calls), same node → `uds`, different nodes → `tcp` — unless a custom YAML file
overrides it. `assign_nodes` matches a placement against the nodes a cluster really has and
refuses, with what is missing, any placement the cluster cannot satisfy: never silently
co-located. Pure: no Ray imports (deploy/ray_serve.py feeds it the cluster's nodes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.identity import worker_names, worker_role
from services.config import WORKER_ROLES

__all__ = ["worker_names", "worker_role"]  # with the names of services (Describe's too)

SERVICES = ("tokenizer", "scheduler", "worker")
EDGES = ("tokenizer->scheduler", "scheduler->worker")  # client -> server
TRANSPORTS = ("inproc", "uds", "tcp")
NODE_LABEL_KEY = "hopscope-node"  # `ray start --labels hopscope-node=a`
_LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")


class PlacementError(ValueError):
    """A placement that is malformed, or that the cluster cannot satisfy; says what to change."""


@dataclass(frozen=True, slots=True)
class WorkerGroup:
    """`workers: [{role: prefill, node: b, replicas: 1}, ...]`: workers of one role on a node."""

    role: str  # "prefill" | "decode" (a disaggregated placement) or "mixed"
    node: str
    replicas: int = 1


@dataclass(frozen=True, slots=True)
class Placement:
    name: str  # preset name, or the YAML file as given
    nodes: dict[str, str]  # service -> node label
    transports: dict[str, str]  # edge ("tokenizer->scheduler") -> "inproc" | "uds" | "tcp"
    is_preset: bool = True
    tls_dir: str = ""  # `tls_dir:` in a YAML file (relative to the file): serve --tls-dir
    # `worker_replicas: {label: count}` in a YAML file: the replicas per node (`worker`, on
    # services.worker's node, first); empty: every replica on the worker's node
    worker_replicas: dict[str, int] = field(default_factory=dict)
    spread: bool = False  # `spread: true`: each replica on a node of its own (chosen at assign)
    # `workers:` (prefill/decode disaggregation): each worker's role and node, in order; the
    # first group's node is services.worker's. Empty: every worker is `mixed`
    workers: tuple[WorkerGroup, ...] = ()

    @property
    def is_disaggregated(self) -> bool:
        return any(g.role != "mixed" for g in self.workers)

    @property
    def is_inproc(self) -> bool:
        return all(t == "inproc" for t in self.transports.values())

    @property
    def node_labels(self) -> list[str]:
        """Distinct node labels, in service order (tokenizer's node first)."""
        return list(dict.fromkeys(self.nodes[s] for s in SERVICES))

    def num_nodes(self, num_replicas: int = 1) -> int:
        """Nodes a deployment with `num_replicas` workers spans: the services' and every worker
        replica's (`workers:` / `worker_replicas`; `spread`: one node per replica)."""
        if self.spread:
            return max(len(self.node_labels), num_replicas)
        replicas = self.replica_labels(self.num_replicas(num_replicas))
        return len(dict.fromkeys([*self.node_labels, *replicas]))

    def num_replicas(self, flag: int) -> int:
        """The number of worker replicas: the file's `worker_replicas` total, which
        `--worker-replicas` (`flag`) may repeat but not contradict; otherwise the flag."""
        if self.workers:
            total = sum(g.replicas for g in self.workers)
            per_node = ", ".join(f"{g.replicas} {g.role} on {g.node}" for g in self.workers)
        elif self.worker_replicas:
            total = sum(self.worker_replicas.values())
            per_node = ", ".join(f"{label}: {n}" for label, n in self.worker_replicas.items())
        else:
            return flag
        if flag not in (1, total):
            raise PlacementError(
                f"placement {self.name} puts {total} worker replicas ({per_node}) but "
                f"--worker-replicas is {flag}: drop the flag or change the file"
            )
        return total

    def worker_roles(self, num_replicas: int) -> list[str]:
        """The role of each worker (`worker_names` order)."""
        if self.workers:
            return [g.role for g in self.workers for _ in range(g.replicas)]
        return ["mixed"] * num_replicas

    def worker_names(self, num_replicas: int) -> list[str]:
        """Each worker's name (`worker`, `worker-1`; `worker-prefill`, `worker-decode`, ...)."""
        return worker_names(num_replicas, self.worker_roles(num_replicas))

    def replica_labels(self, num_replicas: int) -> list[str]:
        """The node label of `worker`, `worker-1`, ... (not for `spread`: `assign_nodes` picks
        those nodes from the cluster)."""
        if self.workers:
            return [g.node for g in self.workers for _ in range(g.replicas)]
        if not self.worker_replicas:
            return [self.nodes["worker"]] * num_replicas
        first = self.nodes["worker"]
        labels = [first] * self.worker_replicas[first]
        for label, count in self.worker_replicas.items():
            labels += [label] * count if label != first else []
        return labels

    def replica_transport(self, label: str) -> str:
        """How the scheduler reaches a replica on node `label`: like `worker` on the worker's
        node, TCP from another node, a Unix socket on the scheduler's own node."""
        if label == self.nodes["worker"]:
            return self.transports["scheduler->worker"]
        return "uds" if label == self.nodes["scheduler"] else "tcp"

    def listen_transport(self, service: str) -> str:
        """How `service` is reached: the front door is always TCP; others by their inbound edge."""
        if service == "tokenizer":
            return "tcp"
        inbound = next(e for e in EDGES if e.endswith(f"->{service}"))
        return self.transports[inbound]


def _preset(name: str, nodes: str, transports: tuple[str, str], workers: str = "") -> Placement:
    """`workers`: "pd" = a prefill then a decode worker, on the nodes after the dash ("pd-bc")."""
    groups: tuple[WorkerGroup, ...] = ()
    if workers:
        roles, _, labels = workers.partition("-")
        role_of = {"p": "prefill", "d": "decode"}
        groups = tuple(WorkerGroup(role_of[r], n) for r, n in zip(roles, labels, strict=True))
    return Placement(
        name,
        dict(zip(SERVICES, nodes, strict=True)),
        dict(zip(EDGES, transports)),
        workers=groups,
    )


PRESETS: dict[str, Placement] = {
    p.name: p
    for p in (
        _preset("inproc", "aaa", ("inproc", "inproc")),
        _preset("colocated", "aaa", ("uds", "uds")),
        _preset("colocated-tcp", "aaa", ("tcp", "tcp")),
        _preset("split", "aab", ("uds", "tcp")),
        _preset("remote", "abc", ("tcp", "tcp")),
        # prefill/decode disaggregation: a prefill and a decode worker, KV shipped between them
        _preset("disagg", "aaa", ("uds", "uds"), workers="pd-aa"),
        _preset("disagg-split", "aab", ("uds", "tcp"), workers="pd-bc"),
    )
}


def resolve_placement(ref: str) -> Placement:
    """A preset name or a custom placement YAML file."""
    if ref in PRESETS:
        return PRESETS[ref]
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            where = "" if path.is_absolute() else f" (looked in {Path.cwd()})"
            presets = ", ".join(PRESETS)
            raise PlacementError(
                f"placement file {ref} does not exist{where}; a preset is one of {presets}"
            )
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise PlacementError(f"placement file {ref} is not valid YAML: {exc}") from exc
        return parse_placement(data, name=ref, base_dir=path.parent)
    raise PlacementError(
        f"unknown placement {ref!r}: use one of {', '.join(PRESETS)} or a YAML file "
        "(see deploy/placements/example.yaml)"
    )


def parse_placement(data: Any, name: str, base_dir: Path | None = None) -> Placement:
    """Validate a custom placement: `services: {service: label}`, optional `transports` and
    `tls_dir` (a directory from `hopscope certs`, relative to `base_dir`)."""
    if not isinstance(data, dict):
        raise PlacementError(f"{name}: expected a mapping with 'services' (and 'transports')")
    allowed = ("services", "transports", "tls_dir", "worker_replicas", "spread", "workers")
    unknown_keys = set(data) - set(allowed)
    if unknown_keys:
        raise PlacementError(
            f"{name}: unknown keys {sorted(unknown_keys)}; allowed: {', '.join(allowed)}"
        )
    replicas = _parse_replicas(data.get("worker_replicas"), name)
    groups = _parse_workers(data.get("workers"), name)
    if groups and (replicas or data.get("spread")):
        raise PlacementError(
            f"{name}: 'workers' lists every worker (role, node, replicas): leave out "
            "'worker_replicas' and 'spread'"
        )
    if groups:
        replicas = {}
        for group in groups:  # the nodes of the workers, for the checks below
            replicas[group.node] = replicas.get(group.node, 0) + group.replicas
    services = data.get("services")
    if replicas and isinstance(services, dict) and "worker" not in services:
        services = {**services, "worker": next(iter(replicas))}  # `worker`: the first node listed
    nodes = _parse_nodes(services, name)
    spread = data.get("spread", False)
    if not isinstance(spread, bool):
        raise PlacementError(f"{name}: 'spread' must be true or false, got {spread!r}")
    if spread and replicas:
        raise PlacementError(
            f"{name}: give either 'worker_replicas' (replicas per node) or 'spread: true' (each "
            "replica on a node of its own), not both"
        )
    if groups and nodes["worker"] != groups[0].node:
        raise PlacementError(
            f"{name}: services.worker is on {nodes['worker']!r} but the first of 'workers' on "
            f"{groups[0].node!r}: leave services.worker out (it is the first worker's node)"
        )
    if replicas and nodes["worker"] not in replicas:
        raise PlacementError(
            f"{name}: services.worker is on {nodes['worker']!r}, which 'worker_replicas' does not "
            f"list ({', '.join(replicas)}): list it, or leave services.worker out"
        )
    overrides = _parse_overrides(data.get("transports") or {}, name)
    transports = {edge: derive_transport(nodes, edge, overrides.get(edge), name) for edge in EDGES}
    off_node = [label for label in replicas if label != nodes["scheduler"]]
    if overrides.get("scheduler->worker") == "uds" and (off_node or spread):
        where = f"on {off_node[0]!r}" if off_node else "spread over nodes"
        raise PlacementError(
            f"{name}: scheduler->worker cannot use uds with worker replicas {where} (a Unix socket "
            "only reaches the same node); use tcp"
        )
    tls_dir = str(data.get("tls_dir") or "")
    if tls_dir:
        tls_dir = str(((base_dir or Path.cwd()) / Path(tls_dir).expanduser()).resolve())
    return Placement(
        name,
        nodes,
        transports,
        is_preset=False,
        tls_dir=tls_dir,
        worker_replicas={} if groups else replicas,
        spread=spread,
        workers=groups,
    )


def _parse_workers(workers: Any, name: str) -> tuple[WorkerGroup, ...]:
    """`workers: [{role: prefill, node: b, replicas: 1}, {role: decode, node: c}]`."""
    if workers is None:
        return ()
    example = "e.g. [{role: prefill, node: b}, {role: decode, node: c}]"
    if not isinstance(workers, list) or not workers:
        raise PlacementError(
            f"{name}: 'workers' must be a list of {{role, node, replicas}}, {example}"
        )
    groups = []
    for entry in workers:
        if not isinstance(entry, dict):
            raise PlacementError(
                f"{name}: each of 'workers' is a mapping, {example}; got {entry!r}"
            )
        unknown = set(entry) - {"role", "node", "replicas"}
        if unknown:
            raise PlacementError(
                f"{name}: workers: unknown keys {sorted(unknown)}; allowed: role, node, replicas"
            )
        role, node, count = entry.get("role"), entry.get("node"), entry.get("replicas", 1)
        if role not in WORKER_ROLES:
            raise PlacementError(
                f"{name}: workers: role {role!r} is not one of {', '.join(WORKER_ROLES)}"
            )
        if node is None or not _LABEL_RE.match(str(node)):
            raise PlacementError(f"{name}: workers: node {node!r} is not a valid node label")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise PlacementError(
                f"{name}: workers: replicas {count!r} is not a replica count (an integer >= 1)"
            )
        groups.append(WorkerGroup(str(role), str(node), count))
    roles = {g.role for g in groups}
    if roles != {"mixed"} and roles != {"prefill", "decode"}:
        raise PlacementError(
            f"{name}: workers: give prefill and decode workers (disaggregated) or only mixed "
            f"ones, not {', '.join(sorted(roles))}"
        )
    return tuple(groups)


def _parse_replicas(replicas: Any, name: str) -> dict[str, int]:
    if replicas is None:
        return {}
    if not isinstance(replicas, dict) or not replicas:
        raise PlacementError(
            f"{name}: 'worker_replicas' must map node labels to replica counts, e.g. {{b: 1, c: 1}}"
        )
    parsed = {}
    for label, count in replicas.items():
        if not _LABEL_RE.match(str(label)):
            raise PlacementError(f"{name}: worker_replicas label {label!r} is not a valid label")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise PlacementError(
                f"{name}: worker_replicas {label}: {count!r} is not a replica count (an integer "
                ">= 1; leave a node out for none)"
            )
        parsed[str(label)] = count
    return parsed


def _parse_nodes(services: Any, name: str) -> dict[str, str]:
    if not isinstance(services, dict):
        raise PlacementError(
            f"{name}: 'services' must map each of {', '.join(SERVICES)} to a node label"
        )
    unknown = set(services) - set(SERVICES)
    if unknown:
        raise PlacementError(
            f"{name}: unknown services {sorted(unknown)}; known: {', '.join(SERVICES)}"
        )
    missing = [s for s in SERVICES if s not in services]
    if missing:
        raise PlacementError(f"{name}: no node label for {', '.join(missing)}")
    nodes = {s: str(services[s]) for s in SERVICES}
    for service, label in nodes.items():
        if not _LABEL_RE.match(label):
            raise PlacementError(
                f"{name}: {service}'s node label {label!r} is not a valid label value "
                "(letters, digits, '-', '_', '.'; at most 63 characters)"
            )
    return nodes


def _parse_overrides(transports: Any, name: str) -> dict[str, str]:
    if not isinstance(transports, dict):
        raise PlacementError(f"{name}: 'transports' must map edges ({', '.join(EDGES)}) to uds|tcp")
    unknown = set(transports) - set(EDGES)
    if unknown:
        raise PlacementError(f"{name}: unknown edges {sorted(unknown)}; known: {', '.join(EDGES)}")
    overrides = {str(k): str(v) for k, v in transports.items()}
    for edge, transport in overrides.items():
        if transport not in ("uds", "tcp"):
            hint = " (direct calls need all three in one process: --placement inproc)"
            raise PlacementError(
                f"{name}: transport {transport!r} for {edge}: use uds or tcp"
                + (hint if transport == "inproc" else "")
            )
    return overrides


def derive_transport(
    nodes: dict[str, str], edge: str, override: str | None = None, name: str = "placement"
) -> str:
    client, server = edge.split("->")
    is_same_node = nodes[client] == nodes[server]
    if override == "uds" and not is_same_node:
        raise PlacementError(
            f"{name}: {edge} cannot use uds: {client} is on node {nodes[client]!r} and {server} "
            f"on {nodes[server]!r} (a Unix socket only reaches the same node); use tcp"
        )
    return override or ("uds" if is_same_node else "tcp")


# ---------------------------------------------------------------------------- cluster fit
@dataclass(frozen=True, slots=True)
class NodeView:
    """What the resolver needs to know about one cluster node."""

    node_id: str
    ip: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def hopscope_label(self) -> str:
        return self.labels.get(NODE_LABEL_KEY, "")


@dataclass(frozen=True, slots=True)
class NodePlan:
    """One placement-group bundle per distinct node of the placement."""

    labels: list[str]  # the placement's node labels, one per bundle
    selectors: list[dict[str, str]] | None  # per-bundle label selectors; None: spread by count
    # the node label of each worker replica (`worker`, `worker-1`, ...); empty: all on `worker`'s
    replica_labels: list[str] = field(default_factory=list)

    @property
    def strategy(self) -> str:
        return "STRICT_PACK" if len(self.labels) == 1 else "STRICT_SPREAD"

    def bundle_of(self, placement: Placement, service: str) -> int:
        return self.labels.index(placement.nodes[service])

    def replica_label(self, placement: Placement, index: int) -> str:
        return self.replica_labels[index] if self.replica_labels else placement.nodes["worker"]

    def bundle_of_replica(self, placement: Placement, index: int) -> int:
        return self.labels.index(self.replica_label(placement, index))


def assign_nodes(
    placement: Placement,
    nodes: list[NodeView],
    cluster: str = "this Ray cluster",
    num_replicas: int = 1,
) -> NodePlan:
    """Match a placement to the alive nodes: by `hopscope-node` label when the cluster has every
    label the placement names; a preset also fits any cluster with enough nodes (placement
    group STRICT_SPREAD). Otherwise refuse, naming what is missing. `num_replicas` worker
    replicas go where the file's `worker_replicas` or `spread` says (else on `worker`'s node)."""
    have = {n.hopscope_label for n in nodes if n.hopscope_label}
    replicas = placement.replica_labels(num_replicas)
    if placement.spread:
        replicas = _spread_labels(placement, num_replicas, sorted(have), cluster)
    wanted = list(dict.fromkeys([*placement.node_labels, *replicas]))
    missing = [label for label in wanted if label not in have]
    is_placed = bool(placement.worker_replicas or placement.workers) or placement.spread
    placed = replicas if is_placed else []
    if not missing:
        selectors = [{NODE_LABEL_KEY: label} for label in wanted]
        return NodePlan(wanted, selectors, placed)
    if placement.is_preset and len(nodes) >= len(wanted):
        return NodePlan(wanted, None, placed)
    layout = ", ".join(f"{s} on {placement.nodes[s]}" for s in SERVICES)
    labels = ", ".join(sorted(have)) or "none"
    if placement.is_preset:
        raise PlacementError(
            f"placement {placement.name!r} needs {len(wanted)} nodes ({layout}); {cluster} has "
            f"{len(nodes)} (node labels: {labels}). Start one with `hopscope cluster up --nodes "
            f"{len(wanted)}` and pass its address with --ray-address."
        )
    raise PlacementError(
        f"placement {placement.name} needs nodes labelled {NODE_LABEL_KEY}="
        f"{', '.join(missing)} ({layout}); {cluster} has {len(nodes)} nodes with labels: "
        f"{labels}. Label a node with `ray start --labels {NODE_LABEL_KEY}={missing[0]}` or "
        "change the file."
    )


def _spread_labels(
    placement: Placement, num_replicas: int, have: list[str], cluster: str
) -> list[str]:
    """`spread: true`: `worker` on its node, each further replica on a node of its own: nodes
    the placement leaves empty first, then the tokenizer's and scheduler's."""
    first = placement.nodes["worker"]
    free = [label for label in have if label not in placement.node_labels]
    others = [label for label in placement.node_labels if label != first]
    choices = [first, *free, *others]
    if len(choices) < num_replicas:
        raise PlacementError(
            f"placement {placement.name} spreads {num_replicas} worker replicas, one per node; "
            f"{cluster} has {len(choices)} labelled nodes ({', '.join(have) or 'none'}). Start "
            "more nodes or lower --worker-replicas."
        )
    return choices[:num_replicas]


def internal_address(
    transport: str, host: str, socket_dir: Path | str, service: str, port: int = 0
) -> str:
    """Where `service` listens for an edge of `transport` (shared by Ray and --no-ray)."""
    if transport == "inproc":
        return "inproc"
    if transport == "uds":
        return f"unix:{Path(socket_dir) / f'{service}.sock'}"
    return f"{host}:{port}"
