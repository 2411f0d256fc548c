"""The worker behind a server: `WorkerService` wraps the engine with its Step SERVER span (used by
the gRPC servicer and, directly, by the in-process placement); `WorkerServicer` only converts."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
import torch
from opentelemetry.trace import SpanKind, Status, StatusCode

from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc
from services.common import convert, spans
from services.common.channels import create_channel, transport_of
from services.common.identity import ServiceIdentity
from services.common.metrics import ServiceMetrics
from services.common.peer_auth import token_metadata
from services.common.threads import ENGINE_THREAD_NAME, KV_EXPORT_THREAD_NAME, name_os_thread
from services.common.tls import TlsMaterial
from services.common.types import (
    PLACEHOLDER_TOKEN_ID,
    BlockSwaps,
    ModelInfo,
    SeqStep,
    StepOutput,
)
from services.config import KV_TRANSPORTS, HopscopeConfig
from services.worker import kv_transfer
from services.worker.engine import Engine, StepError
from services.worker.profiling import ProfileBusyError, StepProfiler
from tracing import schema

log = logging.getLogger(__name__)
PROFILE_CHUNK_BYTES = 1 << 20


def _start_named_thread(os_name: str, num_threads: int | None) -> None:
    # named in the OS before any torch work: the OpenMP threads it starts inherit the name
    name_os_thread(os_name)
    if num_threads:  # OpenMP's thread count is per calling thread: set where the work runs
        torch.set_num_threads(num_threads)


def _one_thread(prefix: str, os_name: str, num_threads: int | None) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        max_workers=1,
        thread_name_prefix=prefix,
        initializer=_start_named_thread,
        initargs=(os_name, num_threads),
    )


def engine_executor(num_threads: int | None = None) -> ThreadPoolExecutor:
    """The one thread an engine is built on and every step of it runs on (num_threads: None or 0
    leaves torch's count; `auto` then adjusts it between steps: Engine.threads)."""
    return _one_thread("engine", ENGINE_THREAD_NAME, num_threads)


def kv_export_executor() -> ThreadPoolExecutor:
    """With `kv_export_thread`, the thread the KV hop's source-side gathers run on (caches in
    host memory): one single-threaded copy beside the engine thread (one OpenMP thread: no
    second team), so a PullKV does not wait for the step in progress (a 1024-token prefill held
    it ~1.1 s on 2 cores). It only reads blocks the scheduler holds for the handoff, which no
    step writes until the destination has them. Off by default: on shared cores the overlap
    slowed both workers more than the wait cost (benchmarks/README.md, disaggregation)."""
    return _one_thread("kv-export", KV_EXPORT_THREAD_NAME, 1)


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
        self._executor = executor or engine_executor(engine.config.engine_thread_count)
        self._observe_kv_blocks([])  # all free until the first step, not 0 free (looks full)
        # what the previous step sampled (seq_id -> token): fills async scheduling's placeholders
        self._last_sampled: dict[int, int] = {}
        self._kv_exporter = kv_transfer.KVExporter()  # one thread at a time: _kv_executor
        # kv_export_thread: a cache in host memory is read beside the steps; a device cache
        # always on the engine thread (its copies would land in a CUDA graph capture)
        beside = engine.config.kv_export_thread and engine.kv_cache.data.device.type == "cpu"
        self._kv_executor = kv_export_executor() if beside else self._executor

    @classmethod
    def load(
        cls,
        settings: HopscopeConfig,
        identity: ServiceIdentity,
        metrics: ServiceMetrics | None = None,
    ) -> WorkerService:
        """The engine built on the thread that will run its steps (blocks while it loads).

        Built on another thread (the loader), the engine ran its decode steps at ~0.6x the
        speed on 2 cores (benchmarks/README.md): each thread that starts OpenMP parallel
        regions gets its own team, and with more OpenMP threads than CPUs libgomp throttles
        the spin-wait of idle team threads, so every parallel region of a step paid a futex
        wake-up. One thread, one team."""
        executor = engine_executor(settings.worker.engine_thread_count)
        try:
            engine = executor.submit(Engine, settings).result()
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

    async def export_kv(
        self, blocks: list[int], transport: str = "grpc"
    ) -> tuple[int, list[bytes] | str]:
        """The raw bytes of `blocks` (kv_transfer's payload): its size and its chunks ("grpc")
        or the /dev/shm segment holding it ("shm"). Read between steps, or beside the step in
        progress (`kv_export_thread`, host cache: `kv_export_executor`)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._kv_executor, self._kv_exporter.export, self.engine.kv_cache, blocks, transport
        )

    async def import_kv(self, blocks: list[int], payload: bytes | bytearray) -> None:
        """Write a payload into `blocks`, between steps."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self._executor, kv_transfer.import_blocks, self.engine.kv_cache, blocks, payload
        )

    async def import_kv_shm(self, blocks: list[int], name: str) -> int:
        """Copy a /dev/shm segment into `blocks`, between steps; the segment is unlinked."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, kv_transfer.import_shm, self.engine.kv_cache, blocks, name
        )

    @property
    def kv_layout(self) -> pb.KVLayout:
        return kv_transfer.layout_of(self.engine.kv_cache)

    @property
    def engine_executor(self) -> ThreadPoolExecutor:
        """The one thread every step runs on (the profiler starts and stops there)."""
        return self._executor

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._kv_executor.shutdown(wait=False, cancel_futures=True)
        self.metrics.stop_server()


class WorkerServicer(pb_grpc.WorkerServicer):
    def __init__(
        self,
        service: WorkerService,
        transport: str,
        *,
        tls: TlsMaterial | None = None,
        internal_token: str = "",
    ) -> None:
        self.service = service
        self.transport = transport
        self.profiler = StepProfiler(service.engine, service.engine_executor)
        # ImportKV dials other workers as the scheduler does: same TLS material, same token
        self.kv_importer = KVImporter(service, tls=tls, internal_token=internal_token)

    async def PullKV(
        self, request: pb.PullKVRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.KVChunk]:
        """The source side of the KV hop: the named blocks' bytes (chunks, or one shm name)."""
        blocks = list(request.blocks)
        kv_transport = request.transport or "grpc"
        span = spans.start_kv_transfer_span(
            SpanKind.SERVER,
            self.transport,
            kv_transport,
            parent=request.trace_context,
            attributes={schema.NUM_BLOCKS: len(blocks), schema.REQUEST_ID: request.request_id},
        )
        try:
            layout = self.service.kv_layout
            try:
                if kv_transport not in KV_TRANSPORTS:
                    raise kv_transfer.KVBlocksError(
                        f"unknown KV transport {kv_transport!r}: grpc or shm"
                    )
                if request.HasField("expected_layout"):
                    kv_transfer.check_layout(request.expected_layout, layout, "the source worker")
                num_bytes, payload = await self.service.export_kv(blocks, kv_transport)
            except kv_transfer.KVBlocksError as exc:
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            span.set_attribute(schema.KV_BYTES, num_bytes)
            if isinstance(payload, str):  # shm: the segment's name
                # the destination unlinks it; this is for a destination that never did
                asyncio.get_running_loop().call_later(
                    kv_transfer.SHM_UNCLAIMED_S, kv_transfer.unlink_shm, payload
                )
                yield pb.KVChunk(layout=layout, total_bytes=num_bytes, shm_name=payload)
                return
            for i, chunk in enumerate(payload):
                first = i == 0
                yield pb.KVChunk(
                    layout=layout if first else None,
                    total_bytes=num_bytes if first else 0,
                    data=chunk,
                )
        finally:
            span.end()

    async def ImportKV(
        self, request: pb.ImportKVRequest, context: grpc.aio.ServicerContext
    ) -> pb.ImportKVResponse:
        """The destination side of the KV hop: pull from the source worker, write our blocks."""
        try:
            return await self.kv_importer.run(request, self.transport)
        except kv_transfer.KVBlocksError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except KVSourceUnavailableError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        raise AssertionError("unreachable")

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


