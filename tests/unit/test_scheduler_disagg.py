"""The scheduler core's side of prefill/decode disaggregation, driven by two FakeWorkers: a
prefill core (`hands_off`) whose finished prompts leave through `take_handoffs`, and a decode
core that takes them (`add_prefilled`), gets blocks (`start_imports`) and decodes once their KV
is copied in (`finish_import`). Seeded tokens must equal a single mixed core's; nothing leaks."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.types import SamplingParams
from services.config import SchedulerSettings
from services.scheduler.core import Scheduler
from tests.fakes import FakeWorker, Outcome, collect, make_request, reference_output


def copy_blocks(source: FakeWorker, dest: FakeWorker, src: list[int], dst: list[int]) -> None:
    """What Worker.ImportKV does: the source blocks' contents, in order, into the dest blocks."""
    assert len(src) == len(dst)
    for s, d in zip(src, dst, strict=True):
        dest._cache[d] = list(source._cache[s])


@dataclass
class Pair:
    """One prefill and one decode core with their fake workers, stepped in turn."""

    prefill_worker: FakeWorker = field(default_factory=FakeWorker)
    decode_worker: FakeWorker = field(default_factory=FakeWorker)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    fail_imports: bool = False

    def __post_init__(self) -> None:
        self.prefill = Scheduler(SchedulerSettings(), self.prefill_worker.info)
        self.prefill.hands_off = True
        self.decode = Scheduler(SchedulerSettings(), self.decode_worker.info)
        self.handed: dict[str, list[int]] = {}  # request id -> prefill blocks not yet imported
        self.num_handoffs = 0

    def step(self, core: Scheduler, worker: FakeWorker) -> None:
        batch = core.schedule(0.0)
        if batch is not None:
            collect(self.outcomes, core.on_step(batch, worker.step(batch.seq_steps).sampled, 0.0))

    def hand_over(self, requests: dict[str, object]) -> None:
        for rid, blocks in self.prefill.take_handoffs():
            self.decode.add_prefilled(requests[rid])  # type: ignore[arg-type]
            self.handed[rid] = blocks
            self.num_handoffs += 1

    def import_started(self) -> None:
        for rid, _seq_id, dest_blocks in self.decode.start_imports():
            source_blocks = self.handed.pop(rid)
            ok = not self.fail_imports
            if ok:
                copy_blocks(self.prefill_worker, self.decode_worker, source_blocks, dest_blocks)
            ok = self.prefill.release_handoff(rid) and ok
            self.decode.finish_import(rid, ok)

    def run(self, requests: list, max_rounds: int = 10_000) -> None:
        by_id = {r.request_id: r for r in requests}
        for req in requests:
            self.prefill.add(req)
        for _ in range(max_rounds):
            if not (self.prefill.has_unfinished or self.decode.has_unfinished):
                return
            self.step(self.prefill, self.prefill_worker)
            self.hand_over(by_id)
            self.import_started()
            self.step(self.decode, self.decode_worker)
        raise AssertionError("the pair is still busy")


def seeded(n: int, prompt: int = 10, max_tokens: int = 9) -> list:
    return [
        make_request(i, prompt + i, max_tokens, sampling=SamplingParams(seed=i)) for i in range(n)
    ]


def assert_reference_tokens(requests: list, outcomes: dict[str, Outcome]) -> None:
    for req in requests:
        expected = reference_output(req.prompt_token_ids, req.max_tokens, seed=req.sampling.seed)
        assert outcomes[req.request_id].token_ids == expected, req.request_id
        assert outcomes[req.request_id].finish_reason == "length"


def test_prefilled_requests_decode_on_the_other_core_with_the_tokens_of_one_core() -> None:
    requests = seeded(6)
    pair = Pair()
    pair.run(requests)
    assert_reference_tokens(requests, pair.outcomes)
    assert pair.num_handoffs == 6
    # the prefill worker ran the prompts and nothing else; the decode worker one token a step
    prefill_tokens = sum(len(s.token_ids) for st in pair.prefill_worker.steps for s in st)
    assert prefill_tokens == sum(r.num_prompt_tokens for r in requests)
    assert all(len(s.token_ids) == 1 for st in pair.decode_worker.steps for s in st)
    assert pair.prefill.num_free_blocks == pair.prefill_worker.num_blocks
    assert pair.decode.num_free_blocks == pair.decode_worker.num_blocks
    assert pair.decode.num_importing == 0


