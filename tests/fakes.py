"""Test fakes shared by the whole suite (the one place they live).

`FakeWorker` plays the model worker for the scheduler core: it keeps a fake KV cache whose slots
hold the tokens written into them, and derives each sampled token from the whole history it reads
back through the block table. A scheduler that gives one block to two live sequences, forgets a
slot, or feeds the wrong tokens therefore produces different tokens — and most such mistakes
raise `BlockTableError` on the spot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.common.types import (
    PLACEHOLDER_TOKEN_ID,
    BlockSwaps,
    ModelInfo,
    SamplingParams,
    SeqStep,
    StepOutput,
)
from services.scheduler.core import Request, Scheduler, Update

EOS_TOKEN_ID = 0


class BlockTableError(AssertionError):
    """The scheduler sent a step whose block tables break the KV-cache contract."""


def next_token(token_ids: list[int], seed: int = 0, vocab_size: int = 1000) -> int:
    """The fake model: a deterministic hash of every token so far (never EOS)."""
    digest = zlib.crc32(array("q", token_ids).tobytes(), seed & 0xFFFFFFFF)
    return 1 + digest % (vocab_size - 1)


def reference_output(
    prompt_token_ids: list[int],
    max_tokens: int,
    seed: int = 0,
    eos_at_length: int | None = None,
    vocab_size: int = 1000,
    ignore_eos: bool = False,
) -> list[int]:
    """What a request generates alone on an unconstrained FakeWorker."""
    tokens = list(prompt_token_ids)
    output: list[int] = []
    while len(output) < max_tokens:
        is_eos = eos_at_length is not None and len(tokens) == eos_at_length
        token = EOS_TOKEN_ID if is_eos else next_token(tokens, seed, vocab_size)
        output.append(token)
        tokens.append(token)
        if token == EOS_TOKEN_ID and not ignore_eos:
            break
    return output


@dataclass(slots=True)
class _Slot:
    seq_id: int
    position: int
    token: int


class FakeWorker:
    """Synchronous stand-in for the engine: `info`, `step(seq_steps) -> StepOutput`, `restart()`."""

    def __init__(
        self,
        num_blocks: int = 64,
        block_size: int = 4,
        max_context: int = 512,
        vocab_size: int = 1000,
        eos_at_length: int | None = None,
        num_swap_blocks: int = 0,
    ) -> None:
        self.num_blocks = num_blocks
        self.num_swap_blocks = num_swap_blocks
        self.block_size = block_size
        self.max_context = max_context
        self.vocab_size = vocab_size
        # the next token is EOS once a sequence holds this many tokens
        self.eos_at_length = eos_at_length
        self.num_steps = 0
        self.steps: list[list[SeqStep]] = []
        self._cache: list[list[_Slot | None]] = []
        self.restart()

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            name="fake",
            architecture="FakeForCausalLM",
            vocab_size=self.vocab_size,
            max_context=self.max_context,
            dtype="float32",
            device="cpu",
            num_blocks=self.num_blocks,
            block_size=self.block_size,
            eos_token_ids=[EOS_TOKEN_ID],
            num_swap_blocks=self.num_swap_blocks,
        )

    def restart(self) -> None:
        """Lose the whole KV cache, as a restarted worker process would."""
        self._cache = [[None] * self.block_size for _ in range(self.num_blocks)]
        self._host: list[list[_Slot | None]] = [
            [None] * self.block_size for _ in range(self.num_swap_blocks)
        ]
        self.num_swapped_blocks = 0
        self._last_sampled: dict[int, int] = {}

    def step(self, seq_steps: list[SeqStep], swaps: BlockSwaps | None = None) -> StepOutput:
        if swaps:  # out first (the device blocks may be reused by this step), then in
            for device, host in swaps.swap_out:
                self._host[host] = list(self._cache[device])
            for host, device in swaps.swap_in:
                self._cache[device] = list(self._host[host])
            self.num_swapped_blocks += len(swaps.swap_out)
        seq_steps = [self._fill_placeholder(s) for s in seq_steps]
        self._check_tables(seq_steps)
        for seq_step in seq_steps:
            self._write(seq_step)
        sampled = {
            s.seq_id: self._sample(s, s.sampling) for s in seq_steps if s.sampling is not None
        }
        self.num_steps += 1
        self.steps.append(seq_steps)
        self._last_sampled = sampled
        return StepOutput(sampled=sampled, step_ms=0.0)

    def _fill_placeholder(self, seq: SeqStep) -> SeqStep:
        """Async scheduling: the token this sequence sampled in the previous step."""
        if seq.token_ids != [PLACEHOLDER_TOKEN_ID]:
            return seq
        if seq.seq_id not in self._last_sampled:
            raise BlockTableError(f"sequence {seq.seq_id}: placeholder with no token sampled last")
        return dataclasses.replace(seq, token_ids=[self._last_sampled[seq.seq_id]])

    def _check_tables(self, seq_steps: list[SeqStep]) -> None:
        seq_ids = [s.seq_id for s in seq_steps]
        if len(set(seq_ids)) != len(seq_ids):
            raise BlockTableError(f"a sequence appears twice in one step: {seq_ids}")
        users: dict[int, set[int]] = {}  # block -> sequences whose table names it
        for s in seq_steps:
            if not s.token_ids:
                raise BlockTableError(f"sequence {s.seq_id} has no token to run")
            if len(s.block_table) * self.block_size < s.num_tokens_after:
                raise BlockTableError(
                    f"sequence {s.seq_id} needs {s.num_tokens_after} slots but its table "
                    f"{s.block_table} holds {len(s.block_table) * self.block_size}"
                )
            for block in s.block_table:
                if not 0 <= block < self.num_blocks:
                    raise BlockTableError(f"block {block} does not exist")
                users.setdefault(block, set()).add(s.seq_id)
        # a block may be shared (a cached prefix) only while nobody writes into it
        for s in seq_steps:
            written = {
                s.block_table[p // self.block_size]
                for p in range(s.num_computed, s.num_tokens_after)
            }
            for block in written:
                if len(users[block]) > 1:
                    raise BlockTableError(
                        f"sequence {s.seq_id} writes into block {block}, which sequences "
                        f"{sorted(users[block])} share"
                    )

    def _write(self, s: SeqStep) -> None:
        for offset, token in enumerate(s.token_ids):
            position = s.num_computed + offset
            block = s.block_table[position // self.block_size]
            self._cache[block][position % self.block_size] = _Slot(s.seq_id, position, token)

    def _read_history(self, s: SeqStep) -> list[int]:
        history = []
        for position in range(s.num_tokens_after):
            block = s.block_table[position // self.block_size]
            slot = self._cache[block][position % self.block_size]
            # a shared prefix block holds another sequence's slots: same position and token
            # (a wrong token changes the sampled one, which the tests compare)
            if slot is None or slot.position != position:
                raise BlockTableError(
                    f"sequence {s.seq_id} reads position {position} from block {block}, "
                    f"which holds {slot}: its KV was never computed or was overwritten"
                )
            history.append(slot.token)
        return history

    def _sample(self, s: SeqStep, sampling: SamplingParams) -> int:
        history = self._read_history(s)
        if self.eos_at_length is not None and len(history) == self.eos_at_length:
            return EOS_TOKEN_ID
        return next_token(history, sampling.seed, self.vocab_size)


@dataclass(slots=True)
class Outcome:
    """Everything the updates told about one request."""

    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = ""
    error: Exception | None = None
    num_updates: int = 0


def collect(outcomes: dict[str, Outcome], updates: list[Update]) -> None:
    """Fold scheduler Updates into per-request outcomes; a finished request gets no more."""
    for update in updates:
        outcome = outcomes.setdefault(update.request_id, Outcome())
        assert not outcome.finish_reason, f"update after finish for {update.request_id}"
        outcome.token_ids.extend(update.token_ids)
        outcome.finish_reason = update.finish_reason
        outcome.error = update.error
        outcome.num_updates += 1


def run_until_idle(
    scheduler: Scheduler,
    worker: FakeWorker,
    now_s: float = 0.0,
    dt_s: float = 0.001,
    max_steps: int = 100_000,
) -> dict[str, Outcome]:
    """Drive schedule -> step -> on_step until the scheduler holds nothing; returns outcomes."""
    outcomes: dict[str, Outcome] = {}
    for _ in range(max_steps):
        collect(outcomes, scheduler.expire(now_s))
        if not scheduler.has_unfinished:
            return outcomes
        batch = scheduler.schedule(now_s)
        now_s += dt_s  # static mode may be waiting for its timeout
        if batch is None:
            continue
        output = worker.step(batch.seq_steps, batch.swaps)
        collect(outcomes, scheduler.on_step(batch, output.sampled, now_s))
    raise AssertionError(f"scheduler still busy after {max_steps} steps")


def make_prompt(index: int, num_tokens: int) -> list[int]:
    """A distinct, deterministic prompt of `num_tokens` non-EOS tokens."""
    return [1 + (index * 7919 + i * 104729) % 997 for i in range(num_tokens)]


def make_request(
    index: int, num_prompt_tokens: int = 8, max_tokens: int = 4, **fields: object
) -> Request:
    """Request `r{index}` with a distinct prompt; extra fields go to the Request as given."""
    return Request(
        f"r{index}",
        make_prompt(index, num_prompt_tokens),
        max_tokens,
        **fields,  # type: ignore[arg-type]
    )


class FakeWorkerClient:
    """The scheduler runner's WorkerClient over a FakeWorker, with faults to inject:
    `fail_steps` raises the given exceptions on the next steps, `num_failed_connects` makes
    that many reconnects fail (the worker is still down), `num_hung_steps` makes that many steps
    never answer (a stuck worker), and a lost worker loses its cache."""

    transport = "inproc"
    address = "fake"
    is_connected = True

    def __init__(self, worker: FakeWorker) -> None:
        self.worker = worker
        self.step_delay_s = 0.0  # each step takes this long (requests stay in flight a while)
        self.fail_steps: list[Exception] = []
        self.num_failed_connects = 0
        self.num_hung_steps = 0
        self.num_connects = 0

    async def connect(self, timeout_s: float) -> object:
        from protos import hopscope_pb2 as pb
        from services.common import convert
        from services.common.errors import UnavailableError

        if self.num_connects > 0 and self.num_failed_connects > 0:
            self.num_failed_connects -= 1
            raise UnavailableError("fake worker is down")
        self.num_connects += 1
        info = self.worker.info
        return pb.WorkerInfo(
            model=convert.model_info_to_pb(info),
            eos_token_ids=info.eos_token_ids,
            instance_id=str(self.num_connects),
        )

    async def step(
        self,
        seqs: list[SeqStep],
        carrier: object,
        swaps: BlockSwaps | None = None,
        later: Sequence[list[SeqStep]] = (),
    ) -> StepOutput:
        from services.common.errors import UnavailableError

        if self.step_delay_s:
            await asyncio.sleep(self.step_delay_s)
        if self.fail_steps:
            error = self.fail_steps.pop(0)
            if isinstance(error, UnavailableError):
                self.worker.restart()
            raise error
        if self.num_hung_steps > 0:
            self.num_hung_steps -= 1
            self.worker.restart()  # whatever it held is gone with the step that never ends
            await asyncio.Event().wait()
        out = self.worker.step(seqs, swaps)
        out.later_sampled = [self.worker.step(each).sampled for each in later]
        return out

    def watch(self, on_lost: object) -> None:
        return None

    async def close(self) -> None:
        return None


class FakeWorkerServicer:
    """`hopscope.v1.Worker` over a FakeWorker, served by the real server bootstrap: the
    scheduler's real gRPC worker client talks to it. `kill_streams()` ends every open Step stream
    from the server side with UNAVAILABLE (as a GOAWAY or a proxy would), without a step in
    flight; `restart()` also loses the fake KV cache."""

    def __init__(self, worker: FakeWorker) -> None:

        self.worker = worker
        self.instance_id = "fake-1"
        self.pid = 12345  # the pid Describe reports for it
        self.num_streams = 0
        self.step_delay_s = 0.0  # each message's time on the "device"
        self._kill = asyncio.Event()

    def register(self, server: object) -> list[str]:
        from protos import hopscope_pb2_grpc as pb_grpc

        pb_grpc.add_WorkerServicer_to_server(self, server)  # type: ignore[arg-type]
        return ["hopscope.v1.Worker"]

    def kill_streams(self) -> None:

        self._kill.set()
        self._kill = asyncio.Event()

    async def Info(self, request: object, context: object) -> object:
        from protos import hopscope_pb2 as pb
        from services.common import convert

        info = self.worker.info
        return pb.WorkerInfo(
            model=convert.model_info_to_pb(info),
            eos_token_ids=info.eos_token_ids,
            instance_id=self.instance_id,
            service=pb.ServiceInfo(name="worker", pid=self.pid, address="fake"),
        )

    async def Profile(self, request: object, context: object) -> object:
        """A fake worker has no engine to profile (`hopscope profile` is tested on a real one)."""
        import grpc

        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the fake worker has no profiler")  # type: ignore[attr-defined]

    async def PullKV(self, request: object, context: object) -> object:
        """The KV hop is tested between real workers (tests/integration/test_kv_transfer.py)."""
        import grpc

        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the fake worker has no KV cache")  # type: ignore[attr-defined]

    async def ImportKV(self, request: object, context: object) -> object:
        import grpc

        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the fake worker has no KV cache")  # type: ignore[attr-defined]

    async def Step(self, request_iterator: object, context: object) -> object:

        import grpc

        from services.common import convert

        self.num_streams += 1
        kill = asyncio.ensure_future(self._kill.wait())
        requests = request_iterator.__aiter__()  # type: ignore[attr-defined]
        decoder = convert.StepDecoder()
        try:
            while True:
                next_request = asyncio.ensure_future(requests.__anext__())
                await asyncio.wait({next_request, kill}, return_when=asyncio.FIRST_COMPLETED)
                if not next_request.done():
                    next_request.cancel()
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "stream killed")  # type: ignore[attr-defined]
                if isinstance(next_request.exception(), StopAsyncIteration):
                    return
                request = next_request.result()
                seqs, *later = decoder.decode(request)
                if self.step_delay_s:
                    await asyncio.sleep(self.step_delay_s)
                out = self.worker.step(seqs)
                out.later_sampled = [self.worker.step(each).sampled for each in later]
                yield convert.step_output_to_pb(request.step_id, out)
        finally:
            kill.cancel()
