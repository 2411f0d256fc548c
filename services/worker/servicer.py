"""The worker behind a server: `WorkerService` wraps the engine with its Step SERVER span (used by
the gRPC servicer and, directly, by the in-process placement); `WorkerServicer` only converts."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
import torch
from opentelemetry.trace import SpanKind, Status, StatusCode

from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc
from services.common import convert, spans
from services.common.identity import ServiceIdentity
from services.common.metrics import ServiceMetrics
from services.common.threads import ENGINE_THREAD_NAME, name_os_thread
from services.common.types import (
    PLACEHOLDER_TOKEN_ID,
    BlockSwaps,
    ModelInfo,
    SeqStep,
    StepOutput,
)
from services.worker.config import WorkerConfig
from services.worker.engine import Engine, StepError
from services.worker.profiling import ProfileBusyError, StepProfiler
from tracing import schema

log = logging.getLogger(__name__)
PROFILE_CHUNK_BYTES = 1 << 20


def _start_engine_thread(num_threads: int) -> None:
    # named in the OS before any torch work: the OpenMP threads it starts inherit the name
    name_os_thread(ENGINE_THREAD_NAME)
    if num_threads:  # OpenMP's thread count is per calling thread: set where the steps run
        torch.set_num_threads(num_threads)


def engine_executor(num_threads: int = 0) -> ThreadPoolExecutor:
    """The one thread an engine is built on and every step of it runs on."""
    return ThreadPoolExecutor(
        max_workers=1,
        thread_name_prefix="engine",
        initializer=_start_engine_thread,
        initargs=(num_threads,),
    )


class WorkerService:
    """Runs one step at a time on a dedicated thread so the event loop stays responsive."""

    def __init__(
        self,
        engine: Engine,
        identity: ServiceIdentity,
        metrics: ServiceMetrics | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.engine = engine
        self.identity = identity
        self.metrics = metrics or ServiceMetrics("worker")
        self.instance_id = uuid.uuid4().hex
        self._executor = executor or engine_executor(engine.config.num_threads)
        self._observe_kv_blocks([])  # all free until the first step, not 0 free (looks full)
        # what the previous step sampled (seq_id -> token): fills async scheduling's placeholders
        self._last_sampled: dict[int, int] = {}

    @classmethod
    def load(
        cls, config: WorkerConfig, identity: ServiceIdentity, metrics: ServiceMetrics | None = None
    ) -> WorkerService:
        """The engine built on the thread that will run its steps (blocks while it loads).

        Built on another thread (the loader), the engine ran its decode steps at ~0.6x the
        speed on 2 cores (benchmarks/README.md): each thread that starts OpenMP parallel
        regions gets its own team, and with more OpenMP threads than CPUs libgomp throttles
        the spin-wait of idle team threads, so every parallel region of a step paid a futex
        wake-up. One thread, one team."""
        executor = engine_executor(config.num_threads)
        try:
            engine = executor.submit(Engine, config).result()
        except BaseException:
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        return cls(engine, identity, metrics, executor)

    @property
    def info(self) -> ModelInfo:
        return self.engine.info

    async def step(
        self,
        seqs: list[SeqStep],
        carrier: Mapping[str, str],
        transport: str,
        swaps: BlockSwaps | None = None,
        later: Sequence[list[SeqStep]] = (),
    ) -> StepOutput:
        """Run `seqs`, then each decode step of `later` (multi-step) on the same thread call."""
        attributes: dict[str, int] = {schema.BATCH_SIZE: len(seqs)}
        if later:
            attributes[schema.NUM_STEPS] = 1 + len(later)
        span = spans.start_rpc_span(
            schema.STEP_RPC, SpanKind.SERVER, transport, parent=carrier, attributes=attributes
        )
        try:
            loop = asyncio.get_running_loop()
            # steps run one after another on the engine thread, in the order they arrive
            out = await loop.run_in_executor(self._executor, self._run_steps, seqs, swaps, later)
            # before end(): attributes set on an ended span are dropped, never exported
            span.set_attribute(schema.STEP_MS, out.step_ms)
            span.set_attribute(schema.DEVICE_MS, out.device_ms)
            if swaps:
                span.set_attribute(schema.SWAP_MS, out.swap_ms)
                spans.record_swap_span(
                    span, out.swap_start_ns, out.swap_ms, len(swaps.swap_out), len(swaps.swap_in)
                )
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise
        finally:
            span.end()
        self.metrics.observe_step(batch_size=len(seqs), step_ms=out.step_ms)
        self._observe_kv_blocks([*seqs, *(later[-1] if later else [])])
        return out

    def _run_steps(
        self, seqs: list[SeqStep], swaps: BlockSwaps | None, later: Sequence[list[SeqStep]]
    ) -> StepOutput:
        out = self._run_step(seqs, swaps)
        for each in later:
            after = self._run_step(each, None)
            out.later_sampled.append(after.sampled)
            out.step_ms += after.step_ms
            out.device_ms += after.device_ms
        return out

    def _run_step(self, seqs: list[SeqStep], swaps: BlockSwaps | None) -> StepOutput:
        """On the engine thread: fill placeholders from the previous step, then run."""
        try:
            out = self.engine.step(self._fill_placeholders(seqs), swaps)
        except Exception:
            self._last_sampled = {}  # a step built on this one's tokens must fail, not guess
            raise
        self._last_sampled = out.sampled
        return out

    def _fill_placeholders(self, seqs: list[SeqStep]) -> list[SeqStep]:
        filled = []
        for seq in seqs:
            if seq.token_ids == [PLACEHOLDER_TOKEN_ID]:
                token = self._last_sampled.get(seq.seq_id)
                if token is None:
                    raise StepError(
                        f"sequence {seq.seq_id}: a placeholder token but the previous step "
                        "sampled none for it (async scheduling out of order?)"
                    )
                seq = dataclasses.replace(seq, token_ids=[token])
            filled.append(seq)
        return filled

    def _observe_kv_blocks(self, seqs: list[SeqStep]) -> None:
        """Blocks the step's sequences hold (the scheduler sends every running sequence's table
        each step), so used + free = the cache's total, as the scheduler counts them."""
        num_used = len({block for seq in seqs for block in seq.block_table})
        num_total = self.engine.info.num_blocks
        self.metrics.set_kv_blocks(num_used=num_used, num_free=num_total - num_used)

    def info_pb(self) -> pb.WorkerInfo:
        info = self.engine.info
        return pb.WorkerInfo(
            model=convert.model_info_to_pb(info),
            eos_token_ids=info.eos_token_ids,
            instance_id=self.instance_id,
            service=convert.identity_to_pb(self.identity),
        )

    @property
    def engine_executor(self) -> ThreadPoolExecutor:
        """The one thread every step runs on (the profiler starts and stops there)."""
        return self._executor

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.metrics.stop_server()


