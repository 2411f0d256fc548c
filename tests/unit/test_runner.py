"""The scheduler runner against a fake worker: batched delivery, lost workers, failing steps."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.common.errors import UnavailableError
from services.common.types import Delivery, ModelInfo
from services.config import SchedulerSettings
from services.scheduler.core import Scheduler
from services.scheduler.request import Request
from services.scheduler.runner import SchedulerRunner
from tests.fakes import FakeWorker, FakeWorkerClient, make_prompt, reference_output

# every runner test also runs with async scheduling (two steps in flight)
OVERLAP = pytest.mark.parametrize("overlap", [False, True], ids=["sync", "async"])


class Sink:
    def __init__(self) -> None:
        self.batches: list[list[Delivery]] = []
        self.finished: dict[str, Delivery] = {}
        self.tokens: dict[str, list[int]] = {}

    def deliver(self, deliveries: list[Delivery]) -> None:
        self.batches.append(deliveries)
        for d in deliveries:
            self.tokens.setdefault(d.request_id, []).extend(d.token_ids)
            if d.is_finished:
                self.finished[d.request_id] = d


def _runner(
    client: FakeWorkerClient,
    reconnect_timeout_s: float = 5.0,
    step_timeout_s: float = 5.0,
    overlap: bool = False,
) -> SchedulerRunner:
    def core(info: ModelInfo) -> Scheduler:
        config = SchedulerSettings(
            max_num_seqs=8, max_num_batched_tokens=256, async_scheduling=overlap
        )
        return Scheduler(config, info)

    settings = SchedulerSettings(
        step_timeout_s=step_timeout_s,
        worker_connect_timeout_s=5,
        worker_restart_timeout_s=reconnect_timeout_s,
    )
    return SchedulerRunner(core, client, settings)


def _request(i: int, max_tokens: int = 6) -> Request:
    return Request(
        f"r{i}", make_prompt(i, 5), max_tokens, ignore_eos=True, arrival_s=time.monotonic()
    )


async def _run(runner: SchedulerRunner, sink: Sink, num: int, timeout_s: float = 10.0) -> None:
    await runner.start()
    try:
        for i in range(num):
            runner.submit(_request(i), sink, "inproc")
        deadline = time.monotonic() + timeout_s
        while len(sink.finished) < num and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        await runner.stop()


@OVERLAP
def test_each_step_delivers_one_batch_per_sink_and_every_request_finishes(overlap: bool) -> None:
    sink, client = Sink(), FakeWorkerClient(FakeWorker())
    runner = _runner(client, overlap=overlap)
    asyncio.run(_run(runner, sink, 4))
    assert runner.core is not None
    assert (runner.core.num_scheduled_ahead > 0) == overlap  # steps were built ahead
    assert {rid: d.finish_reason for rid, d in sink.finished.items()} == {
        f"r{i}": "length" for i in range(4)
    }
    for i in range(4):
        assert sink.tokens[f"r{i}"] == reference_output(make_prompt(i, 5), 6)
    # four concurrent requests share steps: far fewer deliveries than tokens
    assert len(sink.batches) < sum(len(t) for t in sink.tokens.values())


@OVERLAP
def test_a_lost_worker_is_reconnected_and_requests_are_recomputed_exactly(overlap: bool) -> None:
    sink, client = Sink(), FakeWorkerClient(FakeWorker())
    client.fail_steps = [UnavailableError("worker died")]
    client.num_failed_connects = 2
    runner = _runner(client, overlap=overlap)
    asyncio.run(_run(runner, sink, 3))
    assert client.num_connects == 2  # the first connect, then the one after the loss
    for i in range(3):
        assert sink.finished[f"r{i}"].error_status == ""
        assert sink.tokens[f"r{i}"] == reference_output(make_prompt(i, 5), 6)


@OVERLAP
def test_a_step_that_never_answers_times_out_and_requests_are_recomputed(overlap: bool) -> None:
    """SchedulerSettings.step_timeout_s bounds every step, in-process ones too."""
    sink, client = Sink(), FakeWorkerClient(FakeWorker())
    client.num_hung_steps = 1
    runner = _runner(client, step_timeout_s=0.3, overlap=overlap)
    asyncio.run(asyncio.wait_for(_run(runner, sink, 3), 20))
    assert client.num_connects == 2  # the stuck worker was treated as lost and reconnected
    for i in range(3):
        assert sink.finished[f"r{i}"].error_status == ""
        assert sink.tokens[f"r{i}"] == reference_output(make_prompt(i, 5), 6)


@OVERLAP
def test_a_worker_gone_too_long_fails_requests_unavailable(overlap: bool) -> None:
    sink, client = Sink(), FakeWorkerClient(FakeWorker())
    client.fail_steps = [UnavailableError("worker died")]
    client.num_failed_connects = 10**6
    asyncio.run(_run(_runner(client, reconnect_timeout_s=0.3, overlap=overlap), sink, 2))
    assert {d.error_status for d in sink.finished.values()} == {"UNAVAILABLE"}


@OVERLAP
def test_a_failing_step_fails_its_requests_and_the_loop_goes_on(overlap: bool) -> None:
    sink, client = Sink(), FakeWorkerClient(FakeWorker())
    client.fail_steps = [RuntimeError("CUDA out of memory")]
    runner = _runner(client, overlap=overlap)

    async def scenario() -> None:
        await runner.start()
        try:
            runner.submit(_request(0), sink, "inproc")
            while "r0" not in sink.finished:
                await asyncio.sleep(0.01)
            runner.submit(_request(1), sink, "inproc")
            while "r1" not in sink.finished:
                await asyncio.sleep(0.01)
        finally:
            await runner.stop()

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert sink.finished["r0"].error_status == "INTERNAL"
    assert "out of memory" in sink.finished["r0"].error_message
    assert sink.finished["r1"].finish_reason == "length" and not sink.finished["r1"].error_status
    assert (
        runner.core is not None
        and runner.core.num_free_blocks == runner.core.block_manager.num_blocks
    )
