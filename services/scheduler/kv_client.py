"""The scheduler's handle on the KV hop (prefill/decode disaggregation): make the destination
(decode) worker pull a request's KV blocks from the source (prefill) worker.

    result = await import_kv(dest, source_address, source_blocks, dest_blocks, "grpc", carrier)

`dest` is a channel to the destination worker (or a `WorkerStub` on one). The destination calls
`Worker.PullKV` on `source_address` and writes the blocks, in order, into `dest_blocks`; the call
returns once they are in its cache (it runs between the destination's steps, so the next Step
that names `dest_blocks` sees them). `source_address` is dialled as given: "unix:PATH" on one
node, "HOST:PORT" across nodes (mutual TLS when the workers have --tls-dir), or a relay's address
to put the transfer through an emulated link. Errors: `InvalidArgumentError` (bad block ids on
either side, length mismatch, layout mismatch, shm across nodes: a bug or a misconfiguration),
`UnavailableError` (the source or the destination is down or the transfer broke: recompute the
prefill on a worker instead)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc

from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc
from services.common.errors import HopscopeError, InvalidArgumentError, UnavailableError
from services.config import KV_TRANSPORTS


@dataclass(frozen=True, slots=True)
class KVTransferResult:
    num_bytes: int
    transfer_ms: float  # measured on the destination: PullKV opened -> last block written
    num_blocks: int
    transport: str  # "grpc" | "shm"


async def import_kv(
    dest: grpc.aio.Channel | pb_grpc.WorkerStub,
    source_address: str,
    source_blocks: Sequence[int],
    dest_blocks: Sequence[int],
    transport: str = "grpc",
    trace_context: Mapping[str, str] | None = None,
    *,
    request_id: str = "",
    seq_id: int = 0,
    metadata: Sequence[tuple[str, str]] = (),
    timeout_s: float | None = 120.0,
) -> KVTransferResult:
    """Copy `source_blocks` of the worker at `source_address` into `dest_blocks` of `dest`.

    `trace_context`: a carrier (services/common/spans.carrier_of) that parents the
    `hopscope.kv_transfer` CLIENT span on the destination; `metadata`: the internal token
    (peer_auth.token_metadata)."""
    if transport not in KV_TRANSPORTS:
        raise InvalidArgumentError(f"unknown KV transport {transport!r}: grpc or shm")
    stub = dest if isinstance(dest, pb_grpc.WorkerStub) else pb_grpc.WorkerStub(dest)
    request = pb.ImportKVRequest(
        source_address=source_address,
        source_blocks=list(source_blocks),
        dest_blocks=list(dest_blocks),
        transport=transport,
        trace_context=dict(trace_context or {}),
        request_id=request_id,
        seq_id=seq_id,
    )
    try:
        reply = await stub.ImportKV(request, metadata=tuple(metadata), timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise InvalidArgumentError(exc.details()) from None
        if code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED,
            grpc.StatusCode.INTERNAL,
            grpc.StatusCode.UNKNOWN,
        ):
            raise UnavailableError(f"KV transfer failed ({code.name}): {exc.details()}") from None
        raise HopscopeError(f"KV transfer failed ({code.name}): {exc.details()}") from None
    return KVTransferResult(
        num_bytes=reply.num_bytes,
        transfer_ms=reply.transfer_ms,
        num_blocks=reply.num_blocks,
        transport=reply.transport,
    )
