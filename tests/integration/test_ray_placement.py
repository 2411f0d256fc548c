"""hopscope on a local 3-node Ray cluster (127.x loopback addresses, token auth): every preset
lands each service on the expected node with the expected transports, a seeded request gives the
same tokens under every placement, link shaping shows in Describe, and impossible placements are
refused. One cluster for the whole module."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from deploy.client import stream_generate
from deploy.cluster import ClusterRecord, LinkSettings, start_cluster, stop_cluster
from deploy.placement import PlacementError, resolve_placement
from deploy.ray_serve import RayDeployment, alive_nodes, connect
from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc
from services.config import HopscopeConfig

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]
SEEDED = pb.GenerateRequest(
    prompt="Placement must not change a word", max_tokens=24, temperature=0.8, seed=7
)
SERVICES = ("tokenizer", "scheduler", "worker")


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterRecord]:
    record = start_cluster(3, is_recorded=False)
    try:
        connect(record.address)
        yield record
    finally:
        import ray

        ray.shutdown()
        stop_cluster(record)


@pytest.fixture(scope="module")
def reference_tokens() -> list[int]:
    """The seeded request's tokens from the plain in-process pipeline, without Ray."""
    from deploy.inproc import start_inproc

    async def run() -> list[int]:
        pipeline = await start_inproc(HopscopeConfig.of(port=0))
        try:
            return (await stream_generate(pipeline.address, SEEDED, 120.0))["token_ids"]
        finally:
            await pipeline.stop(1.0)

    return asyncio.run(run())


@contextmanager
def deployed(
    ref: str, link: LinkSettings | None = None
) -> Iterator[tuple[str, pb.DescribeResponse]]:
    spec = HopscopeConfig.of(placement=ref, port=0, worker_restart_timeout_s=60.0)
    deployment = RayDeployment(spec, resolve_placement(ref), link or LinkSettings())
    address = deployment.start()
    try:
        yield address, describe(address)
    finally:
        deployment.stop()


def describe(address: str) -> pb.DescribeResponse:
    async def run() -> pb.DescribeResponse:
        async with grpc.aio.insecure_channel(address) as channel:
            return await pb_grpc.TokenizerStub(channel).Describe(pb.DescribeRequest(), timeout=30)

    return asyncio.run(run())


def generate(address: str, request: pb.GenerateRequest) -> dict[str, Any]:
    return asyncio.run(stream_generate(address, request, 120.0))


def where(response: pb.DescribeResponse) -> dict[str, str]:
    """service -> the hopscope-node label of the Ray node Describe says it runs on."""
    label_of = {n.node_id: n.hopscope_label for n in alive_nodes()}
    return {s.name: label_of[s.node_id] for s in response.services}


def edges(response: pb.DescribeResponse) -> dict[str, str]:
    return {f"{getattr(e, 'from')}->{e.to}": e.transport for e in response.edges}


@pytest.mark.parametrize(
    ("placement", "nodes", "transports"),
    [
        ("inproc", "aaa", ("inproc", "inproc")),
        ("colocated", "aaa", ("uds", "uds")),
        ("colocated-tcp", "aaa", ("tcp", "tcp")),
        ("split", "aab", ("uds", "tcp")),
        ("remote", "abc", ("tcp", "tcp")),
        ("deploy/placements/example.yaml", "abb", ("tcp", "tcp")),
    ],
)
def test_placement_lands_services_and_keeps_seeded_tokens(
    cluster: ClusterRecord,
    reference_tokens: list[int],
    placement: str,
    nodes: str,
    transports: tuple[str, str],
) -> None:
    ref = str(REPO / placement) if placement.endswith(".yaml") else placement
    with deployed(ref) as (address, info):
        assert info.ray and info.placement == ref
        assert where(info) == dict(zip(SERVICES, nodes, strict=True))
        assert edges(info) == {
            "tokenizer->scheduler": transports[0],
            "scheduler->worker": transports[1],
        }
        pids = {s.name: s.pid for s in info.services}
        assert (len(set(pids.values())) == 1) == (placement == "inproc")  # one process, or three
        prefix = {"uds": "unix:", "tcp": "127.", "inproc": "inproc"}
        for service in info.services[1:]:  # each listens where its inbound edge says
            assert service.address.startswith(prefix[edges(info)[_inbound(service.name)]])
        assert generate(address, SEEDED)["token_ids"] == reference_tokens


