"""The scheduler core in continuous mode, driven by FakeWorker."""

import pytest

from services.common.types import SamplingParams
from services.config import SchedulerSettings
from services.scheduler.core import (
    InvalidRequestError,
    QueueFullError,
    Request,
    Scheduler,
    SchedulerError,
)
from tests.fakes import (
    EOS_TOKEN_ID,
    FakeWorker,
    make_request,
    reference_output,
    run_until_idle,
)


def make_scheduler(worker: FakeWorker, **config: object) -> Scheduler:
    return Scheduler(SchedulerSettings(**config), worker.info)  # type: ignore[arg-type]


def step(scheduler: Scheduler, worker: FakeWorker, now_s: float = 0.0) -> list:
    batch = scheduler.schedule(now_s)
    assert batch is not None
    return scheduler.on_step(batch, worker.step(batch.seq_steps).sampled, now_s)


# ---- admission -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt_len", "max_tokens", "message"),
    [
        (0, 4, "prompt is empty"),
        (8, 0, "max_tokens must be >= 1, got 0"),
        (500, 20, "prompt has 500 tokens and max_tokens is 20, but the model's context is 512"),
        (300, 100, "needs 100 KV blocks but the worker's cache has only 64"),
    ],
)
def test_add_refuses_requests_that_can_never_run(prompt_len, max_tokens, message) -> None:
    worker = FakeWorker(num_blocks=64, block_size=4, max_context=512)
    scheduler = make_scheduler(worker)
    with pytest.raises(InvalidRequestError, match=message):
        scheduler.add(make_request(0, prompt_len, max_tokens))
    assert scheduler.num_waiting == 0


def test_add_refuses_a_duplicate_request_id_until_the_first_finishes() -> None:
    worker = FakeWorker()
    scheduler = make_scheduler(worker)
    scheduler.add(make_request(0, 8, 2))
    with pytest.raises(InvalidRequestError, match="'r0' is already in use"):
        scheduler.add(make_request(0, 8, 2))
    run_until_idle(scheduler, worker)
    scheduler.add(make_request(0, 8, 2))
    assert scheduler.num_waiting == 1


def test_full_queue_refuses_at_once_and_accepts_again_after_it_drains() -> None:
    worker = FakeWorker()
    scheduler = make_scheduler(worker, max_queue_len=3, max_num_seqs=1, max_num_batched_tokens=8)
    for i in range(3):
        scheduler.add(make_request(i))
    with pytest.raises(QueueFullError, match="full \\(3 requests\\)"):
        scheduler.add(make_request(3))
    step(scheduler, worker)  # r0 leaves the queue
    scheduler.add(make_request(3))
    assert scheduler.num_waiting == 3


def test_without_chunked_prefill_a_prompt_over_the_budget_is_refused() -> None:
    worker = FakeWorker()
    scheduler = make_scheduler(worker, max_num_batched_tokens=64, enable_chunked_prefill=False)
    with pytest.raises(InvalidRequestError, match="over max_num_batched_tokens \\(64\\)"):
        scheduler.add(make_request(0, 60, 10))


def test_config_errors_say_what_to_change() -> None:
    with pytest.raises(ValueError, match="batching must be one of continuous, static"):
        SchedulerSettings(batching="dynamic")  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match="--max-num-batched-tokens \\(8\\) must be >= --max-num-seqs"
    ):
        SchedulerSettings(max_num_seqs=16, max_num_batched_tokens=8)


# ---- generation ------------------------------------------------------------------------------


def test_requests_get_the_tokens_they_would_get_alone() -> None:
    worker = FakeWorker()
    scheduler = make_scheduler(worker)
    requests = [make_request(i, 5 + i, 3 + i, sampling=SamplingParams(seed=i)) for i in range(6)]
    for req in requests:
        scheduler.add(req)
    outcomes = run_until_idle(scheduler, worker)
    for req in requests:
        expected = reference_output(req.prompt_token_ids, req.max_tokens, seed=req.sampling.seed)
        assert outcomes[req.request_id].token_ids == expected
        assert outcomes[req.request_id].finish_reason == "length"
        assert req.output_token_ids == expected
    assert scheduler.num_free_blocks == worker.num_blocks