class KVSourceUnavailableError(RuntimeError):
    """The source worker could not be reached, or its stream broke: recompute the prefill."""


class KVImporter:
    """ImportKV's client to source workers: one channel per source address, from the one channel
    factory (a Unix socket on one node, TCP with mutual TLS across; a relay's address, when the
    scheduler passes one, puts the transfer through the emulated link)."""

    def __init__(
        self, service: WorkerService, *, tls: TlsMaterial | None, internal_token: str
    ) -> None:
        self.service = service
        self._tls = tls
        self._metadata = token_metadata(internal_token)
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, address: str) -> pb_grpc.WorkerStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = create_channel(address, tls=self._tls)
        return pb_grpc.WorkerStub(channel)

    async def run(self, request: pb.ImportKVRequest, transport: str) -> pb.ImportKVResponse:
        source_blocks, dest_blocks = list(request.source_blocks), list(request.dest_blocks)
        kv_transport = request.transport or "grpc"
        if kv_transport not in KV_TRANSPORTS:
            raise kv_transfer.KVBlocksError(f"unknown KV transport {kv_transport!r}: grpc or shm")
        if len(source_blocks) != len(dest_blocks):
            raise kv_transfer.KVBlocksError(
                f"ImportKV: {len(source_blocks)} source blocks but {len(dest_blocks)} dest blocks"
            )
        if not request.source_address:
            raise kv_transfer.KVBlocksError("ImportKV: no source_address")
        if kv_transport == "shm" and not request.source_address.startswith("unix:"):
            raise kv_transfer.KVBlocksError(
                f"--kv-transport shm needs both workers on one node (a unix: address), got "
                f"{request.source_address}"
            )
        kv_transfer.check_blocks(self.service.engine.kv_cache, dest_blocks, "ImportKV dest_blocks")
        layout = self.service.kv_layout
        span = spans.start_kv_transfer_span(
            SpanKind.CLIENT,
            transport_of(request.source_address),
            kv_transport,
            parent=request.trace_context,
            attributes={
                schema.NUM_BLOCKS: len(source_blocks),
                schema.REQUEST_ID: request.request_id,
                schema.SERVER_ADDRESS: request.source_address,
            },
        )
        start = time.perf_counter()
        try:
            pull = pb.PullKVRequest(
                blocks=source_blocks,
                transport=kv_transport,
                trace_context=spans.carrier_of(span),
                request_id=request.request_id,
                expected_layout=layout,
            )
            payload = await self._pull(request.source_address, pull, layout)
            if isinstance(payload, str):  # a /dev/shm segment's name
                num_bytes = await self.service.import_kv_shm(dest_blocks, payload)
            else:
                await self.service.import_kv(dest_blocks, payload)
                num_bytes = len(payload)
            transfer_ms = (time.perf_counter() - start) * 1e3
            span.set_attribute(schema.KV_BYTES, num_bytes)
            return pb.ImportKVResponse(
                num_bytes=num_bytes,
                transfer_ms=transfer_ms,
                num_blocks=len(dest_blocks),
                transport=kv_transport,
            )
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise
        finally:
            span.end()

    async def _pull(
        self, address: str, request: pb.PullKVRequest, layout: pb.KVLayout
    ) -> bytearray | str:
        """The payload's bytes ("grpc"), or the name of the segment holding them ("shm")."""
        payload = bytearray()
        shm_name = ""
        try:
            async for chunk in self._stub(address).PullKV(
                request, metadata=self._metadata, timeout=KV_PULL_TIMEOUT_S
            ):
                if chunk.shm_name:
                    shm_name = kv_transfer.shm_path(chunk.shm_name) and chunk.shm_name
                if chunk.HasField("layout"):
                    kv_transfer.check_layout(layout, chunk.layout, f"source worker {address}")
                payload += chunk.data
        except grpc.aio.AioRpcError as exc:
            if shm_name:
                kv_transfer.unlink_shm(shm_name)
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise kv_transfer.KVBlocksError(
                    f"source worker {address}: {exc.details()}"
                ) from None
            raise KVSourceUnavailableError(
                f"KV source worker {address} failed: {exc.code().name}: {exc.details()}; "
                "recompute the prefill"
            ) from None
        except BaseException:
            if shm_name:  # e.g. a layout mismatch: the segment is ours to remove
                kv_transfer.unlink_shm(shm_name)
            raise
        return shm_name or payload


KV_PULL_TIMEOUT_S = 60.0
