"""Who and where a service is, for Describe."""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class ServiceIdentity:
    name: str  # "tokenizer" | "scheduler" | "worker"
    node_id: str
    host: str
    pid: int
    address: str  # where it listens, or "inproc"
    role: str = ""  # workers: "mixed" | "prefill" | "decode"
    node_name: str = ""  # the node's hopscope-node label (`cluster up`'s a, b, c...), if any


# Set by the Ray actor that hosts a service (deploy/ray_actors.py) to its node's hopscope-node
# label: the name `cluster up` gave the node, which Describe shows beside Ray's node id.
NODE_NAME_ENV = "HOPSCOPE_NODE_NAME"


def identify(name: str, address: str, node_id: str = "", role: str = "") -> ServiceIdentity:
    host = socket.gethostname()
    node_name = os.environ.get(NODE_NAME_ENV, "")
    return ServiceIdentity(name, node_id or host, host, os.getpid(), address, role, node_name)


def worker_names(num_replicas: int, roles: Sequence[str] | None = None) -> list[str]:
    """`worker`, then `worker-1`, `worker-2`, ... for further replicas (each its own address,
    socket, log; on Ray its own actor). With roles: `worker-prefill`, `worker-decode`, further
    ones of a role suffixed `-1`, `-2` (`worker-decode-1`); `mixed` ones as without."""
    names, seen = [], Counter[str]()
    for role in roles if roles is not None else ["mixed"] * num_replicas:
        base = "worker" if role == "mixed" else f"worker-{role}"
        names.append(base if seen[role] == 0 else f"{base}-{seen[role]}")
        seen[role] += 1
    return names


def worker_role(name: str) -> str:
    """The role a worker's name says: `worker-prefill-1` -> prefill; `worker-2` -> mixed."""
    parts = name.split("-")
    return parts[1] if len(parts) > 1 and parts[1] in ("prefill", "decode") else "mixed"
