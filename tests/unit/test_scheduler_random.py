"""Hundreds of requests, aborted, expired and recomputed at random points: nothing leaks, and
every request that ran to its end got exactly the tokens it would get alone."""

import random

import pytest

from services.common.types import SamplingParams
from services.config import SchedulerSettings
from services.scheduler.core import QueueFullError, Scheduler
from services.scheduler.request import Batch
from tests.fakes import FakeWorker, Outcome, collect, make_request, reference_output

NUM_REQUESTS = 300
RUN_LENGTHS: list[int] = []  # multi-step: the length of every run handed out
DT_S = 0.001


def assert_consistent(scheduler: Scheduler) -> None:
    blocks = scheduler.block_manager
    assert blocks.num_sequences == scheduler.num_running  # waiting sequences hold no blocks
    blocks.check()  # reference counts match the tables, nothing leaked or free twice
    assert scheduler.num_running <= scheduler.config.max_num_seqs


def run_random(
    config: SchedulerSettings, seed: int, shared_prefixes: bool = False, overlap: bool = False
) -> Scheduler:
    """With `overlap`, the next step is built (schedule_ahead) before the running one is
    answered, as the runner does with async scheduling."""
    rng = random.Random(seed)
    worker = FakeWorker(
        num_blocks=24, block_size=4, max_context=128, eos_at_length=30, num_swap_blocks=12
    )
    scheduler = Scheduler(config, worker.info)
    prefixes = [[rng.randint(1, 999) for _ in range(rng.randint(4, 24))] for _ in range(3)]
    pending = [
        make_request(
            i,
            rng.randint(1, 40),
            rng.randint(1, 24),
            sampling=SamplingParams(seed=rng.randint(0, 2**31)),
            ignore_eos=rng.random() < 0.5,
            deadline_s=None if rng.random() < 0.8 else rng.uniform(0.0, 2.0),
        )
        for i in range(NUM_REQUESTS)
    ]
    if shared_prefixes:  # most prompts start with one of a few prefixes: blocks get shared
        for req in pending:
            prefix = rng.choice(prefixes)
            req.prompt_token_ids = (prefix + req.prompt_token_ids)[: rng.randint(1, 40)]
    added = []
    outcomes: dict[str, Outcome] = {}
    now_s = 0.0
    running = None  # overlap: the step built ahead, run next
    running_run: list[Batch] = []  # multi-step with overlap: the run built ahead
    while pending or scheduler.has_unfinished:
        now_s += DT_S
        for _ in range(rng.randint(0, 3)):
            if not pending:
                break
            req = pending[-1]
            req.arrival_s = now_s
            try:
                scheduler.add(req)
            except QueueFullError:
                break
            added.append(pending.pop())
        if added and rng.random() < 0.1:
            collect(outcomes, [u for u in [scheduler.abort(rng.choice(added).request_id)] if u])
        collect(outcomes, scheduler.expire(now_s))
        if config.num_scheduler_steps > 1:
            running_run = _multi_step_turn(
                scheduler, worker, rng, added, outcomes, now_s, running_run
            )
            continue
        batch = running or scheduler.schedule(now_s)
        running = None
        if batch is None:
            continue
        ahead = scheduler.schedule_ahead(now_s) if overlap else None
        if rng.random() < 0.01:
            worker.restart()
            scheduler.on_worker_lost()
            continue
        if rng.random() < 0.01:
            continue  # a step that failed before the worker ran it: never answered
        output = worker.step(batch.seq_steps, batch.swaps)
        if rng.random() < 0.01:
            if ahead is not None:  # the worker ran the one behind it too; both answers lost
                worker.step(ahead.seq_steps, ahead.swaps)
            continue  # ran, but its answer was lost
        if rng.random() < 0.1 and added:  # an abort arrives while the step is in flight
            collect(outcomes, [u for u in [scheduler.abort(rng.choice(added).request_id)] if u])
        collect(outcomes, scheduler.on_step(batch, output.sampled, now_s))
        assert_consistent(scheduler)
        running = ahead

    assert scheduler.num_running == scheduler.num_waiting == 0
    assert scheduler.num_free_blocks == worker.num_blocks
    assert scheduler.num_free_host_blocks == worker.num_swap_blocks
    assert scheduler.block_manager.num_sequences == 0
    scheduler.block_manager.check()
    assert len(outcomes) == NUM_REQUESTS
    for req in added:
        got = outcomes[req.request_id]
        expected = reference_output(
            req.prompt_token_ids,
            req.max_tokens,
            seed=req.sampling.seed,
            eos_at_length=30,
            ignore_eos=req.ignore_eos,
        )
        if got.finish_reason == "abort":
            assert got.token_ids == expected[: len(got.token_ids)]
        else:
            assert got.token_ids == expected
            assert got.finish_reason == ("length" if req.ignore_eos or expected[-1] else "stop")
    num_finished = sum(o.finish_reason in ("stop", "length") for o in outcomes.values())
    assert num_finished > NUM_REQUESTS // 4  # the run exercised real generation, not only aborts
    return scheduler