def test_eos_finishes_with_stop_unless_ignore_eos() -> None:
    worker = FakeWorker(eos_at_length=10)  # EOS is the 3rd token of an 8-token prompt
    scheduler = make_scheduler(worker)
    scheduler.add(make_request(0, 8, 6))
    scheduler.add(make_request(1, 8, 6, ignore_eos=True))
    outcomes = run_until_idle(scheduler, worker)
    assert outcomes["r0"].finish_reason == "stop"
    assert outcomes["r0"].token_ids[-1] == EOS_TOKEN_ID and len(outcomes["r0"].token_ids) == 3
    assert outcomes["r1"].finish_reason == "length" and len(outcomes["r1"].token_ids) == 6


def test_decodes_come_first_and_prefills_fill_the_token_budget() -> None:
    worker = FakeWorker()
    scheduler = make_scheduler(
        worker, max_num_seqs=4, max_num_batched_tokens=20, enable_chunked_prefill=False
    )
    for i in range(3):
        scheduler.add(make_request(i, 8, 5))
    first = scheduler.schedule(0.0)
    assert first.request_ids == ["r0", "r1"]  # 8 + 8 tokens; a third prompt would pass 20
    assert first.num_prefill_tokens == 16
    scheduler.on_step(first, worker.step(first.seq_steps).sampled, 0.0)
    second = scheduler.schedule(0.0)
    assert second.phases == ["decode", "decode", "prefill"]
    assert second.request_ids == ["r0", "r1", "r2"]
    assert (second.num_decode_tokens, second.num_prefill_tokens) == (2, 8)


def test_no_more_than_max_num_seqs_run_at_once() -> None:
    worker = FakeWorker()
    scheduler = make_scheduler(worker, max_num_seqs=2)
    for i in range(5):
        scheduler.add(make_request(i, 4, 3))
    batch_sizes = []
    while scheduler.has_unfinished:
        batch = scheduler.schedule(0.0)
        batch_sizes.append(batch.num_seqs)
        assert scheduler.num_running <= 2
        scheduler.on_step(batch, worker.step(batch.seq_steps).sampled, 0.0)
    assert max(batch_sizes) == 2


def test_max_prefill_seqs_admits_that_many_new_prompts_per_step() -> None:
    worker = FakeWorker()
    scheduler = make_scheduler(worker, max_num_seqs=8, max_prefill_seqs=1)
    for i in range(3):
        scheduler.add(make_request(i, 4, 4))
    phases = []
    for _ in range(3):
        batch = scheduler.schedule(0.0)
        phases.append(batch.phases)
        scheduler.on_step(batch, worker.step(batch.seq_steps).sampled, 0.0)
    # the budget would take all three prompts in the first step; the cap takes one per step
    assert phases == [["prefill"], ["decode", "prefill"], ["decode", "decode", "prefill"]]
    run_until_idle(scheduler, worker)


def test_chunked_prefill_splits_a_long_prompt_and_samples_only_at_its_end() -> None:
    worker = FakeWorker()
    scheduler = make_scheduler(worker, max_num_seqs=4, max_num_batched_tokens=16)
    req = make_request(0, 40, 3)
    scheduler.add(req)
    chunks = []
    updates = []
    while not updates:
        batch = scheduler.schedule(0.0)
        chunks.append((len(batch.seq_steps[0].token_ids), batch.seq_steps[0].sampling))
        updates = scheduler.on_step(batch, worker.step(batch.seq_steps).sampled, 0.0)
    assert [n for n, _ in chunks] == [16, 16, 8]
    assert [s is not None for _, s in chunks] == [False, False, True]
    outcomes = run_until_idle(scheduler, worker)
    assert updates[0].token_ids + outcomes["r0"].token_ids == reference_output(
        req.prompt_token_ids, 3
    )


def test_a_chunked_prompt_shares_its_steps_with_running_decodes() -> None:
    worker = FakeWorker()
    scheduler = make_scheduler(worker, max_num_seqs=4, max_num_batched_tokens=16)
    scheduler.add(make_request(0, 4, 10))
    step(scheduler, worker)
    scheduler.add(make_request(1, 40, 2))
    batch = scheduler.schedule(0.0)
    assert batch.phases == ["decode", "prefill"]
    assert (batch.num_decode_tokens, batch.num_prefill_tokens) == (1, 15)
    scheduler.on_step(batch, worker.step(batch.seq_steps).sampled, 0.0)
    outcomes = run_until_idle(scheduler, worker)
    assert outcomes["r1"].finish_reason == "length"


# ---- abort, deadlines ------------------------------------------------------------------------


