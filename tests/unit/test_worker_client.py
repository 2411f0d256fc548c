"""The scheduler's gRPC worker client against a real gRPC server over a FakeWorker: any failure
of the Step stream is a lost worker (reconnect, recompute), never a pipeline that fails for good."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

from deploy.spec import scheduler_config
from services.common.identity import identify
from services.common.server import GrpcServer, start_server
from services.common.types import ModelInfo
from services.config import SchedulerSettings
from services.scheduler.core import Scheduler
from services.scheduler.request import Request
from services.scheduler.runner import SchedulerRunner
from services.scheduler.servicer import describe_scheduler
from services.scheduler.worker_client import GrpcWorkerClient
from tests.fakes import FakeWorker, FakeWorkerServicer, make_prompt, reference_output
from tests.unit.test_runner import Sink


def _request(i: int, max_tokens: int = 6) -> Request:
    return Request(
        f"r{i}", make_prompt(i, 5), max_tokens, ignore_eos=True, arrival_s=time.monotonic()
    )


async def _finish(runner: SchedulerRunner, sink: Sink, ids: range, timeout_s: float = 10) -> None:
    for i in ids:
        runner.submit(_request(i), sink, "uds")
    deadline = time.monotonic() + timeout_s
    while not all(f"r{i}" in sink.finished for i in ids):
        assert time.monotonic() < deadline, f"requests did not finish: {sink.finished}"
        await asyncio.sleep(0.01)


class _Pipeline:
    def __init__(self, address: str, overlap: bool = False, num_steps: int = 1) -> None:
        self.address = address
        self.fake = FakeWorkerServicer(FakeWorker())
        self.server: GrpcServer | None = None
        self.client = GrpcWorkerClient(address, step_timeout_s=5.0)

        def core(info: ModelInfo) -> Scheduler:
            config = SchedulerSettings(
                max_num_seqs=8,
                max_num_batched_tokens=256,
                async_scheduling=overlap,
                num_scheduler_steps=num_steps,
            )
            return Scheduler(config, info)

        settings = SchedulerSettings(step_timeout_s=5, worker_connect_timeout_s=5)
        self.health: list[bool] = []
        self.runner = SchedulerRunner(core, self.client, settings, self.health.append)

    async def start_worker(self) -> None:
        self.server = await start_server(self.address, self.fake.register)

    def is_stream_gone(self, num_streams: int = 1) -> bool:
        """The stream is dead, or already replaced by the fix."""
        call = self.client._call
        return call is None or call.done() or self.fake.num_streams > num_streams

    async def stop_worker(self) -> None:
        assert self.server is not None
        await self.server.stop(0)


@contextlib.asynccontextmanager
async def _pipeline(
    tmp_path: Path, overlap: bool = False, num_steps: int = 1
) -> AsyncIterator[_Pipeline]:
    p = _Pipeline(f"unix:{tmp_path}/worker.sock", overlap, num_steps)
    await p.start_worker()
    await p.runner.start()
    try:
        yield p
    finally:
        await p.runner.stop()
        await p.stop_worker()


async def _until(predicate: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_a_step_stream_killed_while_idle_is_replaced(tmp_path: Path) -> None:
    """The idle-server defect: the stream ends (GOAWAY) between steps; later requests work."""
    asyncio.run(asyncio.wait_for(_killed_while_idle(tmp_path), 30))


async def _killed_while_idle(tmp_path: Path) -> None:
    async with _pipeline(tmp_path) as pipeline:
        await _killed_while_idle_in(pipeline)


async def _killed_while_idle_in(pipeline: _Pipeline) -> None:
    sink = Sink()
    await _finish(pipeline.runner, sink, range(2))
    pipeline.fake.kill_streams()
    await _until(pipeline.is_stream_gone)  # as it was when the next request came
    await _finish(pipeline.runner, sink, range(2, 6))
    for i in range(6):
        assert sink.finished[f"r{i}"].error_status == "", sink.finished[f"r{i}"]
        assert sink.tokens[f"r{i}"] == reference_output(make_prompt(i, 5), 6)


def test_a_worker_restarted_while_idle_is_reconnected(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(_restarted_while_idle(tmp_path), 30))


async def _restarted_while_idle(tmp_path: Path) -> None:
    async with _pipeline(tmp_path) as pipeline:
        await _restarted_while_idle_in(pipeline)


async def _restarted_while_idle_in(pipeline: _Pipeline) -> None:
    sink = Sink()
    await _finish(pipeline.runner, sink, range(1))
    await pipeline.stop_worker()
    await _until(pipeline.is_stream_gone)
    pipeline.fake.worker.restart()
    pipeline.fake.instance_id = "fake-2"
    await pipeline.start_worker()
    await _finish(pipeline.runner, sink, range(1, 4))
    for i in range(4):
        assert sink.finished[f"r{i}"].error_status == "", sink.finished[f"r{i}"]
        assert sink.tokens[f"r{i}"] == reference_output(make_prompt(i, 5), 6)


def test_a_worker_lost_with_two_steps_in_flight_is_recomputed(tmp_path: Path) -> None:
    """Async scheduling over real gRPC: the worker goes away while two steps are on the stream
    and comes back with an empty cache; every request still gets exactly its tokens."""
    asyncio.run(asyncio.wait_for(_lost_in_flight(tmp_path), 30))


async def _lost_in_flight(tmp_path: Path) -> None:
    async with _pipeline(tmp_path, overlap=True) as pipeline:
        sink, runner = Sink(), pipeline.runner
        for i in range(4):
            runner.submit(_request(i, max_tokens=40), sink, "uds")
        await _until(lambda: len(sink.tokens.get("r0", [])) >= 5)
        assert not sink.finished  # lost mid-generation
        await pipeline.stop_worker()
        pipeline.fake.worker.restart()
        pipeline.fake.instance_id = "fake-2"
        await pipeline.start_worker()
        await _until(lambda: len(sink.finished) == 4)
        assert runner.core is not None and runner.core.num_scheduled_ahead > 0
        for i in range(4):
            assert sink.finished[f"r{i}"].error_status == "", sink.finished[f"r{i}"]
            assert sink.tokens[f"r{i}"] == reference_output(make_prompt(i, 5), 40)
        assert pipeline.client.address and pipeline.fake.num_streams >= 2  # it did reconnect
        runner.core.block_manager.check()
        await _until(lambda: runner.core is not None and runner.core.num_in_flight == 0)
        assert runner.core.num_free_blocks == runner.core.block_manager.num_blocks


def test_a_worker_lost_during_a_multi_step_run_is_recomputed(tmp_path: Path) -> None:
    """Multi-step over real gRPC (runs of 4 decode steps, delta-encoded tables): the worker
    goes away and comes back empty; the new stream starts its tables afresh and every request
    still gets exactly its tokens."""
    asyncio.run(asyncio.wait_for(_lost_in_a_run(tmp_path), 30))


async def _lost_in_a_run(tmp_path: Path) -> None:
    async with _pipeline(tmp_path, num_steps=4) as pipeline:
        pipeline.fake.step_delay_s = 0.01  # a run takes a while: the loss lands mid-request
        sink, runner = Sink(), pipeline.runner
        for i in range(4):
            runner.submit(_request(i, max_tokens=40), sink, "uds")
        await _until(lambda: len(sink.tokens.get("r0", [])) >= 8)
        assert not sink.finished
        await pipeline.stop_worker()
        pipeline.fake.worker.restart()
        pipeline.fake.instance_id = "fake-2"
        await pipeline.start_worker()
        await _until(lambda: len(sink.finished) == 4)
        for i in range(4):
            assert sink.finished[f"r{i}"].error_status == "", sink.finished[f"r{i}"]
            assert sink.tokens[f"r{i}"] == reference_output(make_prompt(i, 5), 40)
        assert pipeline.fake.num_streams >= 2
        sizes = [len(d.token_ids) for batch in sink.batches for d in batch]
        assert max(sizes) == 4  # runs of 4 steps reached the sink as one delivery each
        assert runner.core is not None
        runner.core.block_manager.check()
        assert runner.core.num_free_blocks == runner.core.block_manager.num_blocks


def test_health_follows_the_worker_stream_without_traffic(tmp_path: Path) -> None:
    """The scheduler's health is NOT_SERVING as soon as its worker goes, SERVING once back."""
    asyncio.run(asyncio.wait_for(_health_follows(tmp_path), 30))


