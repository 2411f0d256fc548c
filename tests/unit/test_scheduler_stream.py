"""The front door's stream to the scheduler, with real gRPC on both sides: a real scheduler
servicer and runner over a FakeWorker (no model), and the real front door. A request survives
anything that happens to the stream — a killed scheduler, a non-gRPC failure — and a request
id in use is refused without harm to the request using it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from deploy.spec import tokenizer_config
from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc
from services.common.identity import identify
from services.common.server import GrpcServer, start_server
from services.common.types import ModelInfo
from services.config import HopscopeConfig, SchedulerSettings
from services.scheduler.core import Scheduler
from services.scheduler.runner import SchedulerRunner
from services.scheduler.servicer import SchedulerServicer
from services.tokenizer.scheduler_client import GrpcSchedulerClient
from services.tokenizer.server import TokenizerServer, start_tokenizer
from services.tokenizer.service_config import TokenizerServiceConfig
from tests.fakes import FakeWorker, FakeWorkerClient, make_prompt, reference_output

STEP_DELAY_S = 0.01  # a fake step's time: requests stay in flight long enough to be hit


class _Scheduler:
    """A real scheduler service (servicer + runner) over a FakeWorker, on `address`."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.runner: SchedulerRunner | None = None
        self.server: GrpcServer | None = None

    async def start(self) -> None:
        def core(info: ModelInfo) -> Scheduler:
            return Scheduler(SchedulerSettings(max_num_seqs=16, max_num_batched_tokens=512), info)

        client = FakeWorkerClient(FakeWorker(num_blocks=256))
        client.step_delay_s = STEP_DELAY_S
        self.runner = SchedulerRunner(core, client, SchedulerSettings())
        await self.runner.start()
        servicer = SchedulerServicer(self.runner, identify("scheduler", self.address), "uds")

        def register(server: object) -> list[str]:
            pb_grpc.add_SchedulerServicer_to_server(servicer, server)  # type: ignore[arg-type]
            return ["hopscope.v1.Scheduler"]

        self.server = await start_server(self.address, register)

    async def kill(self) -> None:
        """Gone at once, nothing said to the front door (as SIGKILL)."""
        assert self.server is not None and self.runner is not None
        await self.server.server.stop(0)
        await self.runner.stop()


@contextlib.asynccontextmanager
async def _pipeline(
    tmp_path: Path, stream_interval: int = 1
) -> AsyncIterator[tuple[_Scheduler, TokenizerServer, pb_grpc.TokenizerStub]]:
    scheduler = _Scheduler(f"unix:{tmp_path}/scheduler.sock")
    await scheduler.start()
    config = TokenizerServiceConfig(
        HopscopeConfig.of(stream_interval=stream_interval, model="tiny"),
        scheduler_address=scheduler.address,
        listen="127.0.0.1:0",
    )
    front = await start_tokenizer(config)
    try:
        async with grpc.aio.insecure_channel(front.address) as channel:
            yield scheduler, front, pb_grpc.TokenizerStub(channel)
    finally:
        await front.stop(0)
        await scheduler.kill()


def _request(i: int, max_tokens: int = 30, **fields: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        prompt_token_ids=make_prompt(i, 6),
        max_tokens=max_tokens,
        ignore_eos=True,
        temperature=0.8,
        seed=1000 + i,
        **fields,  # type: ignore[arg-type]
    )


def _expected(i: int, max_tokens: int = 30) -> list[int]:
    return reference_output(make_prompt(i, 6), max_tokens, seed=1000 + i)


async def _collect(call: grpc.aio.UnaryStreamCall, first: asyncio.Event | None = None) -> list[int]:
    ids: list[int] = []
    async for response in call:
        ids.extend(response.token_ids)
        if first is not None and ids:
            first.set()
    return ids


