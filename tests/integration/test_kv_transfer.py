"""The KV hop between two real worker servers (gRPC over Unix sockets): a prompt's blocks
prefilled on worker A, pulled by worker B (Worker.ImportKV -> Worker.PullKV), then B decodes the
same tokens A does; bytes equal; shm segments gone; bad blocks INVALID_ARGUMENT; a dead source
UNAVAILABLE."""

from __future__ import annotations

import asyncio
import glob
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from services.common.channels import create_channel
from services.common.errors import InvalidArgumentError, UnavailableError
from services.common.types import SamplingParams, SeqStep
from services.config import HopscopeConfig
from services.scheduler.kv_client import import_kv
from services.worker.kv_transfer import SHM_DIR, SHM_PREFIX
from services.worker.server import WorkerServer, start_worker
from services.worker.service_config import WorkerServiceConfig

PROMPT = [(37 * j) % 3000 + 5 for j in range(40)]  # 3 blocks of 16 (the last partial)
NUM_DECODE = 6


def _segments() -> set[str]:
    return set(glob.glob(os.path.join(SHM_DIR, SHM_PREFIX + f"{os.getpid()}-*")))


async def _start(
    path: str, model: str, kv_export_thread: bool = False, **service: str
) -> WorkerServer:
    settings = HopscopeConfig.of(
        model=model, kv_cache_mb=8, kernels="torch", kv_export_thread=kv_export_thread, **service
    )
    listen = path if ":" in path else f"unix:{path}"
    return await start_worker(WorkerServiceConfig(settings=settings, listen=listen))


async def _decode(
    worker: WorkerServer, seq_id: int, blocks: list[int], first: int, sampling: SamplingParams
) -> list[int]:
    tokens, last = [], first
    for i in range(NUM_DECODE):
        step = SeqStep(seq_id, [last], len(PROMPT) + i, blocks, sampling)
        out = await worker.service.step([step], {}, "uds")
        last = out.sampled[seq_id]
        tokens.append(last)
    return tokens


@asynccontextmanager
async def _workers(model: str = "tiny") -> AsyncIterator[tuple[WorkerServer, WorkerServer]]:
    with tempfile.TemporaryDirectory(prefix="hs-kv-") as tmp:
        a = await _start(os.path.join(tmp, "a.sock"), model)
        b = await _start(os.path.join(tmp, "b.sock"), model)
        try:
            yield a, b
        finally:
            await a.stop(0)
            await b.stop(0)


def _run(body: Callable[[WorkerServer, WorkerServer], Awaitable[None]]) -> None:
    async def scenario() -> None:
        async with _workers() as (a, b):
            await body(a, b)

    asyncio.run(scenario())


@pytest.mark.parametrize("transport", ["grpc", "shm"])
def test_blocks_moved_decode_the_same_tokens(transport: str) -> None:
    _run(lambda a, b: _moved_blocks_decode_alike(a, b, transport))


async def _moved_blocks_decode_alike(a: WorkerServer, b: WorkerServer, transport: str) -> None:
    src, dst = [0, 1, 2], [7, 3, 9]
    cases = {1: SamplingParams(), 2: SamplingParams(temperature=0.9, top_p=0.95, seed=11)}
    before = _segments()
    channel = create_channel(b.address)
    try:
        for seq_id, sampling in cases.items():
            prefill = SeqStep(seq_id, PROMPT, 0, src, sampling)
            first = (await a.service.step([prefill], {}, "uds")).sampled[seq_id]
            result = await import_kv(channel, a.address, src, dst, transport, {})
            assert result.num_blocks == 3 and result.transport == transport
            assert result.num_bytes == 3 * a.service.kv_layout.block_bytes > 0
            assert result.transfer_ms > 0
            assert await a.service.export_kv(src) == await b.service.export_kv(dst)
            on_b = await _decode(b, seq_id, dst + [10], first, sampling)
            on_a = await _decode(a, seq_id, src + [3], first, sampling)
            assert on_b == on_a
    finally:
        await channel.close()
    assert _segments() == before  # every shm segment unlinked