def test_abort_frees_blocks_at_once_and_the_in_flight_step_brings_nothing() -> None:
    worker = FakeWorker(num_blocks=16)
    scheduler = make_scheduler(worker)
    scheduler.add(make_request(0, 20, 8))
    scheduler.add(make_request(1, 8, 8))
    batch = scheduler.schedule(0.0)
    assert scheduler.num_free_blocks < 16
    update = scheduler.abort("r0")
    assert update.finish_reason == "abort" and update.is_finished
    assert scheduler.num_free_blocks == 16 - 2  # only r1's two blocks remain
    updates = scheduler.on_step(batch, worker.step(batch.seq_steps).sampled, 0.0)
    assert [u.request_id for u in updates] == ["r1"]
    assert scheduler.abort("r0") is None and scheduler.abort("nope") is None


def test_abort_of_a_waiting_request_removes_it_from_the_queue() -> None:
    worker = FakeWorker()
    scheduler = make_scheduler(worker)
    scheduler.add(make_request(0))
    scheduler.abort("r0")
    assert scheduler.num_waiting == 0 and not scheduler.has_unfinished
    assert scheduler.schedule(0.0) is None


def test_deadline_aborts_waiting_and_running_requests_with_an_error() -> None:
    worker = FakeWorker()
    scheduler = make_scheduler(worker, max_num_seqs=1, max_num_batched_tokens=8)
    scheduler.add(make_request(0, 8, 10, deadline_s=5.0, arrival_s=0.0))
    scheduler.add(make_request(1, 8, 10, deadline_s=3.0, arrival_s=0.0))
    scheduler.add(make_request(2, 8, 10))
    assert scheduler.next_deadline_s == 3.0
    step(scheduler, worker, now_s=1.0)  # r0 runs, r1 waits
    assert scheduler.expire(2.9) == []
    expired = scheduler.expire(3.0)
    assert [u.request_id for u in expired] == ["r1"]
    assert "missed its deadline" in str(expired[0].error)
    assert scheduler.next_deadline_s == 5.0
    expired = scheduler.expire(6.0)
    assert [(u.request_id, u.finish_reason) for u in expired] == [("r0", "abort")]
    assert isinstance(expired[0].error, SchedulerError)
    assert scheduler.num_free_blocks == worker.num_blocks
    assert scheduler.next_deadline_s is None
    assert run_until_idle(scheduler, worker)["r2"].finish_reason == "length"


# ---- preemption and worker loss --------------------------------------------------------------


def test_preemption_under_a_tiny_cache_gives_the_unconstrained_tokens() -> None:
    requests = [
        make_request(i, 6 + i % 5, 12 + i % 7, arrival_s=i * 1e-3, sampling=SamplingParams(seed=i))
        for i in range(12)
    ]
    worker = FakeWorker(num_blocks=12, block_size=4)
    scheduler = make_scheduler(worker, max_num_seqs=8, max_num_batched_tokens=32)
    for req in requests:
        scheduler.add(req)
    outcomes = run_until_idle(scheduler, worker)
    assert scheduler.num_preemptions > 0
    for req in requests:
        expected = reference_output(req.prompt_token_ids, req.max_tokens, seed=req.sampling.seed)
        assert outcomes[req.request_id].token_ids == expected
    assert scheduler.num_free_blocks == 12


def test_the_most_recently_arrived_sequence_is_preempted_and_requeued_first() -> None:
    worker = FakeWorker(num_blocks=4, block_size=4)
    scheduler = make_scheduler(worker, max_num_seqs=4, max_num_batched_tokens=16)
    scheduler.add(make_request(0, 8, 8, arrival_s=0.0))
    scheduler.add(make_request(1, 7, 8, arrival_s=1.0))
    scheduler.add(make_request(2, 4, 2, arrival_s=2.0))
    step(scheduler, worker)  # both prefilled, 4 blocks used, r2 waits
    step(scheduler, worker)  # r1 grows to 8 tokens in its 2 blocks; r0 needs a third block
    batch = scheduler.schedule(0.0)
    assert batch.request_ids == ["r0"]
    assert scheduler.get("r1").num_preemptions == 1
    scheduler.on_step(batch, worker.step(batch.seq_steps).sampled, 0.0)
    prefill_order = []
    while scheduler.has_unfinished:
        batch = scheduler.schedule(0.0)
        prefill_order += [r for r, p in zip(batch.request_ids, batch.phases) if p == "prefill"]
        scheduler.on_step(batch, worker.step(batch.seq_steps).sampled, 0.0)
    assert list(dict.fromkeys(prefill_order)) == ["r1", "r2"]  # r2 never jumps ahead of r1
    assert scheduler.num_free_blocks == 4