def _multi_step_turn(
    scheduler: Scheduler,
    worker: FakeWorker,
    rng: random.Random,
    added: list,  # type: ignore[type-arg]
    outcomes: dict[str, Outcome],
    now_s: float,
    running: list[Batch],
) -> list[Batch]:
    """One multi-step run (as the runner drives it): never answered, lost, or answered step by
    step, with aborts arriving while it runs. With async scheduling the next run is built before
    this one is answered; it is returned, to run next (and dropped with this one's failure)."""
    run = running or scheduler.schedule_run(now_s)
    if not run:
        return []
    ahead = scheduler.schedule_run_ahead(now_s) if scheduler.config.async_scheduling else []
    RUN_LENGTHS.append(len(run))
    if rng.random() < 0.01:
        worker.restart()
        scheduler.on_worker_lost()
        return []
    if rng.random() < 0.01:
        return []  # failed before the worker ran it (the one behind it is dropped too)
    outputs = [worker.step(batch.seq_steps, batch.swaps) for batch in run]
    if rng.random() < 0.01:
        for batch in ahead:  # the worker ran the run behind it too; both answers lost
            worker.step(batch.seq_steps, batch.swaps)
        return []  # ran, but its answer was lost
    if rng.random() < 0.1 and added:
        collect(outcomes, [u for u in [scheduler.abort(rng.choice(added).request_id)] if u])
    for batch, output in zip(run, outputs, strict=True):
        collect(outcomes, scheduler.on_step(batch, output.sampled, now_s))
        assert_consistent(scheduler)
    return ahead


@pytest.mark.parametrize(
    ("preemption", "overlap"), [("recompute", False), ("swap", False), ("recompute", True)]
)
def test_random_multi_step_run_gives_the_tokens_and_leaks_nothing(
    preemption: str, overlap: bool
) -> None:
    """Runs of up to 4 decode steps: cut short by a full cache, preemptions between them,
    sequences ending mid-run on EOS or max_tokens, aborts while a run is in flight."""
    config = SchedulerSettings(
        max_num_seqs=8,
        max_num_batched_tokens=64,
        max_queue_len=32,
        prefix_caching=True,
        preemption=preemption,  # type: ignore[arg-type]
        num_scheduler_steps=4,
        async_scheduling=overlap,
    )
    RUN_LENGTHS.clear()
    run_random(config, seed=6, shared_prefixes=True)
    assert RUN_LENGTHS.count(4) > 20 and RUN_LENGTHS.count(1) > 20, RUN_LENGTHS


@pytest.mark.parametrize("enable_chunked_prefill", [True, False])
def test_random_continuous_run_leaks_nothing(enable_chunked_prefill: bool) -> None:
    config = SchedulerSettings(
        max_num_seqs=8,
        max_num_batched_tokens=64,
        max_queue_len=32,
        enable_chunked_prefill=enable_chunked_prefill,
        prefix_caching=enable_chunked_prefill,  # both settings of prefix caching run
    )
    run_random(config, seed=1 if enable_chunked_prefill else 2)


def test_random_static_run_leaks_nothing() -> None:
    config = SchedulerSettings(
        batching="static", max_num_seqs=8, max_num_batched_tokens=64, max_queue_len=32
    )
    run_random(config, seed=3)


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
def test_random_shared_prefix_run_shares_blocks_and_leaks_nothing(preemption: str) -> None:
    config = SchedulerSettings(
        max_num_seqs=8,
        max_num_batched_tokens=64,
        max_queue_len=32,
        prefix_caching=True,
        preemption=preemption,  # type: ignore[arg-type]
    )
    scheduler = run_random(config, seed=4, shared_prefixes=True)
    assert scheduler.block_manager.num_hit_tokens > 0  # prefixes were actually shared
    assert (scheduler.num_swapped_out > 0) == (preemption == "swap")


def test_random_swap_run_swaps_and_leaks_nothing() -> None:
    config = SchedulerSettings(
        max_num_seqs=8,
        max_num_batched_tokens=64,
        max_queue_len=32,
        prefix_caching=False,
        preemption="swap",
    )
    assert run_random(config, seed=5).num_swapped_out > 0


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("chunked", SchedulerSettings(max_num_seqs=8, max_num_batched_tokens=64, max_queue_len=32)),
        (
            "unchunked",
            SchedulerSettings(
                max_num_seqs=8,
                max_num_batched_tokens=64,
                max_queue_len=32,
                enable_chunked_prefill=False,
                prefix_caching=False,
            ),
        ),
        ("static", SchedulerSettings(batching="static", max_num_seqs=8, max_num_batched_tokens=64)),
        (
            "swap",
            SchedulerSettings(
                max_num_seqs=8, max_num_batched_tokens=64, max_queue_len=32, preemption="swap"
            ),
        ),
    ],
)
def test_random_run_with_steps_built_ahead_leaks_nothing(
    name: str, config: SchedulerSettings
) -> None:
    """Async scheduling: exact tokens (the fake worker fills in the placeholders and checks every
    KV slot it reads), nothing leaked, under aborts, expiry, preemption and lost steps."""
    scheduler = run_random(config, seed=11, shared_prefixes=name == "swap", overlap=True)
    assert scheduler.num_scheduled_ahead > 100