def _inbound(service: str) -> str:
    return "tokenizer->scheduler" if service == "scheduler" else "scheduler->worker"


def test_shaped_links_go_through_a_relay_on_cross_node_edges(
    cluster: ClusterRecord, reference_tokens: list[int]
) -> None:
    with deployed("split", LinkSettings(delay_ms=1.0)) as (address, info):
        assert {f"{getattr(e, 'from')}->{e.to}": e.link for e in info.edges} == {
            "tokenizer->scheduler": "",  # same node, Unix socket: not a network link
            "scheduler->worker": "relay",
        }
        assert generate(address, SEEDED)["token_ids"] == reference_tokens


def test_label_nobody_has_is_refused(cluster: ClusterRecord, tmp_path: Path) -> None:
    path = tmp_path / "gpu.yaml"
    path.write_text("services: {tokenizer: a, scheduler: a, worker: gpu}\n")
    deployment = RayDeployment(
        HopscopeConfig.of(placement=str(path), port=0), resolve_placement(str(path))
    )
    with pytest.raises(PlacementError, match="hopscope-node=gpu.*labels: a, b, c"):
        deployment.start()
    assert not deployment.actors


def test_a_full_cluster_is_refused_at_once_not_after_the_reservation_timeout(
    cluster: ClusterRecord,
) -> None:
    """Every CPU held by another placement group: refused naming the free CPU, well inside the
    30 s Ray would wait to reserve (issue 22)."""
    import time

    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from deploy.ray_serve import RESERVE_TIMEOUT_S, DeployError

    holder = placement_group([{"CPU": 1.0}] * 3, strategy="STRICT_SPREAD")
    ray.get(holder.ready(), timeout=60)
    try:
        deployment = RayDeployment(
            HopscopeConfig.of(placement="split", port=0), resolve_placement("split")
        )
        began = time.monotonic()
        with pytest.raises(DeployError, match=r"needs [0-9.]+ CPU and the cluster has 0 free"):
            deployment.start()
        assert time.monotonic() - began < RESERVE_TIMEOUT_S / 3
        assert not deployment.actors and deployment.pg is None
    finally:
        remove_placement_group(holder)


def test_remote_on_the_one_node_embedded_ray_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-P", "-m", "deploy.cli", "serve", "--placement", "remote", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 2
    assert "needs 3 nodes" in result.stderr and "hopscope cluster up --nodes 3" in result.stderr
    assert "front door" not in result.stdout


# ---------------------------------------------------------------------------- faults
PROMPTS = ("Once upon a time", "The scheduler keeps", "Unix sockets and TCP")


def six_requests() -> list[pb.GenerateRequest]:
    greedy = [pb.GenerateRequest(prompt=p, max_tokens=96, ignore_eos=True) for p in PROMPTS]
    seeded = [
        pb.GenerateRequest(prompt=p, max_tokens=96, ignore_eos=True, temperature=0.8, seed=7 + i)
        for i, p in enumerate(PROMPTS)
    ]
    return greedy + seeded


async def run_concurrently(
    address: str, requests: list[pb.GenerateRequest], disturb: Any = None
) -> list[dict[str, Any]]:
    """All requests at once; `disturb()` runs once every stream has delivered text."""
    is_started = [asyncio.Event() for _ in requests]
    tasks = [
        asyncio.create_task(stream_generate(address, r, 180.0, _setter(e)))
        for r, e in zip(requests, is_started, strict=True)
    ]
    if disturb is not None:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in is_started)), 60.0)
        assert not any(t.done() for t in tasks), "a request finished before the fault"
        await disturb()
    return list(await asyncio.gather(*tasks))


def _setter(event: asyncio.Event) -> Callable[[str], None]:
    return lambda text: event.set()


async def serving_status(address: str) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return (await stub.Check(health_pb2.HealthCheckRequest(), timeout=2.0)).status


