"""Worker replicas behind one scheduler: routing policies, every replica taking load, and a lost
replica's requests finishing on the others with the tokens they would get anyway."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from services.common.errors import UnavailableError
from services.common.metrics import ServiceMetrics
from services.common.types import ModelInfo
from services.config import HopscopeConfig, SchedulerSettings
from services.scheduler.core import Scheduler
from services.scheduler.replicas import ReplicaSet
from services.scheduler.request import Request
from services.scheduler.router import Decision, ReplicaView, Router
from services.scheduler.runner import SchedulerRunner
from services.scheduler.server import build_replicas
from services.scheduler.service_config import SchedulerServiceConfig
from tests.fakes import FakeWorker, FakeWorkerClient, make_prompt, reference_output
from tests.unit.test_runner import Sink


def _view(index: int, load: int = 0, hits: int = 0, rtt_ms: float = 0.0) -> ReplicaView:
    return ReplicaView(index, load, hits, rtt_ms, tokens_per_ms=10.0)


def test_network_aware_weighs_load_prefix_hits_and_the_link() -> None:
    router = Router("network_aware")
    # equal load and hits: the replica behind the slower link loses (2 ms x 32 steps = 64 ms)
    decision = router.choose([_view(0, rtt_ms=2.0), _view(1, rtt_ms=0.1)], 100, 32)
    assert decision.chosen == 1
    # 512 cached prompt tokens (51 ms of work at 10 tok/ms) outweigh 1.9 ms x 16 steps = 30 ms
    decision = router.choose([_view(0, hits=512, rtt_ms=2.0), _view(1, rtt_ms=0.1)], 544, 16)
    assert decision.chosen == 0
    attrs = decision.span_attributes()
    assert attrs["hopscope.replica"] == 0 and attrs["hopscope.routing"] == "network_aware"
    table = json.loads(str(attrs["hopscope.routing_candidates"]))
    assert [c["replica"] for c in table] == [0, 1] and table[0]["hit_tokens"] == 512


def test_the_other_policies() -> None:
    views = [_view(0, load=500, hits=64), _view(1, load=100)]
    assert Router("least_load").choose(views, 80, 8).chosen == 1
    assert Router("prefix").choose(views, 80, 8).chosen == 0
    rr = Router("round_robin")
    assert [rr.choose(views, 80, 8).chosen for _ in range(4)] == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="routing must be one of"):
        Router("random")


def _replicas(clients: list[FakeWorkerClient], policy: str, overlap: bool = False) -> ReplicaSet:
    def core(info: ModelInfo) -> Scheduler:
        config = SchedulerSettings(
            max_num_seqs=8, max_num_batched_tokens=256, async_scheduling=overlap
        )
        return Scheduler(config, info)

    settings = SchedulerSettings(
        step_timeout_s=5, worker_connect_timeout_s=5, worker_restart_timeout_s=5
    )
    metrics = ServiceMetrics("scheduler")
    runners = [SchedulerRunner(core, c, settings, metrics=metrics) for c in clients]
    return ReplicaSet(runners, Router(policy), metrics)


async def _generate(
    replicas: ReplicaSet, sink: Sink, num: int, kill: FakeWorkerClient | None
) -> None:
    await replicas.start()
    try:
        for i in range(num):
            request = Request(
                f"r{i}", make_prompt(i, 5), 12, ignore_eos=True, arrival_s=time.monotonic()
            )
            replicas.submit(request, sink, "inproc")
        if kill is not None:  # its next step fails and it stays down
            kill.fail_steps = [UnavailableError("replica killed")]
            kill.num_failed_connects = 10**6
        deadline = time.monotonic() + 10.0
        while len(sink.finished) < num and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        await replicas.stop()


def test_two_replicas_both_take_load() -> None:
    clients = [FakeWorkerClient(FakeWorker()), FakeWorkerClient(FakeWorker())]
    replicas, sink = _replicas(clients, "least_load"), Sink()
    asyncio.run(_generate(replicas, sink, 8, kill=None))
    assert all(c.worker.num_steps > 0 for c in clients)
    assert all(r.num_steps > 0 for r in replicas.replicas)
    text = replicas.metrics.exposition()
    assert 'hopscope_replica_steps{replica="1",service="scheduler"}' in text


@pytest.mark.parametrize("overlap", [False, True], ids=["sync", "async"])
def test_a_lost_replica_loses_no_request_and_tokens_are_unchanged(overlap: bool) -> None:
    clients = [FakeWorkerClient(FakeWorker()), FakeWorkerClient(FakeWorker())]
    replicas, sink = _replicas(clients, "round_robin", overlap), Sink()
    asyncio.run(_generate(replicas, sink, 8, kill=clients[1]))
    assert sorted(sink.finished) == [f"r{i}" for i in range(8)]
    assert all(d.finish_reason == "length" for d in sink.finished.values())
    for i in range(8):
        assert sink.tokens[f"r{i}"] == reference_output(make_prompt(i, 5), 12)
    assert not replicas.replicas[1].is_worker_up and replicas.replicas[0].is_worker_up


def test_one_worker_is_a_replica_set_of_one_on_the_same_routing_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 20 defect 6: with one worker the scheduler used a bare runner that skipped the
    router, so routing, the replica gauges and the lost-replica path ran only with two or more."""
    chosen: list[int] = []
    choose = Router.choose

    def spy(self: Router, views: list[ReplicaView], num_prompt: int, max_tokens: int) -> Decision:
        decision = choose(self, views, num_prompt, max_tokens)
        chosen.append(decision.chosen)
        return decision

    monkeypatch.setattr(Router, "choose", spy)
    client = FakeWorkerClient(FakeWorker())
    runner = build_replicas(
        SchedulerServiceConfig(HopscopeConfig.of(worker_restart_timeout_s=5)), [client]
    )
    assert isinstance(runner, ReplicaSet) and len(runner.replicas) == 1
    sink = Sink()
    asyncio.run(_generate(runner, sink, 4, kill=None))
    assert chosen == [0, 0, 0, 0]
    for i in range(4):
        assert sink.tokens[f"r{i}"] == reference_output(make_prompt(i, 5), 12)
    text = runner.metrics.exposition()
    assert 'hopscope_replica_steps{replica="0",service="scheduler"}' in text
