"""Two worker replicas on a local 3-node Ray cluster (`hopscope serve --placement remote
--worker-replicas 2`): two worker actors on the worker's node, each its own address, both listed
by Describe, both take load, and 16 seeded generations give the tokens of the in-process
single-worker pipeline; on a shaped link (split, 1 ms) each replica's hop goes through its own
relay."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from deploy.cluster import ClusterRecord, LinkSettings, start_cluster, stop_cluster
from deploy.lifecycle import ServeChild, start_serve
from deploy.placement import resolve_placement
from deploy.ray_serve import RayDeployment, connect
from protos import hopscope_pb2 as pb
from services.config import HopscopeConfig
from tests.harness import seeded_generation

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
NUM_REQUESTS = 16
MAX_TOKENS = 24


def _seeded(address: str, i: int) -> list[int]:
    return seeded_generation(address, i, 30, MAX_TOKENS)


def _run_all(address: str) -> list[list[int]]:
    with ThreadPoolExecutor(NUM_REQUESTS) as pool:
        return list(pool.map(lambda i: _seeded(address, i), range(NUM_REQUESTS)))


@pytest.fixture(scope="module")
def reference() -> list[list[int]]:
    """The 16 seeded generations from the in-process single-worker pipeline, without Ray."""
    from deploy.inproc import start_inproc

    async def run() -> list[list[int]]:
        pipeline = await start_inproc(HopscopeConfig.of(port=0))
        try:
            return await asyncio.to_thread(_run_all, pipeline.address)
        finally:
            await pipeline.stop(1.0)

    return asyncio.run(run())


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(cluster: ClusterRecord) -> Iterator[ServeChild]:
    args = ["--placement", "remote", "--worker-replicas", "2", "--routing", "round_robin"]
    # a fixed metrics base (the worker's node holds both replicas: the second must not clash)
    args += ["--metrics", "--metrics-port", str(_free_port())]
    with tempfile.TemporaryDirectory(prefix="hopscope-test-") as log_dir:
        child = start_serve(
            [*args, "--ray-address", cluster.address, "--max-num-seqs", "8"],
            log_path=Path(log_dir) / "serve.log",
        )
        try:
            yield child
        finally:
            code = child.stop(60.0)
        assert code == 0, "\n".join(child.child.last_lines(100))


def test_two_ray_replicas_both_take_load_with_seeded_tokens(
    served: ServeChild, reference: list[list[int]]
) -> None:
    described = served.describe()
    services = {s["name"]: s for s in described["services"]}
    assert {"worker", "worker-1"} <= set(services), services
    worker, replica = services["worker"], services["worker-1"]
    assert worker["address"] != replica["address"] and worker["pid"] != replica["pid"]
    # replicas go where `worker` goes: its node, one network hop from the scheduler
    assert worker["node_id"] == replica["node_id"] != services["scheduler"]["node_id"]
    edges = {(e["from"], e["to"]): e["transport"] for e in described["edges"]}
    assert edges[("scheduler", "worker")] == edges[("scheduler", "worker-1")] == "tcp"

    metrics_line = next(ln for ln in served.child.last_lines(200) if "hopscope metrics:" in ln)
    assert re.search(r"\bworker http://\S+, .*\bworker-1 http://", metrics_line), metrics_line

    tokens = _run_all(served.address)
    replicas = served.describe()["scheduler_stats"]["replicas"]
    assert len(replicas) == 2, replicas
    assert all(int(r.get("num_steps", 0)) > 0 for r in replicas), replicas
    assert tokens == reference


def test_each_replica_hop_is_shaped_through_its_own_relay(
    cluster: ClusterRecord, reference: list[list[int]]
) -> None:
    spec = HopscopeConfig.of(placement="split", port=0, worker_replicas=2, routing="round_robin")
    deployment = RayDeployment(spec, resolve_placement("split"), LinkSettings(delay_ms=1.0))
    address = deployment.start()
    try:
        assert set(deployment.actors) == {"tokenizer", "scheduler", "worker", "worker-1"}
        with ThreadPoolExecutor(4) as pool:
            tokens = list(pool.map(lambda i: _seeded(address, i), range(4)))
        assert tokens == reference[:4]
        from tests.harness import Served

        described = Served(address, None).describe()  # type: ignore[arg-type]
        links = {e.to: e.link for e in described.edges if getattr(e, "from") == "scheduler"}
        assert links == {"worker": "relay", "worker-1": "relay"}
        # the scheduler dials each replica through a loopback relay, not the replica's address
        workers = {s.address for s in described.services if s.name.startswith("worker")}
        dialled = [r.address for r in described.scheduler_stats.replicas]
        assert len(set(dialled)) == 2 and not set(dialled) & workers, (dialled, workers)
        assert dialled == deployment.infos["scheduler"]["relays"]
        assert all(r.num_steps > 0 for r in described.scheduler_stats.replicas)
    finally:
        deployment.stop()


# ---------------------------------------------------------------------------- across nodes
def _deploy_file(tmp_path: Path, text: str, link: LinkSettings) -> RayDeployment:
    path = tmp_path / "replicas.yaml"
    path.write_text(text)
    spec = HopscopeConfig.of(placement=str(path), port=0, routing="round_robin")
    return RayDeployment(spec, resolve_placement(str(path)), link)


def _nodes_and_steps(address: str) -> tuple[dict[str, str], dict[str, str], list[int]]:
    """Each worker replica's Ray node label, its edge's link, and each replica's step count."""
    from deploy.ray_serve import alive_nodes
    from tests.harness import Served

    described = Served(address, None).describe()  # type: ignore[arg-type]
    label_of = {n.node_id: n.hopscope_label for n in alive_nodes()}
    where = {s.name: label_of[s.node_id] for s in described.services}
    links = {e.to: e.link for e in described.edges if getattr(e, "from") == "scheduler"}
    return where, links, [r.num_steps for r in described.scheduler_stats.replicas]


