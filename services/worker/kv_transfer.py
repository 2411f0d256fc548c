"""The KV hop of prefill/decode disaggregation, worker side: a worker's KV blocks as raw bytes
(export, on the source) and raw bytes into blocks (import, on the destination).

Payload: for each block in the order asked, the tensor [num_layers, 2 (K, V), num_kv_heads,
block_size, head_dim] of the cache's dtype in C order; blocks concatenated. Over `grpc` it travels
in `KVChunk.data` chunks of at most CHUNK_BYTES; over `shm` (one node) the source writes it to a
file under /dev/shm and sends only its name: the destination reads it and unlinks it, and the
source unlinks any it wrote that is still there after SHM_UNCLAIMED_S.

Both run on the engine thread (WorkerService.export_kv / import_kv), so a block is never read or
written while a step runs."""

from __future__ import annotations

import mmap
import os
import uuid

import torch

from protos import hopscope_pb2 as pb
from services.worker.kv_cache import KVCache

CHUNK_BYTES = 1 << 20
SHM_DIR = "/dev/shm"
SHM_PREFIX = "hopscope-kv-"
SHM_UNCLAIMED_S = 60.0

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class KVBlocksError(ValueError):
    """Blocks a person can fix: unknown ids, a length mismatch, a layout that differs."""


def layout_of(cache: KVCache) -> pb.KVLayout:
    num_layers, _, num_kv_heads, _, head_dim = cache.data.shape
    element = cache.data.element_size()
    return pb.KVLayout(
        num_layers=num_layers,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        block_size=cache.block_size,
        dtype=_DTYPE_NAMES.get(cache.data.dtype, str(cache.data.dtype)),
        block_bytes=2 * num_layers * num_kv_heads * cache.block_size * head_dim * element,
    )


def describe_layout(layout: pb.KVLayout) -> str:
    return (
        f"{layout.num_layers} layers x {layout.num_kv_heads} KV heads x head_dim "
        f"{layout.head_dim}, {layout.block_size} tokens/block, {layout.dtype}"
    )


def check_layout(mine: pb.KVLayout, theirs: pb.KVLayout, who: str) -> None:
    if mine != theirs:
        raise KVBlocksError(
            f"KV layout mismatch: {who} has {describe_layout(theirs)}, this worker has "
            f"{describe_layout(mine)}; both workers must serve the same model, dtype and "
            "--block-size"
        )


def check_blocks(cache: KVCache, blocks: list[int], what: str) -> None:
    if not blocks:
        raise KVBlocksError(f"{what}: no blocks named")
    bad = [b for b in blocks if not 0 <= b < cache.num_blocks]
    if bad:
        raise KVBlocksError(
            f"{what}: block ids {bad[:8]} are outside this worker's cache of "
            f"{cache.num_blocks} blocks (0..{cache.num_blocks - 1})"
        )
    if len(set(blocks)) != len(blocks):
        raise KVBlocksError(f"{what}: a block id is named twice in {blocks}")


def _by_block(cache: KVCache) -> torch.Tensor:
    """The cache viewed as [blocks (scratch included), layers, 2, kv_heads, block_size,
    head_dim]: the payload's layout, so a gather of blocks along dim 0 is the payload."""
    num_layers, two, heads, num_slots, head_dim = cache.data.shape
    by_block = cache.data.view(
        num_layers, two, heads, num_slots // cache.block_size, cache.block_size, head_dim
    )
    return by_block.permute(3, 0, 1, 2, 4, 5)


