"""The front door's catch-up: tokens that queued up for a stream while it was behind go out in
one message; a stream that keeps up gets one message per step. Tokens and text are the same."""

from __future__ import annotations

import asyncio

import pytest

from protos import hopscope_pb2 as pb
from services.common.identity import identify
from services.common.types import Delivery
from services.config import HopscopeConfig
from services.tokenizer.core import GenerateParams
from services.tokenizer.scheduler_client import RequestStream
from services.tokenizer.server import build_core
from services.tokenizer.service_config import TokenizerServiceConfig
from services.tokenizer.servicer import TokenizerServicer

TOKENS = [72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]  # one delivery (step) each


class _Scheduler:
    """Hands each request a stream holding `queued` deliveries already (the front door was busy
    while the scheduler stepped), then the rest one per step."""

    transport = "inproc"
    address = "inproc"
    is_ready = True

    def __init__(self, queued: int) -> None:
        self.queued = queued
        self.aborted: list[str] = []

    async def submit(self, req: object, timeout_s: float, carrier: object) -> RequestStream:
        rid = req.request_id  # type: ignore[attr-defined]
        stream = RequestStream(rid)
        deliveries = [
            Delivery(rid, [t], "length" if i == len(TOKENS) - 1 else "")
            for i, t in enumerate(TOKENS)
        ]
        for d in deliveries[: self.queued]:
            stream.put(d)

        async def steps() -> None:
            for d in deliveries[self.queued :]:
                await asyncio.sleep(0.002)
                stream.put(d)

        self._steps = asyncio.get_running_loop().create_task(steps())
        return stream

    def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def describe(self) -> pb.DescribeResponse:
        return pb.DescribeResponse()


def _messages(queued: int, catch_up: bool, interval: int = 1) -> list[pb.GenerateResponse]:
    core, _ = build_core("tiny")
    config = TokenizerServiceConfig(
        HopscopeConfig.of(stream_catch_up=catch_up, stream_interval=interval)
    )
    servicer = TokenizerServicer(core, _Scheduler(queued), identify("tokenizer", "x"), config)
    params = GenerateParams(prompt="hi", max_tokens=len(TOKENS), ignore_eos=True)

    async def collect() -> list[pb.GenerateResponse]:
        return [m async for m in servicer.generate(params, None)]

    return asyncio.run(asyncio.wait_for(collect(), 20))


def _ids_text(messages: list[pb.GenerateResponse]) -> tuple[list[int], str, str]:
    ids = [t for m in messages for t in m.token_ids]
    return ids, "".join(m.text for m in messages), messages[-1].finish_reason


def test_tokens_queued_behind_the_first_go_out_in_one_message() -> None:
    caught_up = _messages(queued=8, catch_up=True)
    per_step = _messages(queued=8, catch_up=False)
    assert _ids_text(caught_up) == _ids_text(per_step)
    assert _ids_text(caught_up)[0] == TOKENS
    # the first token at once (TTFT), the 7 that were waiting together, then one per step
    assert [len(m.token_ids) for m in caught_up] == [1, 7, 1, 1, 1]
    assert [len(m.token_ids) for m in per_step] == [1] * len(TOKENS)


def test_a_stream_that_keeps_up_gets_one_message_per_step() -> None:
    assert [len(m.token_ids) for m in _messages(queued=0, catch_up=True)] == [1] * len(TOKENS)


@pytest.mark.parametrize("catch_up", [True, False])
def test_stream_interval_still_caps_the_wait_with_or_without_catch_up(catch_up: bool) -> None:
    sizes = [len(m.token_ids) for m in _messages(queued=0, catch_up=catch_up, interval=4)]
    assert sizes == [1, 4, 4, 2]


def test_the_flag_reaches_the_front_door() -> None:
    import argparse

    from deploy.commands import add_parser, spec_from_args
    from deploy.spec import tokenizer_config

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    on = spec_from_args(parser.parse_args(["serve"]))
    off = spec_from_args(parser.parse_args(["serve", "--no-stream-catch-up"]))
    on_front = tokenizer_config(on, "127.0.0.1:0", "unix:/tmp/x.sock")
    off_front = tokenizer_config(off, "127.0.0.1:0", "unix:/tmp/x.sock")
    assert on_front.settings.tokenizer.stream_catch_up is True
    assert off_front.settings.tokenizer.stream_catch_up is False


def _output(*updates: pb.RequestUpdate) -> pb.SchedulerOutput:
    return pb.SchedulerOutput(updates=list(updates))


def test_the_scheduler_folds_steps_queued_behind_a_slow_front_door_into_one_message() -> None:
    from services.scheduler.servicer import _catch_up

    u = pb.RequestUpdate
    outbox: asyncio.Queue[pb.SchedulerOutput | None] = asyncio.Queue()
    for later in (
        _output(u(request_id="x", token_ids=[2]), u(request_id="y", token_ids=[6])),
        _output(u(request_id="x", token_ids=[3]), u(request_id="y", finish_reason="length")),
        _output(u(request_id="z", token_ids=[9]), u(request_id="y", token_ids=[7])),
    ):
        outbox.put_nowait(later)
    out = _output(u(request_id="x", token_ids=[1]), u(request_id="y", token_ids=[5]))
    assert _catch_up(out, outbox) is False and outbox.empty()
    got = [(m.request_id, list(m.token_ids), m.finish_reason) for m in out.updates]
    # each request's tokens in order in one update; a finished request's id used again after
    # its end is a new request (its own update, never folded into the finished one)
    assert got == [("x", [1, 2, 3], ""), ("y", [5, 6], "length"), ("z", [9], ""), ("y", [7], "")]
    outbox.put_nowait(_output(u(request_id="x", token_ids=[4])))
    outbox.put_nowait(None)  # the stream ended behind it: what queued still goes, then the end
    assert _catch_up(out, outbox) is True
    assert list(out.updates[0].token_ids) == [1, 2, 3, 4]
    nothing_queued = _output(u(request_id="x", token_ids=[1]))
    assert _catch_up(nothing_queued, asyncio.Queue()) is False
    assert list(nothing_queued.updates[0].token_ids) == [1]


def test_the_flag_reaches_the_scheduler() -> None:
    import argparse

    from deploy.commands import add_parser, spec_from_args
    from deploy.spec import scheduler_config

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    off = spec_from_args(parser.parse_args(["serve", "--no-stream-catch-up"]))
    sched = scheduler_config(off, "127.0.0.1:0", "unix:/tmp/w.sock")
    assert sched.settings.tokenizer.stream_catch_up is False
