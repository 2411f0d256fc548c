"""`hopscope cluster up|status|down` and `hopscope serve` on Ray, as a user runs them: the
address is printed, serving works, SIGTERM drains and exits 0, `down` leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from deploy.client import stream_generate
from deploy.lifecycle import ServeChild, start_serve
from protos import hopscope_pb2 as pb
from tests.harness import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.timeout(400)]
REPO = Path(__file__).resolve().parents[2]


def hopscope(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "deploy.cli", *argv],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        env=env,
        check=False,
    )


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and str(os.getpid()) != proc.name:
            found.append(f"{proc.name}: {cmdline[:100]}")
    return found


def ray_tool(env: dict[str, str], address: str, *argv: str) -> str:
    """Ray's own CLI in the environment that `hopscope cluster env` prints, as a user runs it."""
    cluster_env = f"{sys.executable} -P -m deploy.cli cluster env --address {address}"
    ray = Path(sys.executable).parent / "ray"
    script = f'eval "$({cluster_env})" && {ray} {" ".join(argv)}'
    clean = {k: v for k, v in env.items() if not k.startswith("RAY_")}  # only what env sets
    result = subprocess.run(
        ["bash", "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=clean,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    """A user with their own home (cluster records, Ray token), as a fresh machine would have."""
    return {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}


@contextmanager
def serve(env: dict[str, str], log_path: Path, *argv: str) -> Iterator[ServeChild]:
    """`hopscope serve --port 0 ARGV` through the lifecycle kit: yielded once SERVING."""
    child = start_serve(list(argv), log_path=log_path, env=env, cwd=REPO)
    try:
        yield child
    finally:
        child.stop(0)


def generate(address: str) -> dict[str, object]:
    import asyncio

    request = pb.GenerateRequest(prompt="hello", max_tokens=8, temperature=0.8, seed=7)
    return asyncio.run(stream_generate(address, request, 60.0))


def test_cluster_up_serve_down(user_env: dict[str, str], tmp_path: Path) -> None:
    up = hopscope("cluster", "up", "--nodes", "2", "--delay-ms", "0.5", "--json", env=user_env)
    assert up.returncode == 0, up.stderr
    address = json.loads(up.stdout)["address"]
    node_ip = address.rsplit(":", 1)[0]
    try:
        status = hopscope("cluster", "status", "--address", address, "--json", env=user_env)
        (record,) = json.loads(status.stdout)
        assert [(n["label"], n["is_alive"]) for n in record["nodes"]] == [("a", True), ("b", True)]
        assert record["link"] == {"delay_ms": 0.5, "rate_mbit": 0.0, "mechanism": "relay"}
        log_path = tmp_path / "serve.log"
        with serve(user_env, log_path, "--placement", "split", "--ray-address", address) as served:
            assert generate(served.address)["finish_reason"] == "length"
            actors = ray_tool(user_env, address, "list", "actors", "--format", "json")
            alive = {a["name"] for a in json.loads(actors) if a["state"] == "ALIVE"}
            assert {n.rsplit("-", 1)[-1] for n in alive} >= {"tokenizer", "scheduler", "worker"}
            described = hopscope("describe", "--address", served.address, "--json", env=user_env)
            services = json.loads(described.stdout)["services"]
            # named as `cluster up` named the nodes, Ray's id beside
            assert {s["nodeName"] for s in services} == {"a", "b"}, services
            assert all(len(s["nodeId"]) == 56 for s in services), services
            assert served.stop(60) == 0  # SIGTERM: drains and exits 0
    finally:
        down = hopscope("cluster", "down", "--address", address, env=user_env)
    assert down.returncode == 0, down.stderr
    wait_for(lambda: processes_mentioning(node_ip) == [], 30.0, "Ray processes left behind")
    assert not Path(record["temp_dir"]).exists()
    assert json.loads(hopscope("cluster", "status", "--json", env=user_env).stdout) == []
    again = hopscope("cluster", "down", "--address", address, env=user_env)
    assert again.returncode == 1 and "no cluster recorded" in again.stderr


def test_serve_without_address_starts_and_stops_its_own_ray(
    user_env: dict[str, str], tmp_path: Path
) -> None:
    with serve(user_env, tmp_path / "serve.log", "--placement", "colocated") as served:
        assert generate(served.address)["finish_reason"] == "length"
        assert served.stop(60) == 0
        log = "\n".join(served.child.last_lines(500))
        started = re.search(r"local one-node Ray at (\S+):", log)
        assert started, "serve did not say where its Ray runs"
        ray_ip = started.group(1)
        wait_for(lambda: processes_mentioning(ray_ip) == [], 30.0, "orphaned Ray processes")
