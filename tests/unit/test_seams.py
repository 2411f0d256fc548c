"""One way to do each thing (issue 20, defects 4 and 5), checked on the source with `ast`: child
processes start through the one lifecycle kit (deploy/lifecycle.py); gRPC channels come from the
one channel factory (services/common/channels.py, aio and sync faces)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["services", "deploy", "loadgen", "tracing", "diagnose", "benchmarks", "experiment"]

# Modules that may start a process with subprocess.Popen themselves, and why.
POPEN_ALLOWED = {
    "deploy/lifecycle.py": "the lifecycle kit itself",
    "deploy/cluster.py": "`hopscope cluster up`: a detached `ray start` node that outlives its "
    "parent (own session, no death signal), stopped by `cluster down`",
    "diagnose/profile.py": "py-spy attached to a running service (not yet through the kit)",
}


def _sources() -> Iterator[tuple[str, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            relative = path.relative_to(ROOT).as_posix()
            yield relative, ast.parse(path.read_text(encoding="utf-8"), filename=relative)


def _calls(tree: ast.Module, names: set[str]) -> list[tuple[int, str]]:
    """Calls of a dotted name in `names` (`subprocess.Popen(...)`; a bare `Popen(...)` counts as
    `subprocess.Popen` when imported from subprocess)."""
    imported: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        parts: list[str] = []
        func: ast.expr = node.func
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if not isinstance(func, ast.Name):
            continue
        parts.append(imported.get(func.id, func.id))
        dotted = ".".join(reversed(parts))
        if dotted in names:
            found.append((node.lineno, dotted))
    return found


def test_the_call_finder_sees_aliases() -> None:
    tree = ast.parse(
        "import subprocess\nfrom subprocess import Popen\nPopen([])\nsubprocess.Popen([])"
    )
    assert _calls(tree, {"subprocess.Popen"}) == [(3, "subprocess.Popen"), (4, "subprocess.Popen")]


def test_child_processes_start_through_the_lifecycle_kit() -> None:
    offenders = [
        f"{path}:{line}"
        for path, tree in _sources()
        if path not in POPEN_ALLOWED
        for line, _ in _calls(tree, {"subprocess.Popen"})
    ]
    assert not offenders, (
        "start children with deploy.lifecycle.launch (own process group, death signal, output "
        f"in a log file, a bounded wait for readiness), not subprocess.Popen: {offenders}"
    )


CHANNEL_CALLS = {
    "grpc.insecure_channel",
    "grpc.secure_channel",
    "grpc.aio.insecure_channel",
    "grpc.aio.secure_channel",
}


def test_the_call_finder_sees_grpc_aio_imported_either_way() -> None:
    tree = ast.parse(
        "import grpc\nfrom grpc import aio\naio.secure_channel(a)\ngrpc.insecure_channel(a)"
    )
    assert _calls(tree, CHANNEL_CALLS) == [
        (3, "grpc.aio.secure_channel"),
        (4, "grpc.insecure_channel"),
    ]


def test_channels_come_from_the_one_factory() -> None:
    offenders = [
        f"{path}:{line} {name}"
        for path, tree in _sources()
        if path != "services/common/channels.py"
        for line, name in _calls(tree, CHANNEL_CALLS)
    ]
    assert not offenders, (
        "open gRPC channels with services.common.channels.create_channel (aio) or "
        f"create_sync_channel (its options, keepalive and TLS), not grpc's own: {offenders}"
    )