@pytest.mark.parametrize("transport", ["grpc", "shm"])
def test_with_kv_export_thread_a_pull_does_not_wait_for_the_step_in_progress(
    transport: str,
) -> None:
    """The prefill worker's engine thread is busy (a long prefill, here held by an event). With
    `kv_export_thread` the KV hop completes meanwhile (its gather reads the held blocks on a
    thread of its own); by default it waits for the step to end."""

    async def scenario() -> None:
        with tempfile.TemporaryDirectory(prefix="hs-kv-") as tmp:
            a = await _start(os.path.join(tmp, "a.sock"), "tiny", kv_export_thread=True)
            b = await _start(os.path.join(tmp, "b.sock"), "tiny")
            c = await _start(os.path.join(tmp, "c.sock"), "tiny")  # the default
            try:
                await _pull_beside_a_busy_engine(a, b, transport, is_beside=True)
                await _pull_beside_a_busy_engine(c, b, transport, is_beside=False)
            finally:
                for worker in (a, b, c):
                    await worker.stop(0)

    asyncio.run(scenario())


async def _pull_beside_a_busy_engine(
    a: WorkerServer, b: WorkerServer, transport: str, is_beside: bool
) -> None:
    src, dst = [0, 1, 2], [4, 5, 6]
    await a.service.step([SeqStep(1, PROMPT, 0, src, SamplingParams())], {}, "uds")
    release = threading.Event()
    busy = a.service.engine_executor.submit(release.wait, 30)  # the step in progress
    channel = create_channel(b.address)
    try:
        pull = asyncio.ensure_future(import_kv(channel, a.address, src, dst, transport, {}))
        done, _ = await asyncio.wait([pull], timeout=10 if is_beside else 1.0)
        assert bool(done) is is_beside  # beside: done while the engine thread is still busy
        assert not busy.done()
        release.set()
        result = await asyncio.wait_for(pull, 10)
        assert result.num_bytes == 3 * a.service.kv_layout.block_bytes
    finally:
        release.set()
        await channel.close()
    assert await a.service.export_kv(src) == await b.service.export_kv(dst)


def test_bad_blocks_are_invalid_argument() -> None:
    _run(_bad_blocks)


async def _bad_blocks(a: WorkerServer, b: WorkerServer) -> None:
    channel = create_channel(b.address)
    try:
        with pytest.raises(InvalidArgumentError, match="outside this worker's cache"):
            await import_kv(channel, a.address, [0, 99999], [1, 2], "grpc", {})
        with pytest.raises(InvalidArgumentError, match="outside this worker's cache"):
            await import_kv(channel, a.address, [0], [-1], "grpc", {})
        with pytest.raises(InvalidArgumentError, match="2 source blocks but 1 dest"):
            await import_kv(channel, a.address, [0, 1], [1], "grpc", {})
        with pytest.raises(InvalidArgumentError, match="one node"):
            await import_kv(channel, "127.0.0.1:1", [0], [1], "shm", {})
    finally:
        await channel.close()


def test_dead_source_is_unavailable() -> None:
    _run(_dead_source)


async def _dead_source(a: WorkerServer, b: WorkerServer) -> None:
    dead = a.address
    await a.stop(0)
    channel = create_channel(b.address)
    try:
        with pytest.raises(UnavailableError, match="recompute the prefill"):
            await asyncio.wait_for(import_kv(channel, dead, [0], [1], "grpc", {}), 30)
    finally:
        await channel.close()