def test_replicas_per_node_from_the_file_land_on_two_nodes_and_both_take_load(
    cluster: ClusterRecord, reference: list[list[int]], tmp_path: Path
) -> None:
    """Issue 22: `worker_replicas: {b: 1, c: 1}`: `worker` on node b and `worker-1` on node c
    (distinct Ray node ids in Describe), each its own hop (relay) on a shaped cluster link,
    both run steps, and the 16 seeded generations are the single-worker pipeline's."""
    text = "services: {tokenizer: a, scheduler: a}\nworker_replicas: {b: 1, c: 1}\n"
    deployment = _deploy_file(tmp_path, text, LinkSettings(delay_ms=1.0))
    address = deployment.start()
    try:
        assert set(deployment.actors) == {"tokenizer", "scheduler", "worker", "worker-1"}
        tokens = _run_all(address)
        where, links, steps = _nodes_and_steps(address)
    finally:
        deployment.stop()
    assert {k: where[k] for k in ("scheduler", "worker", "worker-1")} == {
        "scheduler": "a",
        "worker": "b",
        "worker-1": "c",
    }
    assert links == {"worker": "relay", "worker-1": "relay"}
    assert len(steps) == 2 and all(n > 0 for n in steps), steps
    assert tokens == reference


def test_spread_puts_a_replica_on_another_node_behind_its_own_link(
    cluster: ClusterRecord, reference: list[list[int]], tmp_path: Path
) -> None:
    """`spread: true` with everything on node a: `worker` stays on a (Unix socket, no network
    link), `worker-1` goes to an empty node over TCP through its own relay: the router sees one
    shaped hop and one local one."""
    text = "services: {tokenizer: a, scheduler: a, worker: a}\nspread: true\n"
    path = tmp_path / "spread.yaml"
    path.write_text(text)
    spec = HopscopeConfig.of(placement=str(path), port=0, worker_replicas=2, routing="round_robin")
    deployment = RayDeployment(spec, resolve_placement(str(path)), LinkSettings(delay_ms=1.0))
    address = deployment.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            tokens = list(pool.map(lambda i: _seeded(address, i), range(4)))
        where, links, steps = _nodes_and_steps(address)
        relays = deployment.infos["scheduler"]["relays"]
    finally:
        deployment.stop()
    assert where["worker"] == "a" and where["worker-1"] == "b", where
    assert links == {"worker": "", "worker-1": "relay"}
    assert len(relays) == 1  # one shaped hop, one relay
    assert all(n > 0 for n in steps), steps
    assert tokens == reference[:4]