class WorkerServicer(pb_grpc.WorkerServicer):
    def __init__(self, service: WorkerService, transport: str) -> None:
        self.service = service
        self.transport = transport
        self.profiler = StepProfiler(service.engine, service.engine_executor)

    async def Info(
        self, request: pb.InfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.WorkerInfo:
        return self.service.info_pb()

    async def Step(
        self, request_iterator: AsyncIterator[pb.StepRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StepResponse]:
        """One message per step each way, answered in order. With async scheduling the next
        step is already waiting in the stream: it starts as soon as this reply is sent."""
        decoder = convert.StepDecoder()  # per stream: the delta encoding's tables
        async for request in request_iterator:
            # a message that does not decode ends the stream (the scheduler reconnects and
            # recomputes): the tables of both ends no longer agree
            seqs, *later = decoder.decode(request)
            swaps = convert.swaps_from_pb(request)
            try:
                out = await self.service.step(
                    seqs, request.trace_context, self.transport, swaps, later
                )
            except Exception as exc:
                log.exception("step %d failed", request.step_id)
                yield pb.StepResponse(step_id=request.step_id, error=f"{type(exc).__name__}: {exc}")
                continue
            yield convert.step_output_to_pb(request.step_id, out)

    async def Profile(
        self, request: pb.ProfileRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ProfileResponse]:
        """torch.profiler over the steps of the next `seconds` (`hopscope profile`), in chunks."""
        try:
            trace_gz = await self.profiler.record(request.seconds)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except ProfileBusyError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        device = self.service.info.device
        for offset in range(0, max(1, len(trace_gz)), PROFILE_CHUNK_BYTES):
            yield pb.ProfileResponse(
                chrome_trace_gz=trace_gz[offset : offset + PROFILE_CHUNK_BYTES],
                num_steps=self.profiler.num_steps,
                device=device,
            )