def test_transfer_spans_pair_up_in_the_callers_trace() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from services.common import spans
    from tracing import schema
    from tracing.setup import configure_tracing

    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.add_span_processor(processor)
    else:
        configure_tracing("hopscope-test", extra_processors=[processor])

    async def body(a: WorkerServer, b: WorkerServer) -> None:
        prefill = SeqStep(1, PROMPT, 0, [0, 1, 2], SamplingParams())
        await a.service.step([prefill], {}, "uds")
        parent = trace.get_tracer("test").start_span("scheduler.handoff")
        channel = create_channel(b.address)
        try:
            result = await import_kv(
                channel,
                a.address,
                [0, 1, 2],
                [4, 5, 6],
                "grpc",
                spans.carrier_of(parent),
                request_id="req-kv",
            )
        finally:
            parent.end()
            await channel.close()
        kv = [s for s in exporter.get_finished_spans() if s.name == schema.KV_TRANSFER]
        by_kind = {s.kind: s for s in kv}
        client, server = by_kind[SpanKind.CLIENT], by_kind[SpanKind.SERVER]
        assert len(kv) == 2
        assert (
            client.context.trace_id == server.context.trace_id == parent.get_span_context().trace_id
        )
        assert (
            client.parent is not None and client.parent.span_id == parent.get_span_context().span_id
        )
        assert server.parent is not None and server.parent.span_id == client.context.span_id
        for span in (client, server):
            attrs = dict(span.attributes or {})
            assert attrs[schema.KV_BYTES] == result.num_bytes
            assert attrs[schema.NUM_BLOCKS] == 3
            assert attrs[schema.KV_TRANSPORT] == "grpc"
            assert attrs[schema.REQUEST_ID] == "req-kv"
            assert attrs[schema.NETWORK_TRANSPORT] == "unix"
        times = (client.start_time, server.start_time, server.end_time, client.end_time)
        assert None not in times and sorted(times) == list(times)  # type: ignore[type-var]

    try:
        _run(body)
    finally:
        exporter.clear()


def test_tcp_hop_uses_mutual_tls_and_the_internal_token(tmp_path: os.PathLike[str]) -> None:
    """Across nodes the worker dials TCP with the deployment's TLS and token, as the scheduler
    does: a worker without them is refused by the source, one with them gets the blocks."""
    from pathlib import Path

    from deploy.certs import write_certs
    from services.common.peer_auth import token_metadata
    from services.common.tls import load_tls

    certs = Path(tmp_path) / "certs"
    write_certs(certs, [])
    secure = {"tls_dir": str(certs), "internal_token": "tok-1"}

    async def scenario() -> None:
        a = await _start("127.0.0.1:0", "tiny", **secure)
        b = await _start("127.0.0.1:0", "tiny", **secure)
        stranger = await _start("127.0.0.1:0", "tiny")  # plaintext, no token
        tls = load_tls(str(certs), "scheduler")
        channel = create_channel(b.address, tls=tls)
        plain = create_channel(stranger.address)
        try:
            await a.service.step([SeqStep(1, PROMPT, 0, [0, 1, 2], SamplingParams())], {}, "tcp")
            result = await import_kv(
                channel,
                a.address,
                [0, 1, 2],
                [3, 4, 5],
                "grpc",
                {},
                metadata=token_metadata("tok-1"),
            )
            assert result.num_bytes == 3 * a.service.kv_layout.block_bytes
            assert await a.service.export_kv([0, 1, 2]) == await b.service.export_kv([3, 4, 5])
            with pytest.raises(UnavailableError):  # no TLS to offer: the source refuses it
                await import_kv(plain, a.address, [0], [1], "grpc", {}, timeout_s=30)
        finally:
            await channel.close()
            await plain.close()
            for w in (a, b, stranger):
                await w.stop(0)

    asyncio.run(scenario())


def test_transfer_through_an_emulated_link_relay() -> None:
    """A relay's address as the source (what the scheduler passes for a shaped cross-node edge):
    the bytes arrive, and the link's delay is in the transfer's time."""
    from deploy.relay import start_relay

    delay_ms = 20.0

    async def scenario() -> None:
        a = await _start("127.0.0.1:0", "tiny")
        b = await _start("127.0.0.1:0", "tiny")
        relay = start_relay("127.0.0.1", a.address, delay_ms=delay_ms)
        channel = create_channel(b.address)
        try:
            await a.service.step([SeqStep(1, PROMPT, 0, [0, 1, 2], SamplingParams())], {}, "tcp")
            result = await import_kv(channel, relay.address, [0, 1, 2], [3, 4, 5], "grpc", {})
            assert await a.service.export_kv([0, 1, 2]) == await b.service.export_kv([3, 4, 5])
            assert relay.num_connections >= 1
            # a round trip at least (request out, bytes back), each way delayed
            assert result.transfer_ms >= 2 * delay_ms
        finally:
            await channel.close()
            relay.stop()
            await a.stop(0)
            await b.stop(0)

    asyncio.run(scenario())
