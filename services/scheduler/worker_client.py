"""How the scheduler reaches the worker: one long-lived `Worker.Step` stream (a message per step
each way), or direct calls in the in-process placement. Both raise UnavailableError when the
worker is gone, so the runner handles a lost worker the same way in every placement."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

import grpc

from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc
from services.common import convert
from services.common.channels import create_channel, transport_of
from services.common.errors import UnavailableError
from services.common.types import BlockSwaps, SeqStep, StepOutput


class WorkerClient(Protocol):
    transport: str
    address: str

    async def connect(self, timeout_s: float) -> pb.WorkerInfo: ...

    async def step(
        self, seqs: list[SeqStep], carrier: Mapping[str, str], swaps: BlockSwaps | None = None
    ) -> StepOutput: ...

    async def close(self) -> None: ...


class InprocWorkerClient:
    """Direct calls into a WorkerService living in this process."""

    transport = "inproc"
    address = "inproc"

    def __init__(self, service: object) -> None:
        from services.worker.servicer import WorkerService

        assert isinstance(service, WorkerService)
        self._service = service

    async def connect(self, timeout_s: float) -> pb.WorkerInfo:
        return self._service.info_pb()

    async def step(
        self, seqs: list[SeqStep], carrier: Mapping[str, str], swaps: BlockSwaps | None = None
    ) -> StepOutput:
        return await self._service.step(seqs, carrier, "inproc", swaps)

    async def close(self) -> None:
        return None


class GrpcWorkerClient:
    def __init__(self, address: str, step_timeout_s: float) -> None:
        self.address = address
        self.transport = transport_of(address)
        self._step_timeout_s = step_timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._call: grpc.aio.StreamStreamCall | None = None
        self._step_id = 0

    async def connect(self, timeout_s: float) -> pb.WorkerInfo:
        await self.close()
        self._channel = create_channel(self.address)
        stub = pb_grpc.WorkerStub(self._channel)
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout_s)
            info = await stub.Info(pb.InfoRequest(), timeout=timeout_s)
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            await self.close()
            raise UnavailableError(f"model worker at {self.address} is unavailable: {exc}") from exc
        self._call = stub.Step()
        return info

    async def step(
        self, seqs: list[SeqStep], carrier: Mapping[str, str], swaps: BlockSwaps | None = None
    ) -> StepOutput:
        if self._call is None:
            raise UnavailableError(f"not connected to the model worker at {self.address}")
        self._step_id += 1
        request = pb.StepRequest(
            step_id=self._step_id,
            seqs=[convert.seq_step_to_pb(s) for s in seqs],
            trace_context=dict(carrier),
        )
        convert.swaps_to_pb(swaps, request)
        try:
            await self._call.write(request)
            response = await asyncio.wait_for(self._call.read(), self._step_timeout_s)
        except (TimeoutError, grpc.aio.AioRpcError, grpc.aio.UsageError) as exc:
            self._call = None
            raise UnavailableError(
                f"model worker at {self.address} stopped answering: {exc}"
            ) from exc
        if response is grpc.aio.EOF:
            self._call = None
            raise UnavailableError(f"model worker at {self.address} closed the step stream")
        if response.error:
            raise RuntimeError(f"worker step failed: {response.error}")
        return convert.step_output_from_pb(response)

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