def test_a_killed_scheduler_loses_no_request(tmp_path: Path) -> None:
    """Requests in flight are resubmitted to the restarted scheduler: same tokens, none lost."""

    async def scenario() -> None:
        async with _pipeline(tmp_path) as (scheduler, front, stub):
            started = [asyncio.Event() for _ in range(4)]
            calls = [
                asyncio.ensure_future(_collect(stub.Generate(_request(i), timeout=20), e))
                for i, e in enumerate(started)
            ]
            await asyncio.gather(*(e.wait() for e in started))
            await scheduler.kill()
            await scheduler.start()
            outputs = await asyncio.gather(*calls)
            assert outputs == [_expected(i) for i in range(4)]
            assert isinstance(front.scheduler, GrpcSchedulerClient)
            assert front.scheduler.num_in_flight == 0

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_non_grpc_failure_of_the_stream_reconnects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever breaks the stream task, the front door reconnects and nothing hangs."""
    from services.tokenizer import scheduler_client

    real = scheduler_client.convert.delivery_from_pb
    failures = [RuntimeError("a bug in the stream task")]

    def flaky(update: pb.RequestUpdate) -> object:
        if failures and update.token_ids:
            raise failures.pop()
        return real(update)

    monkeypatch.setattr(scheduler_client.convert, "delivery_from_pb", flaky)

    async def scenario() -> None:
        async with _pipeline(tmp_path) as (_scheduler, _front, stub):
            ids = await _collect(stub.Generate(_request(0), timeout=15))
            assert ids == _expected(0)
            assert not failures  # the failure did happen
            ids = await _collect(stub.Generate(_request(1), timeout=15))
            assert ids == _expected(1)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_request_id_in_use_is_refused_and_the_first_stream_goes_on(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _pipeline(tmp_path) as (_scheduler, _front, stub):
            started = asyncio.Event()
            first = asyncio.ensure_future(
                _collect(stub.Generate(_request(0, request_id="same"), timeout=15), started)
            )
            await started.wait()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _collect(stub.Generate(_request(1, request_id="same"), timeout=15))
            assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
            assert "'same' is already in use" in (refused.value.details() or "")
            assert await first == _expected(0)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_prompts_are_tokenized_off_the_event_loop(tmp_path: Path) -> None:
    """A long prompt being encoded must not stall every other stream and Describe."""
    threads: list[threading.Thread] = []

    async def scenario() -> None:
        async with _pipeline(tmp_path) as (_scheduler, front, stub):
            core = front.servicer.core
            real = core.prepare

            def prepare(*args: object) -> object:
                threads.append(threading.current_thread())
                return real(*args)  # type: ignore[arg-type]

            core.prepare = prepare  # type: ignore[method-assign]
            request = pb.GenerateRequest(prompt="hello there", max_tokens=3, ignore_eos=True)
            assert len(await _collect(stub.Generate(request, timeout=15))) == 3

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert threads and threads[0] is not threading.main_thread()


def _messages(tmp_path: Path, stream_interval: int, **fields: object) -> list[pb.GenerateResponse]:
    async def scenario() -> list[pb.GenerateResponse]:
        async with _pipeline(tmp_path, stream_interval) as (_, _front, stub):
            return [m async for m in stub.Generate(_request(3, **fields), timeout=20)]

    return asyncio.run(asyncio.wait_for(scenario(), 60))


def _joined(messages: list[pb.GenerateResponse]) -> tuple[list[int], str, str, tuple[int, int]]:
    last = messages[-1]
    ids = [t for m in messages for t in m.token_ids]
    usage = (last.usage.prompt_tokens, last.usage.completion_tokens)
    return ids, "".join(m.text for m in messages), last.finish_reason, usage


@pytest.mark.parametrize("with_stop", [False, True])
def test_stream_interval_coalesces_tokens_and_changes_nothing_else(
    tmp_path: Path, with_stop: bool
) -> None:
    """--stream-interval 4: the first token at once, then messages of up to 4 tokens; the
    tokens, text, finish reason and usage are those of one message per step."""
    one = _messages(tmp_path, 1)
    assert [len(m.token_ids) for m in one] == [1] * 30
    fields: dict[str, object] = {}
    if with_stop:  # a stop string in the middle of the text: both must end at the same place
        fields["stop"] = [_joined(one)[1][40:43]]
        one = _messages(tmp_path, 1, **fields)
        assert _joined(one)[2] == "stop"
    four = _messages(tmp_path, 4, **fields)
    assert _joined(four) == _joined(one)
    sizes = [len(m.token_ids) for m in four]
    assert sizes[0] == 1 and max(sizes) == 4 and all(1 <= n <= 4 for n in sizes)
    assert len(four) < len(one) / 2


def test_stream_interval_flag_reaches_the_front_door_and_is_checked() -> None:
    import argparse

    from deploy.commands import add_parser, spec_from_args

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--placement", "colocated", "--stream-interval", "4"])
    config = tokenizer_config(spec_from_args(args), "127.0.0.1:0", "unix:/tmp/x.sock")
    assert config.settings.tokenizer.stream_interval == 4
    zero = parser.parse_args(["serve", "--stream-interval", "0"])
    with pytest.raises(ValueError, match="--stream-interval must be >= 1"):
        spec_from_args(zero)