def test_sigkilled_worker_loses_no_request(cluster: ClusterRecord) -> None:
    import os
    import signal
    import time

    from grpc_health.v1 import health_pb2

    requests = six_requests()
    with deployed("split") as (address, info):
        undisturbed = asyncio.run(run_concurrently(address, requests))
        services = {s.name: s for s in info.services}
        seen: dict[str, float] = {}

        async def kill_worker() -> None:
            killed_at = time.monotonic()
            os.kill(services["worker"].pid, signal.SIGKILL)
            while time.monotonic() - killed_at < 60.0:  # the scheduler's health follows its worker
                status = await serving_status(services["scheduler"].address)
                if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    seen.setdefault("not_serving_s", time.monotonic() - killed_at)
                elif "not_serving_s" in seen:
                    seen["serving_again_s"] = time.monotonic() - killed_at
                    return
                await asyncio.sleep(0.05)

        disturbed = asyncio.run(run_concurrently(address, requests, kill_worker))
        after = {s.name: s for s in describe(address).services}
    print(
        f"\nworker SIGKILL: NOT_SERVING after {seen.get('not_serving_s', -1):.2f} s, "
        f"serving again after {seen.get('serving_again_s', -1):.2f} s"
    )
    assert "serving_again_s" in seen, "the scheduler never reported its worker down and back"
    assert after["worker"].pid != services["worker"].pid  # restarted by Ray ...
    assert after["worker"].address == services["worker"].address  # ... on the same address
    assert after["worker"].node_id == services["worker"].node_id
    assert [r["finish_reason"] for r in disturbed] == ["length"] * 6
    assert [r["token_ids"] for r in disturbed[:3]] == [r["token_ids"] for r in undisturbed[:3]]
    assert [r["token_ids"] for r in disturbed[3:]] == [r["token_ids"] for r in undisturbed[3:]]


def serves_again_after(address: str, timeout_s: float = 60.0) -> tuple[float, set[str]]:
    """Seconds until the front door serves a generation again, and the errors seen meanwhile."""
    import time

    from deploy.client import GenerateError

    started, errors = time.monotonic(), set()
    while time.monotonic() - started < timeout_s:
        try:
            generate(address, SEEDED)
            return time.monotonic() - started, errors
        except GenerateError as exc:
            errors.add(exc.code.name if exc.code else str(exc))
            time.sleep(0.2)
    pytest.fail(f"the front door did not serve again within {timeout_s:.0f} s (errors: {errors})")


@pytest.mark.parametrize("victim", ["scheduler", "tokenizer"])
def test_killed_scheduler_or_tokenizer_comes_back_without_redeploy(
    cluster: ClusterRecord, reference_tokens: list[int], victim: str
) -> None:
    import os
    import signal

    with deployed("colocated") as (address, info):
        before = {s.name: s for s in info.services}
        os.kill(before[victim].pid, signal.SIGKILL)
        recovery_s, errors = serves_again_after(address)
        after = {s.name: s for s in describe(address).services}
        assert generate(address, SEEDED)["token_ids"] == reference_tokens
    print(f"\n{victim} SIGKILL: serving again after {recovery_s:.2f} s; errors meanwhile: {errors}")
    assert errors <= {"UNAVAILABLE"}, errors  # never INTERNAL / UNKNOWN
    assert after[victim].pid != before[victim].pid
    assert after[victim].address == before[victim].address


def test_front_door_port_taken_is_a_clear_error_without_leftovers(cluster: ClusterRecord) -> None:
    import socket

    import ray

    from deploy.ray_serve import DeployError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        deployment = RayDeployment(
            HopscopeConfig.of(placement="colocated", port=port), resolve_placement("colocated")
        )
        with pytest.raises(DeployError, match=f"tokenizer could not start.*127.0.0.1:{port}"):
            deployment.start(timeout_s=120.0)
    assert not deployment.actors and deployment.pg is None
    for role in SERVICES:  # no actor left behind
        with pytest.raises(ValueError):
            ray.get_actor(f"hopscope-{deployment.deploy_id}-{role}")
