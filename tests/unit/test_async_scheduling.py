"""Async scheduling on the real engine (tiny model): step N+1 is built before step N's tokens are
known and the worker fills in its placeholders. Seeded tokens are the same as with one step at a
time, for greedy and seeded requests of different lengths, one stopping at EOS, one at
max_tokens=1, one aborted; no KV block leaks."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from deploy.spec import scheduler_config
from services.common.types import Delivery, ModelInfo, SamplingParams
from services.config import SchedulerSettings
from services.scheduler.core import Request, Scheduler
from services.scheduler.runner import SchedulerRunner
from services.scheduler.worker_client import InprocWorkerClient
from services.worker.servicer import WorkerService

MAX_TOKENS = [12, 1, 7, 20, 3, 16]  # one request stops at once, others at different lengths


def mixed_requests() -> list[Request]:
    reqs = []
    for i, max_tokens in enumerate(MAX_TOKENS):
        sampling = SamplingParams(temperature=0.8, top_p=0.9, seed=i) if i % 2 else SamplingParams()
        prompt = [(31 * i + 7 * j) % 3000 + 5 for j in range(5 + 9 * i)]
        reqs.append(Request(f"r{i}", prompt, max_tokens, sampling, arrival_s=float(i)))
    return reqs


def _drive(
    service: WorkerService, info: ModelInfo, overlap: bool
) -> tuple[dict[str, list[int]], dict[str, str], Scheduler]:
    """The runner's loop without the event loop: with `overlap`, the next step is built before
    the running one is answered (as SchedulerRunner does); requests arrive over three steps."""
    core = Scheduler(SchedulerSettings(max_num_batched_tokens=64, async_scheduling=overlap), info)
    tokens: dict[str, list[int]] = {}
    reasons: dict[str, str] = {}
    pending = mixed_requests()
    running = None
    while pending or core.has_unfinished:
        if pending:
            core.add(pending.pop(0))
            core.add(pending.pop(0))
        if running is None:
            running = core.schedule(0.0)
            assert running is not None
        ahead = core.schedule_ahead(0.0) if overlap else None
        out = asyncio.run(service.step(running.seq_steps, {}, "inproc", running.swaps))
        for update in core.on_step(running, out.sampled, 0.0):
            tokens.setdefault(update.request_id, []).extend(update.token_ids)
            if update.finish_reason:
                reasons[update.request_id] = update.finish_reason
        running = ahead
    core.block_manager.check()
    assert core.num_free_blocks == core.block_manager.num_blocks
    return tokens, reasons, core


def test_seeded_tokens_are_the_same_with_steps_built_ahead(service: WorkerService) -> None:
    plain, _, _ = _drive(service, service.info, overlap=False)
    # EOS is a token r0 samples at its 4th step: r0 stops there, a slot built ahead is wasted
    info = dataclasses.replace(service.info, eos_token_ids=[plain["r0"][3]])
    one_at_a_time, reasons_off, _ = _drive(service, info, overlap=False)
    overlapped, reasons_on, core = _drive(service, info, overlap=True)
    assert core.num_scheduled_ahead > 5
    assert overlapped == one_at_a_time
    assert reasons_on == reasons_off
    assert reasons_on["r0"] == "stop" and len(overlapped["r0"]) <= 4
    assert reasons_on["r1"] == "length" and len(overlapped["r1"]) == 1


class MixSink:
    """What the front door would get: tokens per request, delivery sizes, the finishing ones."""

    def __init__(self) -> None:
        self.tokens: dict[str, list[int]] = {}
        self.sizes: list[int] = []  # tokens per delivery
        self.finished: dict[str, Delivery] = {}

    def deliver(self, deliveries: list[Delivery]) -> None:
        assert len({d.request_id for d in deliveries}) == len(deliveries), "one per request"
        for d in deliveries:
            self.tokens.setdefault(d.request_id, []).extend(d.token_ids)
            self.sizes.append(len(d.token_ids))
            if d.is_finished:
                self.finished[d.request_id] = d


async def serve_mix(
    service: WorkerService, overlap: bool, num_steps: int = 1
) -> tuple[MixSink, SchedulerRunner]:
    """The real runner over the in-process worker: the mix of requests at once, r2 aborted
    after its third token; returns once every request ended and nothing is in flight."""

    def core(info: ModelInfo) -> Scheduler:
        config = SchedulerSettings(
            max_num_batched_tokens=64, async_scheduling=overlap, num_scheduler_steps=num_steps
        )
        return Scheduler(config, info)

    runner = SchedulerRunner(core, InprocWorkerClient(service), SchedulerSettings())
    sink = MixSink()
    await runner.start()
    try:
        for req in mixed_requests():
            req.arrival_s = time.monotonic()
            runner.submit(req, sink, "inproc")
        deadline = time.monotonic() + 60
        while len(sink.finished) < len(MAX_TOKENS) and time.monotonic() < deadline:
            if "r2" not in sink.finished and len(sink.tokens.get("r2", [])) >= 3:
                runner.abort("r2")
                sink.finished["r2"] = Delivery("r2", [], "abort")
            await asyncio.sleep(0.001)
        assert len(sink.finished) == len(MAX_TOKENS), "requests did not finish in 60 s"
        while runner.core is not None and runner.core.num_in_flight:  # a wasted step
            await asyncio.sleep(0.01)
    finally:
        await runner.stop()
    return sink, runner


def test_the_runner_gives_the_same_tokens_and_frees_every_block(service: WorkerService) -> None:
    plain, _ = asyncio.run(serve_mix(service, overlap=False))
    overlapped, runner = asyncio.run(serve_mix(service, overlap=True))
    assert runner.core is not None and runner.core.num_scheduled_ahead > 0
    for rid in (f"r{i}" for i in range(len(MAX_TOKENS)) if i != 2):
        assert overlapped.tokens[rid] == plain.tokens[rid], rid
        assert overlapped.finished[rid].finish_reason == "length"
    # the aborted one got the same tokens as far as it went
    num = min(len(plain.tokens["r2"]), len(overlapped.tokens["r2"]))
    assert num >= 3 and overlapped.tokens["r2"][:num] == plain.tokens["r2"][:num]
    runner.core.block_manager.check()
    assert runner.core.num_free_blocks == runner.core.block_manager.num_blocks


def test_the_serve_flag_reaches_the_scheduler_process() -> None:
    """`serve --async-scheduling on` -> the scheduler's config, through the JSON a child gets."""
    import json

    from deploy.cli import build_parser
    from deploy.commands import spec_from_args
    from services.common.process import config_from_dict, config_to_json
    from services.scheduler.service_config import SchedulerServiceConfig

    for flag, expected in (("on", True), ("off", False)):
        args = build_parser().parse_args(["serve", "--no-ray", "--async-scheduling", flag])
        config = scheduler_config(spec_from_args(args), "unix:/tmp/s.sock", "unix:/tmp/w.sock")
        sent = json.loads(config_to_json(config))
        assert (
            config_from_dict(SchedulerServiceConfig, sent).settings.scheduler.async_scheduling
            is expected
        )
