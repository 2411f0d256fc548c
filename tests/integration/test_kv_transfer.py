"""The KV hop between two real worker servers (gRPC over Unix sockets): a prompt's blocks
prefilled on worker A, pulled by worker B (Worker.ImportKV -> Worker.PullKV), then B decodes the
same tokens A does; bytes equal; shm segments gone; bad blocks INVALID_ARGUMENT; a dead source
UNAVAILABLE."""

from __future__ import annotations

import asyncio
import glob
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from services.common.channels import create_channel
from services.common.errors import InvalidArgumentError, UnavailableError
from services.common.types import SamplingParams, SeqStep
from services.scheduler.kv_client import import_kv
from services.worker.config import WorkerConfig
from services.worker.kv_transfer import SHM_DIR, SHM_PREFIX
from services.worker.server import WorkerServer, start_worker
from services.worker.service_config import WorkerServiceConfig

PROMPT = [(37 * j) % 3000 + 5 for j in range(40)]  # 3 blocks of 16 (the last partial)
NUM_DECODE = 6


def _segments() -> set[str]:
    return set(glob.glob(os.path.join(SHM_DIR, SHM_PREFIX + f"{os.getpid()}-*")))


async def _start(path: str, model: str) -> WorkerServer:
    engine = WorkerConfig(model=model, kv_cache_bytes=8 * 2**20, kernels="torch")
    return await start_worker(WorkerServiceConfig(engine=engine, listen=f"unix:{path}"))


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