# ---------------------------------------------------------------------------- disaggregation
def test_serve_disagg_split_prefill_and_decode_on_their_own_nodes_with_mixed_tokens(
    cluster: ClusterRecord, reference: list[list[int]]
) -> None:
    """Issue 21: `hopscope serve --placement disagg-split` on the 3-node cluster: the front door
    and scheduler on node a, `worker-prefill` on b and `worker-decode` on c (their roles in
    Describe), the KV edge over TCP between them; 4 seeded generations give the mixed
    pipeline's tokens, and every request's KV crossed the hop (imported, none recomputed)."""
    from deploy.ray_serve import alive_nodes

    args = ["--placement", "disagg-split", "--ray-address", cluster.address]
    with tempfile.TemporaryDirectory(prefix="hopscope-test-") as log_dir:
        served = start_serve([*args, "--max-num-seqs", "8"], log_path=Path(log_dir) / "serve.log")
        try:
            described = _describe(served.address)
            with ThreadPoolExecutor(4) as pool:
                tokens = list(pool.map(lambda i: _seeded(served.address, i), range(4)))
            replicas = _describe(served.address).scheduler_stats.replicas
        finally:
            code = served.stop(60.0)
        assert code == 0, "\n".join(served.child.last_lines(100))
    label_of = {n.node_id: n.hopscope_label for n in alive_nodes()}
    where = {s.name: (label_of[s.node_id], s.role) for s in described.services}
    assert where == {
        "tokenizer": ("a", ""),
        "scheduler": ("a", ""),
        "worker-prefill": ("b", "prefill"),
        "worker-decode": ("c", "decode"),
    }, where
    edges = {(getattr(e, "from"), e.to): e.transport for e in described.edges}
    assert edges[("worker-prefill", "worker-decode")] == "tcp", edges
    assert edges[("scheduler", "worker-prefill")] == edges[("scheduler", "worker-decode")] == "tcp"
    assert tokens == reference[:4]
    prefill, decode = sorted(replicas, key=lambda r: r.index)
    assert prefill.num_steps > 0 and decode.num_steps > 0, replicas
    assert (decode.num_kv_imports, decode.num_kv_import_failures) == (4, 0), decode
    assert decode.kv_bytes_imported > 0


# ---------------------------------------------------------------------------- faults on Ray
@pytest.fixture
def across(cluster: ClusterRecord, tmp_path: Path) -> Iterator[str]:
    """Two replicas on nodes b and c, the scheduler and front door on a (no link shaping)."""
    text = "services: {tokenizer: a, scheduler: a}\nworker_replicas: {b: 1, c: 1}\n"
    deployment = _deploy_file(tmp_path, text, LinkSettings())
    address = deployment.start()
    try:
        yield address
    finally:
        deployment.stop()


def _describe(address: str) -> pb.DescribeResponse:
    from tests.harness import Served

    return Served(address, None).describe()  # type: ignore[arg-type]


def _service(described: pb.DescribeResponse, name: str) -> pb.ServiceInfo:
    return next(s for s in described.services if s.name == name)


