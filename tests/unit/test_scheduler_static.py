"""Static batching: wait for a full batch (or the timeout), then run it to the end."""

from services.config import SchedulerSettings
from services.scheduler.core import Scheduler
from tests.fakes import FakeWorker, make_request, reference_output, run_until_idle


def make_static(worker: FakeWorker, max_num_seqs: int = 4) -> Scheduler:
    config = SchedulerSettings(
        batching="static", max_num_seqs=max_num_seqs, static_batch_timeout_s=0.05
    )
    return Scheduler(config, worker.info)


def test_waits_for_a_full_batch_then_starts_it_at_once() -> None:
    worker = FakeWorker()
    scheduler = make_static(worker)
    for i in range(3):
        scheduler.add(make_request(i, arrival_s=0.0))
    assert scheduler.schedule(0.01) is None
    assert abs(scheduler.time_until_static_batch(0.01) - 0.04) < 1e-9
    scheduler.add(make_request(3, arrival_s=0.01))
    assert scheduler.time_until_static_batch(0.01) == 0.0
    batch = scheduler.schedule(0.01)
    assert batch.request_ids == ["r0", "r1", "r2", "r3"]
    assert batch.phases == ["prefill"] * 4


def test_runs_a_partial_batch_after_the_timeout_since_the_oldest_arrival() -> None:
    worker = FakeWorker()
    scheduler = make_static(worker)
    scheduler.add(make_request(0, arrival_s=1.0))
    scheduler.add(make_request(1, arrival_s=1.03))
    assert scheduler.schedule(1.049) is None
    batch = scheduler.schedule(1.05)
    assert batch.request_ids == ["r0", "r1"]
    assert scheduler.time_until_static_batch(1.05) is None  # a batch is in progress


def test_admits_nothing_until_every_sequence_of_the_batch_has_finished() -> None:
    worker = FakeWorker()
    scheduler = make_static(worker, max_num_seqs=2)
    scheduler.add(make_request(0, 8, max_tokens=2))
    scheduler.add(make_request(1, 8, max_tokens=6))
    scheduler.add(make_request(2, 8, max_tokens=2))
    seen = []
    now_s = 0.0
    while scheduler.has_unfinished:
        batch = scheduler.schedule(now_s)
        now_s += 0.01
        if batch is None:
            continue
        seen.append(batch.request_ids)
        scheduler.on_step(batch, worker.step(batch.seq_steps).sampled, now_s)
        if len(seen) == 2:
            scheduler.add(make_request(3, 8, max_tokens=2, arrival_s=now_s))
    first_batch_steps = 6  # r1's six tokens
    assert all(set(ids) <= {"r0", "r1"} for ids in seen[:first_batch_steps])
    assert seen[first_batch_steps - 1] == ["r1"]  # r0 finished; r2 still kept out
    assert seen[first_batch_steps] == ["r2", "r3"]


def test_static_batches_give_the_same_tokens_as_continuous_ones() -> None:
    requests = [make_request(i, 5 + i % 3, 3 + i % 4, arrival_s=0.0) for i in range(10)]
    worker = FakeWorker(num_blocks=10, block_size=4)
    scheduler = make_static(worker)
    for req in requests:
        scheduler.add(req)
    outcomes = run_until_idle(scheduler, worker)
    for req in requests:
        assert outcomes[req.request_id].token_ids == reference_output(
            req.prompt_token_ids, req.max_tokens
        )
    assert scheduler.num_free_blocks == 10
