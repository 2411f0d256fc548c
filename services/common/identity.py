"""Who and where a service is, for Describe."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass(slots=True)
class ServiceIdentity:
    name: str  # "tokenizer" | "scheduler" | "worker"
    node_id: str
    host: str
    pid: int
    address: str  # where it listens, or "inproc"


def identify(name: str, address: str, node_id: str = "") -> ServiceIdentity:
    host = socket.gethostname()
    return ServiceIdentity(name, node_id or host, host, os.getpid(), address)