def _wait_busy(address: str, replica: int | None = None) -> None:
    """Until the replica (or the scheduler as a whole) runs a request."""
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        stats = _describe(address).scheduler_stats
        running = stats.replicas[replica].num_running if replica is not None else stats.num_running
        if running > 0:
            return
        time.sleep(0.02)
    raise AssertionError("no request ever ran there")


def test_sigkilled_replica_actor_loses_none_and_gets_no_request_until_back(
    across: str, reference: list[list[int]]
) -> None:
    """Issue 22: SIGKILL of `worker-1`'s actor process (its pid from Describe) on node c during
    16 seeded generations: none lost, the tokens of the no-kill run; while it is gone Describe
    shows it restarting and the router sends it nothing (4 requests sent meanwhile run on
    `worker`); Ray brings it back on the same node and address and it takes load again."""
    before = _service(_describe(across), "worker-1")
    outage: list[tuple[str, int, int]] = []  # (state, pid, requests on it) while it was down
    with ThreadPoolExecutor(NUM_REQUESTS + 4) as pool:
        futures = [pool.submit(_seeded, across, i) for i in range(NUM_REQUESTS)]
        _wait_busy(across, 1)
        os.kill(before.pid, signal.SIGKILL)
        meanwhile: list[Future[list[int]]] = []
        deadline = time.monotonic() + 120.0
        while True:
            assert time.monotonic() < deadline, "the killed replica never came back"
            described = _describe(across)
            replica = described.scheduler_stats.replicas[1]
            service = _service(described, "worker-1")
            if replica.is_worker_up and outage:
                break
            if not replica.is_worker_up:
                outage.append(
                    (service.state, service.pid, replica.num_running + replica.num_waiting)
                )
                if not meanwhile:  # sent while it is gone: routed to `worker` only
                    meanwhile = [pool.submit(_seeded, across, i) for i in range(4)]
            time.sleep(0.05)
        tokens = [f.result() for f in futures]
        sent_meanwhile = [f.result() for f in meanwhile]
    print(f"\nworker-1 SIGKILL: down for {len(outage)} Describe polls (0.05 s apart)")
    assert tokens == reference
    assert sent_meanwhile == reference[:4]
    assert {state for state, _, _ in outage} == {"restarting"}
    assert {pid for _, pid, _ in outage} == {0}
    assert {n for _, _, n in outage} == {0}, "a request was routed to the lost replica"
    after = _service(_describe(across), "worker-1")
    assert after.pid not in (0, before.pid) and not after.state
    assert (after.address, after.node_id) == (before.address, before.node_id)
    steps_before = _describe(across).scheduler_stats.replicas[1].num_steps
    assert _run_all(across) == reference
    assert _describe(across).scheduler_stats.replicas[1].num_steps > steps_before


def test_sigkilled_scheduler_actor_loses_none_the_front_door_resubmits(
    across: str, reference: list[list[int]]
) -> None:
    """SIGKILL of the scheduler actor's process during 16 seeded generations: the front door
    resubmits each with its tokens so far to the restarted scheduler; none lost, same tokens;
    Describe shows the scheduler restarting meanwhile, then its new pid on the same address."""
    before = _service(_describe(across), "scheduler")
    states: set[str] = set()
    with ThreadPoolExecutor(NUM_REQUESTS) as pool:
        futures = [pool.submit(_seeded, across, i) for i in range(NUM_REQUESTS)]
        _wait_busy(across)
        os.kill(before.pid, signal.SIGKILL)
        deadline = time.monotonic() + 120.0
        while True:
            assert time.monotonic() < deadline, "the scheduler never came back"
            service = _service(_describe(across), "scheduler")
            if service.pid not in (0, before.pid):
                break
            states.add(service.state)
            time.sleep(0.05)
        tokens = [f.result() for f in futures]
    assert tokens == reference
    assert "restarting" in states, states
    after = _service(_describe(across), "scheduler")
    assert after.address == before.address and not after.state