def test_a_failed_transfer_recomputes_on_the_decode_core_with_the_same_tokens() -> None:
    requests = seeded(4)
    pair = Pair(fail_imports=True)
    pair.run(requests)
    assert_reference_tokens(requests, pair.outcomes)
    assert pair.prefill.num_free_blocks == pair.prefill_worker.num_blocks
    assert pair.decode.num_free_blocks == pair.decode_worker.num_blocks


def test_a_request_done_in_its_prompt_step_is_never_handed_off() -> None:
    requests = seeded(3, max_tokens=1)
    pair = Pair()
    pair.run(requests)
    assert_reference_tokens(requests, pair.outcomes)
    assert pair.num_handoffs == 0
    assert pair.decode_worker.num_steps == 0


def test_prefill_worker_lost_before_the_transfer_recomputes_and_loses_nothing() -> None:
    requests = seeded(3)
    pair = Pair()
    by_id = {r.request_id: r for r in requests}
    for req in requests:
        pair.prefill.add(req)
    pair.step(pair.prefill, pair.prefill_worker)
    pair.hand_over(by_id)
    assert pair.handed, "the first step finished some prompts"
    pair.prefill_worker.restart()
    pair.prefill.on_worker_lost()  # what it held for the decode side is gone
    assert all(not pair.prefill.release_handoff(rid) for rid in list(pair.handed))
    for rid, _seq_id, _dest in pair.decode.start_imports():
        pair.handed.pop(rid)
        pair.decode.finish_import(rid, ok=False)  # ImportKV failed: recompute here
    for _ in range(1000):
        if not (pair.prefill.has_unfinished or pair.decode.has_unfinished):
            break
        pair.step(pair.prefill, pair.prefill_worker)
        pair.hand_over(by_id)
        pair.import_started()
        pair.step(pair.decode, pair.decode_worker)
    assert_reference_tokens(requests, pair.outcomes)
    assert pair.prefill.num_free_blocks == pair.prefill_worker.num_blocks
    assert pair.decode.num_free_blocks == pair.decode_worker.num_blocks


def test_decode_worker_lost_recomputes_imported_and_importing_requests() -> None:
    requests = seeded(4, max_tokens=12)
    pair = Pair()
    by_id = {r.request_id: r for r in requests}
    for req in requests:
        pair.prefill.add(req)
    for _ in range(3):
        pair.step(pair.prefill, pair.prefill_worker)
        pair.hand_over(by_id)
        pair.import_started()
        pair.step(pair.decode, pair.decode_worker)
    pair.decode_worker.restart()
    pair.decode.on_worker_lost()
    assert pair.decode.num_importing == 0 and pair.decode.num_running == 0
    assert pair.decode.num_free_blocks == pair.decode_worker.num_blocks
    pair.run([])
    assert_reference_tokens(requests, pair.outcomes)


def test_abort_of_a_handed_off_request_frees_both_sides() -> None:
    requests = seeded(2)
    pair = Pair()
    by_id = {r.request_id: r for r in requests}
    for req in requests:
        pair.prefill.add(req)
    pair.step(pair.prefill, pair.prefill_worker)
    pair.hand_over(by_id)
    rid = next(iter(pair.handed))
    assert pair.prefill.num_free_blocks < pair.prefill_worker.num_blocks  # held for the decode side
    assert pair.decode.abort(rid) is not None  # the caller went away while it waited for blocks
    assert pair.prefill.release_handoff(rid)
    pair.handed.pop(rid)
    pair.run([])
    assert rid not in pair.outcomes or pair.outcomes[rid].finish_reason in ("", "abort")
    assert pair.prefill.num_free_blocks == pair.prefill_worker.num_blocks
    assert pair.decode.num_free_blocks == pair.decode_worker.num_blocks
    assert not pair.decode.has_unfinished and not pair.prefill.has_unfinished


def test_imports_wait_for_room_in_the_decode_cache() -> None:
    # a decode cache of 12 blocks of 4: room for two of these requests at a time
    requests = seeded(5, prompt=14, max_tokens=8)
    pair = Pair(decode_worker=FakeWorker(num_blocks=12))
    pair.run(requests)
    assert_reference_tokens(requests, pair.outcomes)
    assert pair.decode.num_free_blocks == 12
