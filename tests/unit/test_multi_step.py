"""Multi-step decoding (`--num-scheduler-steps N`) on the real engine (tiny model): a step of
decodes only runs with up to N-1 decode steps chained behind it in one worker call. Seeded
tokens are those of one step at a time, for greedy and seeded requests of different lengths, one
stopping at EOS mid-run, one at max_tokens=1, one aborted; a run's tokens reach the front door as
one delivery per request; no KV block leaks."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from deploy.spec import scheduler_config
from services.common.types import ModelInfo
from services.config import SchedulerSettings
from services.scheduler.core import Scheduler
from services.scheduler.request import Batch
from services.worker.servicer import WorkerService

# the requests of the async-scheduling tests (and the `service` fixture of tests/unit/conftest.py):
# both switches are checked against one step at a time on the same mix
from tests.unit.test_async_scheduling import MAX_TOKENS, mixed_requests, serve_mix


def _drive(
    service: WorkerService, info: ModelInfo, num_steps: int, overlap: bool = False
) -> tuple[dict[str, list[int]], dict[str, str], list[int]]:
    """The runner's loop without the event loop; requests arrive over three turns. With
    `overlap` (async scheduling) the next run is built before the running one is answered.
    Returns the tokens, finish reasons and the length of every run."""
    config = SchedulerSettings(
        max_num_batched_tokens=64, num_scheduler_steps=num_steps, async_scheduling=overlap
    )
    core = Scheduler(config, info)
    tokens: dict[str, list[int]] = {}
    reasons: dict[str, str] = {}
    run_lengths: list[int] = []
    pending = mixed_requests()
    ahead: list[Batch] = []
    while pending or core.has_unfinished:
        if pending:
            core.add(pending.pop(0))
            core.add(pending.pop(0))
        run = ahead or core.schedule_run(0.0)
        assert run
        ahead = core.schedule_run_ahead(0.0) if overlap else []
        run_lengths.append(len(run))
        first, later = run[0], [b.seq_steps for b in run[1:]]
        out = asyncio.run(service.step(first.seq_steps, {}, "inproc", first.swaps, later))
        for batch, sampled in zip(run, [out.sampled, *out.later_sampled], strict=True):
            for update in core.on_step(batch, sampled, 0.0):
                tokens.setdefault(update.request_id, []).extend(update.token_ids)
                if update.finish_reason:
                    reasons[update.request_id] = update.finish_reason
    core.block_manager.check()
    assert core.num_free_blocks == core.block_manager.num_blocks
    return tokens, reasons, run_lengths


def test_seeded_tokens_are_the_same_in_runs_of_four(service: WorkerService) -> None:
    plain, _, _ = _drive(service, service.info, num_steps=1)
    # EOS is a token r0 samples at its 4th step: r0 stops there, inside a run
    info = dataclasses.replace(service.info, eos_token_ids=[plain["r0"][3]])
    one_at_a_time, reasons_off, lengths_off = _drive(service, info, num_steps=1)
    in_runs, reasons_on, lengths_on = _drive(service, info, num_steps=4)
    assert set(lengths_off) == {1} and max(lengths_on) == 4
    assert len(lengths_on) < len(lengths_off) / 2  # fewer worker calls
    assert in_runs == one_at_a_time
    assert reasons_on == reasons_off
    assert reasons_on["r0"] == "stop" and len(in_runs["r0"]) <= 4
    assert reasons_on["r1"] == "length" and len(in_runs["r1"]) == 1
    assert all(len(in_runs[f"r{i}"]) == n for i, n in enumerate(MAX_TOKENS) if i != 0)
    # with async scheduling too: the next run built while one runs
    overlapped, reasons_both, lengths_both = _drive(service, info, num_steps=4, overlap=True)
    assert overlapped == one_at_a_time and reasons_both == reasons_off
    assert max(lengths_both) == 4


@pytest.mark.parametrize("overlap", [False, True])
def test_the_runner_sends_a_runs_tokens_together_and_frees_every_block(
    service: WorkerService, overlap: bool
) -> None:
    plain, _ = asyncio.run(serve_mix(service, overlap=False))
    in_runs, runner = asyncio.run(serve_mix(service, overlap, num_steps=4))
    assert max(plain.sizes) == 1 and max(in_runs.sizes) == 4
    for rid in (f"r{i}" for i in range(len(MAX_TOKENS)) if i != 2):
        assert in_runs.tokens[rid] == plain.tokens[rid], rid
        assert in_runs.finished[rid].finish_reason == "length"
    num = min(len(plain.tokens["r2"]), len(in_runs.tokens["r2"]))
    assert num >= 3 and in_runs.tokens["r2"][:num] == plain.tokens["r2"][:num]
    assert runner.core is not None
    runner.core.block_manager.check()
    assert runner.core.num_free_blocks == runner.core.block_manager.num_blocks


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num-scheduler-steps", "0"], "--num-scheduler-steps must be >= 1"),
        (["--num-scheduler-steps", "4", "--step-encoding", "nested"], "packed or delta"),
    ],
)
def test_the_flag_is_checked(flags: list[str], message: str) -> None:
    from deploy.cli import build_parser
    from deploy.commands import spec_from_args

    args = build_parser().parse_args(["serve", "--no-ray", *flags])
    with pytest.raises(ValueError, match=message):
        spec_from_args(args)


def test_the_serve_flag_reaches_the_scheduler_process() -> None:
    import json

    from deploy.cli import build_parser
    from deploy.commands import spec_from_args
    from services.common.process import config_from_dict, config_to_json
    from services.scheduler.service_config import SchedulerServiceConfig

    args = build_parser().parse_args(["serve", "--no-ray", "--num-scheduler-steps", "4"])
    config = scheduler_config(spec_from_args(args), "unix:/tmp/s.sock", "unix:/tmp/w.sock")
    sent = json.loads(config_to_json(config))
    assert (
        config_from_dict(SchedulerServiceConfig, sent).settings.scheduler.num_scheduler_steps == 4
    )
