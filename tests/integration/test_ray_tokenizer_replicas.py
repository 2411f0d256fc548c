"""Front-door replicas on Ray (`hopscope serve --placement colocated --tokenizer-replicas 2` on a
local one-node Ray cluster): two tokenizer actors on one gRPC port and one HTTP port
(SO_REUSEPORT), each its own Connect stream (Describe lists both), both taking connections, with
the seeded tokens of one front door; a SIGKILL of one replica's actor process leaves the port
served (every fresh connection answered by the other) and Ray restarts it on the same port."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from deploy.cluster import ClusterRecord, start_cluster, stop_cluster
from deploy.lifecycle import ServeChild, start_serve
from deploy.spec import HTTP_RE
from services.config import HopscopeConfig
from tests.harness import seeded_generation
from tests.integration.test_tokenizer_replicas import (
    _generate_counts,
    _one_token_grpc,
    _seeded_http,
)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
NUM_SEEDED = 4
MAX_TOKENS = 16
NUM_CONNECTIONS = 16  # fresh connections: all on one replica has odds of 2^-15
METRICS_RE = re.compile(r"hopscope metrics: (?P<urls>.+)$")


def _seeded_all(address: str, http_url: str) -> tuple[list[list[int]], list[str]]:
    grpc_tokens = [seeded_generation(address, i, 24, MAX_TOKENS) for i in range(NUM_SEEDED)]
    return grpc_tokens, [_seeded_http(http_url, i) for i in range(NUM_SEEDED)]


@pytest.fixture(scope="module")
def reference() -> tuple[list[list[int]], list[str]]:
    """The seeded generations (gRPC and HTTP) of the in-process pipeline: one front door."""
    from deploy.inproc import start_inproc

    async def run() -> tuple[list[list[int]], list[str]]:
        pipeline = await start_inproc(HopscopeConfig.of(port=0, http_port=0))
        try:
            http_url = pipeline.front_door.http.url
            return await asyncio.to_thread(_seeded_all, pipeline.address, http_url)
        finally:
            await pipeline.stop(1.0)

    return asyncio.run(run())


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterRecord]:
    record = start_cluster(1, is_recorded=False)
    try:
        yield record
    finally:
        stop_cluster(record)


@pytest.fixture
def served(cluster: ClusterRecord) -> Iterator[ServeChild]:
    args = ["--placement", "colocated", "--ray-address", cluster.address]
    args += ["--tokenizer-replicas", "2", "--http-port", "0", "--metrics-port", "0"]
    with tempfile.TemporaryDirectory(prefix="hopscope-test-") as log_dir:
        child = start_serve(args, log_path=Path(log_dir) / "serve.log")
        try:
            yield child
        finally:
            code = child.stop(60.0)
        assert code == 0, "\n".join(child.child.last_lines(100))


def _line(served: ServeChild, pattern: re.Pattern[str]) -> re.Match[str]:
    for line in served.child.last_lines(200):
        if match := pattern.search(line):
            return match
    raise AssertionError(f"no line matching {pattern.pattern!r}")


def _front_doors(served: ServeChild, expected: int) -> list[dict]:  # type: ignore[type-arg]
    """The tokenizers Describe lists, once `expected` have their Connect stream open."""
    deadline = time.monotonic() + 60.0
    while True:
        front = [s for s in served.describe()["services"] if s["name"].startswith("tokenizer")]
        if len(front) == expected:
            return front
        assert time.monotonic() < deadline, f"Describe lists {front}, not {expected} tokenizers"
        time.sleep(0.1)


def _wait_gone(pid: int) -> None:
    """Until every thread of the killed process has exited: a SIGKILLed leader shows `Z` while
    its other threads still tear down and hold the listening socket, and a connection the kernel
    hands that socket meanwhile is reset (SO_REUSEPORT moves none to the sibling)."""
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
            states = [
                Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                for tid in tasks
            ]
        except (FileNotFoundError, ProcessLookupError):
            return
        if all(state in ("Z", "X") for state in states):
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} did not exit after SIGKILL")


def _fresh_connections(grpc_address: str, http_url: str, *, retry_reset: bool = False) -> None:
    """`retry_reset`: a connection the kernel queued on the killed replica's listening socket
    just before it closed is reset (SO_REUSEPORT migrates none without net.ipv4.tcp_migrate_req);
    a client retries UNAVAILABLE, so the test does too, once, and every connection still answers."""
    for _ in range(NUM_CONNECTIONS):
        try:
            _one_token_grpc(grpc_address)
        except grpc.RpcError as exc:
            if not retry_reset or exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            time.sleep(0.2)
            _one_token_grpc(grpc_address)
        with httpx.Client() as client:  # a fresh connection each
            body = {"model": "tiny", "prompt": "x", "max_tokens": 1}
            client.post(f"{http_url}/v1/completions", json=body, timeout=30).raise_for_status()


def test_two_ray_front_door_replicas_share_the_ports_and_survive_a_sigkill(
    served: ServeChild, reference: tuple[list[list[int]], list[str]]
) -> None:
    front = _front_doors(served, 2)
    assert [s["name"] for s in front] == ["tokenizer", "tokenizer-1"]
    assert front[0]["pid"] != front[1]["pid"] and all(int(s["pid"]) > 0 for s in front)
    assert {s["address"] for s in front} == {served.address}  # one shared port
    assert front[0]["node_id"] == front[1]["node_id"]  # both on the tokenizer's node
    edges = {(e["from"], e["to"]) for e in served.describe()["edges"]}
    assert {("tokenizer", "scheduler"), ("tokenizer-1", "scheduler")} <= edges

    http_url = _line(served, HTTP_RE).group("url")
    assert _seeded_all(served.address, http_url) == reference

    # both replicas take fresh connections (each its own /metrics)
    urls = dict(item.split(" ", 1) for item in _line(served, METRICS_RE).group("urls").split(", "))
    urls = {name: url for name, url in urls.items() if name.startswith("tokenizer")}
    assert sorted(urls) == ["tokenizer", "tokenizer-1"] and len(set(urls.values())) == 2
    before = _generate_counts(urls)
    _fresh_connections(served.address, http_url)
    share = {name: count - before[name] for name, count in _generate_counts(urls).items()}
    assert sum(share.values()) == 2 * NUM_CONNECTIONS and all(n > 0 for n in share.values()), share

    # SIGKILL one replica's actor process: the other serves every fresh connection meanwhile
    victim = int(front[1]["pid"])
    os.kill(victim, signal.SIGKILL)
    _wait_gone(victim)
    _fresh_connections(served.address, http_url, retry_reset=True)
    assert [seeded_generation(served.address, 0, 24, MAX_TOKENS)] == reference[0][:1]

    # Ray restarts it on the same port (SO_REUSEPORT beside its sibling): listed again, new pid
    deadline = time.monotonic() + 120.0
    while True:
        front = [s for s in served.describe()["services"] if s["name"].startswith("tokenizer")]
        pids = {s["name"]: int(s["pid"]) for s in front}
        if pids.get("tokenizer-1", victim) not in (0, victim):
            break
        assert time.monotonic() < deadline, (
            f"the killed front-door replica never came back: {front}"
        )
        time.sleep(0.2)
    assert {s["address"] for s in front} == {served.address}
    _fresh_connections(served.address, http_url)