def _worker_pid(runner: SchedulerRunner) -> int:
    response = describe_scheduler(runner, identify("scheduler", "x"))
    return next(s.pid for s in response.services if s.name == "worker")


async def _health_follows(tmp_path: Path) -> None:
    async with _pipeline(tmp_path) as pipeline:
        assert pipeline.health == [True]
        assert _worker_pid(pipeline.runner) == 12345
        await pipeline.stop_worker()
        await _until(lambda: pipeline.health[-1] is False)
        assert not pipeline.runner.is_worker_up
        assert _worker_pid(pipeline.runner) == 0  # not the dead process's pid
        pipeline.fake.pid = 23456
        await pipeline.start_worker()
        await _until(lambda: pipeline.health[-1] is True)
        assert _worker_pid(pipeline.runner) == 23456
        sink = Sink()
        await _finish(pipeline.runner, sink, range(2))
        assert pipeline.health == [True, False, True]


def test_the_worker_restart_timeout_is_a_serve_flag() -> None:
    from deploy.cli import build_parser
    from deploy.commands import spec_from_args

    def scheduler_patience_s(*flags: str) -> float:
        spec = spec_from_args(build_parser().parse_args(["serve", *flags]))
        return scheduler_config(
            spec, "127.0.0.1:0", "unix:/w"
        ).settings.scheduler.worker_restart_timeout_s

    assert scheduler_patience_s() == 60.0  # a restart that rebuilds the kernels fits
    assert scheduler_patience_s("--worker-restart-timeout", "45") == 45.0