class KVExporter:
    """The source side's gather: blocks into one reused staging buffer (a fresh 45 MiB buffer
    costs its page faults each time, and on a busy 2-core machine a multi-threaded gather into
    fresh memory took ~10x a reused one), then out of it into what leaves the engine thread
    (gRPC chunks, or a /dev/shm segment), so the buffer is free again when `export` returns.
    Called on one thread at a time (the worker's KV-export thread)."""

    MAX_STAGING_BYTES = 256 * 2**20  # larger transfers gather into a buffer of their own

    def __init__(self) -> None:
        self._staging = torch.empty(0, dtype=torch.uint8)

    def _gather(self, cache: KVCache, blocks: list[int]) -> memoryview:
        check_blocks(cache, blocks, "PullKV")
        source = _by_block(cache)
        index = torch.tensor(blocks, dtype=torch.long, device=cache.data.device)
        shape = (len(blocks), *source.shape[1:])
        if cache.data.device.type != "cpu":  # gather on the device, one transfer to the host
            out = source.index_select(0, index).cpu()
        else:
            num_bytes = len(blocks) * int(layout_of(cache).block_bytes)
            if num_bytes > self.MAX_STAGING_BYTES:
                out = torch.empty(shape, dtype=cache.data.dtype)
            else:
                if self._staging.numel() < num_bytes:
                    self._staging = torch.empty(num_bytes, dtype=torch.uint8)
                out = self._staging[:num_bytes].view(cache.data.dtype).view(shape)
            torch.index_select(source, 0, index, out=out)
        return memoryview(out.view(torch.uint8).numpy()).cast("B")  # type: ignore[arg-type]

    def export(
        self, cache: KVCache, blocks: list[int], transport: str
    ) -> tuple[int, list[bytes] | str]:
        """(bytes, the payload's chunks) for "grpc"; (bytes, a segment's name) for "shm"."""
        payload = self._gather(cache, blocks)
        if transport == "shm":
            return len(payload), write_shm(payload)
        chunks = [
            bytes(payload[offset : offset + CHUNK_BYTES])
            for offset in range(0, len(payload), CHUNK_BYTES)
        ]
        return len(payload), chunks


def export_blocks(cache: KVCache, blocks: list[int]) -> bytes:
    """The payload of `blocks` in one piece (tests, tools)."""
    _, chunks = KVExporter().export(cache, blocks, "grpc")
    assert isinstance(chunks, list)
    return b"".join(chunks)


def import_blocks(
    cache: KVCache, blocks: list[int], payload: bytes | bytearray | memoryview | mmap.mmap
) -> None:
    """Write a payload into `blocks` (on the engine thread): one scatter into the cache."""
    check_blocks(cache, blocks, "ImportKV dest_blocks")
    expected = len(blocks) * int(layout_of(cache).block_bytes)
    if len(payload) != expected:
        raise KVBlocksError(
            f"KV payload of {len(payload)} bytes for {len(blocks)} blocks; expected {expected}"
        )
    target = _by_block(cache)
    raw = torch.frombuffer(payload, dtype=torch.uint8).view(cache.data.dtype)
    values = raw.view(len(blocks), *target.shape[1:]).to(cache.data.device)
    index = torch.tensor(blocks, dtype=torch.long, device=cache.data.device)
    target.index_copy_(0, index, values)


def import_shm(cache: KVCache, blocks: list[int], name: str) -> int:
    """Map the segment, unlink it at once (the mapping stays valid), copy it into `blocks`:
    its bytes. The segment is gone afterwards whatever happens."""
    path = shm_path(name)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise KVBlocksError(f"KV segment {name} is empty")
            # a private copy-on-write mapping: writable for torch.frombuffer, never written
            mapping = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
    finally:
        unlink_shm(name)
    try:
        import_blocks(cache, blocks, mapping)
    finally:
        import gc

        gc.collect()  # the tensor views of the mapping, before it closes
        try:
            mapping.close()
        except BufferError:
            pass  # still viewed somewhere: unmapped when the last view goes
    return size


def shm_path(name: str) -> str:
    if not name.startswith(SHM_PREFIX) or "/" in name:
        raise KVBlocksError(f"not a hopscope KV segment name: {name!r}")
    return os.path.join(SHM_DIR, name)


def write_shm(payload: bytes | memoryview) -> str:
    """Write the payload to a new /dev/shm file (owner-only); its name."""
    name = f"{SHM_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
    fd = os.open(shm_path(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
    except BaseException:
        unlink_shm(name)
        raise
    return name


def unlink_shm(name: str) -> None:
    try:
        os.unlink(shm_path(name))
    except FileNotFoundError:
        pass
