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

import os
import uuid

import torch

from protos import hopscope_pb2 as pb
from services.worker.kv_cache import KVCache

CHUNK_BYTES = 1 << 20
TRANSPORTS = ("grpc", "shm")
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


def _slots(cache: KVCache, blocks: list[int]) -> torch.Tensor:
    offsets = torch.arange(cache.block_size)
    slots = torch.tensor(blocks, dtype=torch.long)[:, None] * cache.block_size + offsets
    return slots.ravel().to(cache.data.device)


def export_blocks(cache: KVCache, blocks: list[int]) -> bytes:
    """The payload of `blocks` (on the engine thread)."""
    check_blocks(cache, blocks, "PullKV")
    num_layers, two, heads, _, head_dim = cache.data.shape
    gathered = cache.data.index_select(3, _slots(cache, blocks))
    per_block = gathered.view(num_layers, two, heads, len(blocks), cache.block_size, head_dim)
    payload = per_block.permute(3, 0, 1, 2, 4, 5).contiguous().cpu()
    return payload.view(torch.uint8).numpy().tobytes()


def import_blocks(
    cache: KVCache, blocks: list[int], payload: bytes | bytearray | memoryview
) -> None:
    """Write a payload into `blocks` (on the engine thread)."""
    check_blocks(cache, blocks, "ImportKV dest_blocks")
    num_layers, two, heads, _, head_dim = cache.data.shape
    expected = len(blocks) * int(layout_of(cache).block_bytes)
    if len(payload) != expected:
        raise KVBlocksError(
            f"KV payload of {len(payload)} bytes for {len(blocks)} blocks; expected {expected}"
        )
    raw = torch.frombuffer(payload, dtype=torch.uint8).view(cache.data.dtype)
    per_block = raw.view(len(blocks), num_layers, two, heads, cache.block_size, head_dim)
    values = per_block.permute(1, 2, 3, 0, 4, 5).reshape(
        num_layers, two, heads, len(blocks) * cache.block_size, head_dim
    )
    cache.data.index_copy_(3, _slots(cache, blocks), values.to(cache.data.device))


def shm_path(name: str) -> str:
    if not name.startswith(SHM_PREFIX) or "/" in name:
        raise KVBlocksError(f"not a hopscope KV segment name: {name!r}")
    return os.path.join(SHM_DIR, name)


def write_shm(payload: bytes) -> str:
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


def read_and_unlink_shm(name: str) -> bytearray:
    """The segment's bytes; the segment is gone afterwards, whether reading worked or not."""
    path = shm_path(name)
    try:
        with open(path, "rb") as f:
            data = bytearray(os.fstat(f.fileno()).st_size)
            f.readinto(data)
        return data
    finally:
        unlink_shm(name)


def unlink_shm(name: str) -> None:
    try:
        os.unlink(shm_path(name))
    except FileNotFoundError:
        pass
