"""How the scheduler reaches the worker: one long-lived `Worker.Step` stream (a message per step
each way), or direct calls in the in-process placement. Both raise UnavailableError when the
worker is gone, so the runner handles a lost worker the same way in every placement."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import grpc

from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc
from services.common import convert
from services.common.channels import create_channel, transport_of
from services.common.errors import UnavailableError
from services.common.peer_auth import token_metadata
from services.common.tls import TlsMaterial
from services.common.types import BlockSwaps, SeqStep, StepOutput
from services.scheduler import kv_client
from services.scheduler.kv_client import KVTransferResult


class WorkerClient(Protocol):
    transport: str
    address: str

    async def connect(self, timeout_s: float) -> pb.WorkerInfo: ...

    async def step(
        self,
        seqs: list[SeqStep],
        carrier: Mapping[str, str],
        swaps: BlockSwaps | None = None,
        later: Sequence[list[SeqStep]] = (),
    ) -> StepOutput:
        """Run one step, and the decode steps in `later` after it (multi-step): their tokens
        come back in StepOutput.later_sampled."""
        ...

    @property
    def is_connected(self) -> bool:
        """False once the link to the worker is known to be gone (the next step would fail)."""
        ...

    def watch(self, on_lost: Callable[[], None]) -> None:
        """Call `on_lost` when the link breaks while no step is in flight."""
        ...

    async def import_kv(
        self,
        source_address: str,
        source_blocks: Sequence[int],
        dest_blocks: Sequence[int],
        transport: str,
        carrier: Mapping[str, str],
        request_id: str,
        seq_id: int,
    ) -> KVTransferResult:
        """Make this worker pull KV blocks from the worker at `source_address` (kv_client's
        import_kv); UnavailableError when that fails (the caller recomputes instead)."""
        ...

    async def close(self) -> None: ...


class InprocWorkerClient:
    """Direct calls into a WorkerService living in this process."""

    transport = "inproc"
    address = "inproc"
    is_connected = True

    def __init__(self, service: object) -> None:
        from services.worker.servicer import WorkerService

        assert isinstance(service, WorkerService)
        self._service = service

    async def connect(self, timeout_s: float) -> pb.WorkerInfo:
        return self._service.info_pb()

    async def step(
        self,
        seqs: list[SeqStep],
        carrier: Mapping[str, str],
        swaps: BlockSwaps | None = None,
        later: Sequence[list[SeqStep]] = (),
    ) -> StepOutput:
        return await self._service.step(seqs, carrier, "inproc", swaps, later)

    def watch(self, on_lost: Callable[[], None]) -> None:
        return None  # the worker lives and dies with this process

    async def import_kv(self, *args: object, **kwargs: object) -> KVTransferResult:
        raise UnavailableError("the in-process placement has one worker: no KV hop")

    async def close(self) -> None:
        return None


class GrpcWorkerClient:
    """One channel for the client's life (it reconnects by itself when the worker comes back on
    the same address) and one Step stream per connection. Any failure of the stream, whatever
    raises it (a status, EOF, a call finished under us by a GOAWAY, a timeout), is reported as
    UnavailableError and drops the stream: the runner then reconnects and recomputes.

    Two steps may be in flight (async scheduling): concurrent `step` calls write in call order
    and each reads the reply to its own request (the worker answers in order)."""

    def __init__(
        self,
        address: str,
        step_timeout_s: float,
        *,
        tls: TlsMaterial | None = None,
        internal_token: str = "",
        step_encoding: str = "delta",
    ) -> None:
        self.address = address
        self._step_encoding = step_encoding
        self._encoder = convert.StepEncoder(step_encoding)
        self._tls = tls
        self._metadata = token_metadata(internal_token)
        self.transport = transport_of(address)
        self._step_timeout_s = step_timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._call: grpc.aio.StreamStreamCall | None = None
        self._step_id = 0
        self._on_lost: Callable[[], None] = lambda: None
        # FIFO locks: a call takes the read lock as it releases the write lock (no await in
        # between), so replies are read in the order the requests were written
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()

    @property
    def is_connected(self) -> bool:
        return self._call is not None and not self._call.done()

    def watch(self, on_lost: Callable[[], None]) -> None:
        self._on_lost = on_lost

    async def connect(self, timeout_s: float) -> pb.WorkerInfo:
        self._drop_call()
        if self._channel is None:
            self._channel = create_channel(self.address, tls=self._tls)
        stub = pb_grpc.WorkerStub(self._channel)
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout_s)
            info = await stub.Info(pb.InfoRequest(), timeout=timeout_s, metadata=self._metadata)
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            raise UnavailableError(
                f"model worker at {self.address} is unavailable: {_reason(exc)}"
            ) from exc
        call = stub.Step(metadata=self._metadata)
        self._encoder = convert.StepEncoder(self._step_encoding)  # the worker's decoder is new too
        call.add_done_callback(lambda _call: self._on_lost())
        self._call = call
        return info

    async def import_kv(
        self,
        source_address: str,
        source_blocks: Sequence[int],
        dest_blocks: Sequence[int],
        transport: str,
        carrier: Mapping[str, str],
        request_id: str,
        seq_id: int,
    ) -> KVTransferResult:
        if self._channel is None:
            raise UnavailableError(f"no channel to the model worker at {self.address}")
        return await kv_client.import_kv(
            self._channel,
            source_address,
            source_blocks,
            dest_blocks,
            transport,
            carrier,
            request_id=request_id,
            seq_id=seq_id,
            metadata=self._metadata,
        )

    async def step(
        self,
        seqs: list[SeqStep],
        carrier: Mapping[str, str],
        swaps: BlockSwaps | None = None,
        later: Sequence[list[SeqStep]] = (),
    ) -> StepOutput:
        call = self._call
        if call is None or call.done():
            self._drop_call()
            raise UnavailableError(f"the step stream to the model worker at {self.address} ended")
        try:
            async with self._write_lock:
                # encoded in the order written: the delta encoding's tables follow the stream
                self._step_id += 1
                request = self._encoder.encode(self._step_id, seqs, carrier, swaps, later)
                await call.write(request)
            async with self._read_lock:
                response = await asyncio.wait_for(call.read(), self._step_timeout_s)
        except Exception as exc:
            self._drop_call()
            raise UnavailableError(
                f"model worker at {self.address} stopped answering: {_reason(exc)}"
            ) from exc
        if response is grpc.aio.EOF:
            self._drop_call()
            raise UnavailableError(f"model worker at {self.address} closed the step stream")
        if response.error:
            raise RuntimeError(f"worker step failed: {response.error}")
        return convert.step_output_from_pb(response)

    def _drop_call(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.cancel()

    async def close(self) -> None:
        self._drop_call()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"
