"""The scheduler behind a server: each tokenizer holds one `Connect` stream; adds and aborts
come in, and each step sends one `SchedulerOutput` with all of that connection's tokens."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc

from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc
from services.common import convert
from services.common.errors import HopscopeError, InvalidArgumentError
from services.common.identity import ServiceIdentity
from services.common.types import Delivery
from services.scheduler.request import Request
from services.scheduler.runner import SchedulerRunner


class _Connection:
    """One tokenizer's stream: collects deliveries into one message per step."""

    def __init__(self) -> None:
        self.outbox: asyncio.Queue[pb.SchedulerOutput | None] = asyncio.Queue()
        self.request_ids: set[str] = set()

    def deliver(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            if d.is_finished:
                self.request_ids.discard(d.request_id)
        self.outbox.put_nowait(
            pb.SchedulerOutput(updates=[convert.delivery_to_pb(d) for d in deliveries])
        )


class SchedulerServicer(pb_grpc.SchedulerServicer):
    def __init__(
        self,
        runner: SchedulerRunner,
        identity: ServiceIdentity,
        transport: str,
        worker_link: str = "",
    ) -> None:
        self.worker_link = worker_link
        self.runner = runner
        self.identity = identity
        self.transport = transport

    async def Connect(
        self, request_iterator: AsyncIterator[pb.SchedulerInput], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SchedulerOutput]:
        conn = _Connection()
        reader = asyncio.create_task(self._read(request_iterator, conn))
        try:
            while True:
                out = await conn.outbox.get()
                if out is None:
                    return
                yield out
        finally:
            reader.cancel()
            for rid in list(conn.request_ids):  # the tokenizer went away: free its requests
                self.runner.abort(rid)

    async def _read(
        self, request_iterator: AsyncIterator[pb.SchedulerInput], conn: _Connection
    ) -> None:
        try:
            async for message in request_iterator:
                if message.HasField("add"):
                    self._add(message.add, conn)
                elif message.HasField("abort"):
                    conn.request_ids.discard(message.abort.request_id)
                    self.runner.abort(message.abort.request_id)
        finally:
            conn.outbox.put_nowait(None)

    def _add(self, add: pb.AddRequest, conn: _Connection) -> None:
        now = time.monotonic()
        request = Request(
            request_id=add.request_id,
            prompt_token_ids=list(add.prompt_token_ids),
            max_tokens=add.max_tokens,
            sampling=convert.sampling_from_pb(add.sampling),
            ignore_eos=add.ignore_eos,
            deadline_s=now + add.timeout_s if add.timeout_s > 0 else None,
            arrival_s=now,
            context=dict(add.trace_context),
        )
        try:
            if not add.request_id:
                raise InvalidArgumentError("request_id is required on the scheduler stream")
            self.runner.submit(request, conn, self.transport)
        except HopscopeError as exc:
            conn.deliver([Delivery(add.request_id, [], "abort", exc.status, str(exc))])
            return
        conn.request_ids.add(add.request_id)

    async def Describe(
        self, request: pb.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DescribeResponse:
        return describe_scheduler(self.runner, self.identity, self.worker_link)


def describe_scheduler(
    runner: SchedulerRunner, identity: ServiceIdentity, worker_link: str = ""
) -> pb.DescribeResponse:
    """The scheduler's and worker's part of Describe (the front door adds its own)."""
    response = pb.DescribeResponse(services=[convert.identity_to_pb(identity)])
    info = runner.worker_info
    if info is not None:
        worker = response.services.add()
        worker.CopyFrom(info.service)
        if not runner.is_worker_up:
            worker.pid = 0  # that process is gone; the one that replaces it is not known yet
        response.model.CopyFrom(info.model)
    response.edges.append(
        pb.Edge(
            **{
                "from": "scheduler",
                "to": "worker",
                "transport": runner.worker.transport,
                "link": worker_link,
            }
        )
    )
    core = runner.core
    if core is not None:
        response.batching = core.config.batching
        response.scheduler_stats.CopyFrom(
            pb.SchedulerStats(
                num_waiting=core.num_waiting,
                num_running=core.num_running,
                num_free_blocks=core.num_free_blocks,
                num_blocks=core.block_manager.num_blocks,
                is_worker_up=runner.is_worker_up,
            )
        )
    return response