def test_worker_loss_recomputes_running_sequences_with_identical_tokens() -> None:
    requests = [make_request(i, 10, 12, sampling=SamplingParams(seed=i)) for i in range(4)]
    worker = FakeWorker()
    scheduler = make_scheduler(worker, max_num_batched_tokens=64)
    for req in requests:
        scheduler.add(req)
    for _ in range(4):
        step(scheduler, worker)
    lost = scheduler.schedule(0.0)  # in flight when the worker dies
    worker.restart()
    scheduler.on_worker_lost()
    assert scheduler.num_running == 0 and scheduler.num_waiting == 4
    assert scheduler.num_free_blocks == worker.num_blocks
    assert scheduler.on_step(lost, {s.seq_id: 1 for s in lost.seq_steps}, 0.0) == []
    outcomes = run_until_idle(scheduler, worker)
    for req in requests:
        expected = reference_output(req.prompt_token_ids, req.max_tokens, seed=req.sampling.seed)
        assert req.output_token_ids == expected
        assert len(outcomes[req.request_id].token_ids) == 12 - 4


def test_request_records_when_it_was_scheduled_and_got_its_first_token() -> None:
    worker = FakeWorker()
    scheduler = make_scheduler(worker)
    req = Request("a", [5, 6, 7], max_tokens=2, arrival_s=1.0)
    scheduler.add(req)
    step(scheduler, worker, now_s=2.0)
    step(scheduler, worker, now_s=3.0)
    assert (req.first_scheduled_s, req.first_token_s, req.finished_s) == (2.0, 2.0, 3.0)
    assert req.finish_reason == "length"


def test_a_failed_step_is_scheduled_again_and_its_late_answer_ignored() -> None:
    worker = FakeWorker()
    scheduler = make_scheduler(worker)
    req = make_request(0, 8, 5)
    scheduler.add(req)
    step(scheduler, worker)
    failed = scheduler.schedule(0.0)  # the worker raised: the runner never answers it
    retried = scheduler.schedule(0.0)
    assert retried.seq_steps == failed.seq_steps
    assert scheduler.on_step(failed, {failed.seq_steps[0].seq_id: 7}, 0.0) == []
    scheduler.on_step(retried, worker.step(retried.seq_steps).sampled, 0.0)
    run_until_idle(scheduler, worker)
    assert req.output_token_ids == reference_output(req.prompt_token_ids, 5)


def test_a_decode_step_is_the_same_whichever_path_builds_it() -> None:
    """schedule(), schedule_ahead() and a multi-step run build a sequence's decode step alike
    (only the token differs where it is not known yet): one builder, no copies drifting."""
    from dataclasses import replace

    from services.common.types import PLACEHOLDER_TOKEN_ID

    sampling = SamplingParams(temperature=0.7, seed=5)

    def prefilled(**config: object) -> tuple[Scheduler, FakeWorker, object]:
        worker = FakeWorker(block_size=4)
        scheduler = make_scheduler(worker, **config)
        scheduler.add(make_request(0, num_prompt_tokens=8, max_tokens=8, sampling=sampling))
        prefill = scheduler.schedule(0.0)
        assert prefill is not None
        return scheduler, worker, prefill

    scheduler, worker, prefill = prefilled()
    scheduler.on_step(prefill, worker.step(prefill.seq_steps).sampled, 0.0)
    plain = scheduler.schedule(0.0)
    assert plain is not None and plain.phases == ["decode"]
    (decode,) = plain.seq_steps
    assert decode.num_tokens_after == 9 and decode.sampling == sampling
    assert len(decode.block_table) == 3  # 9 positions in blocks of 4

    ahead_scheduler, _, _ = prefilled(async_scheduling=True)
    ahead = ahead_scheduler.schedule_ahead(0.0)
    assert ahead is not None
    assert ahead.seq_steps == [replace(decode, token_ids=[PLACEHOLDER_TOKEN_ID])]

    run_scheduler, run_worker, prefill = prefilled(num_scheduler_steps=3)
    run_scheduler.on_step(prefill, run_worker.step(prefill.seq_steps).sampled, 0.0)
    first, second, third = run_scheduler.schedule_run(0.0)
    assert first.seq_steps == [decode]
    for later, position in ((second, 9), (third, 10)):
        (step_,) = later.seq_steps
        expected = replace(decode, token_ids=[PLACEHOLDER_TOKEN_ID], num_computed=position)
        assert step_ == expected  # the table already covers positions up to 11
