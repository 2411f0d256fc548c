"""The scheduler behind a server: each tokenizer holds one `Connect` stream; adds and aborts
come in, and each step sends one `SchedulerOutput` with all of that connection's tokens."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc
from services.common import convert
from services.common.errors import HopscopeError, InvalidArgumentError
from services.common.identity import ServiceIdentity, worker_names
from services.common.types import Delivery
from services.scheduler.replicas import RequestRunner
from services.scheduler.request import Request
from services.scheduler.runner import SchedulerRunner


class _Connection:
    """One tokenizer's stream: collects deliveries into one message per step."""

    def __init__(self) -> None:
        self.outbox: asyncio.Queue[pb.SchedulerOutput | None] = asyncio.Queue()
        self.request_ids: set[str] = set()

    def deliver(self, deliveries: list[Delivery]) -> None:
        output = pb.SchedulerOutput()
        add = output.updates.add  # built in place: no message per token copied into the list
        for d in deliveries:
            if d.is_finished:
                self.request_ids.discard(d.request_id)
                add().CopyFrom(convert.delivery_to_pb(d))
            else:
                add(request_id=d.request_id, token_ids=d.token_ids)
        self.outbox.put_nowait(output)


def _catch_up(out: pb.SchedulerOutput, outbox: asyncio.Queue[pb.SchedulerOutput | None]) -> bool:
    """Fold the steps already queued behind `out` into it (the front door is behind: one
    message instead of one per step), a request's tokens into one update, in order. True when
    the stream's end was queued too."""
    if outbox.empty():
        return False
    open_updates = {u.request_id: u for u in out.updates if not _is_finished(u)}
    while not outbox.empty():
        later = outbox.get_nowait()
        if later is None:
            return True
        for update in later.updates:
            earlier = open_updates.get(update.request_id)
            if earlier is None:
                earlier = out.updates.add()
                earlier.request_id = update.request_id
            earlier.token_ids.extend(update.token_ids)
            if _is_finished(update):
                earlier.finish_reason = update.finish_reason
                earlier.error_status = update.error_status
                earlier.error_message = update.error_message
                open_updates.pop(update.request_id, None)
            else:
                open_updates[update.request_id] = earlier
    return False


def _is_finished(update: pb.RequestUpdate) -> bool:
    return bool(update.finish_reason or update.error_status)


class SchedulerServicer(pb_grpc.SchedulerServicer):
    def __init__(
        self,
        runner: RequestRunner,
        identity: ServiceIdentity,
        transport: str,
        worker_link: str = "",
    ) -> None:
        self.worker_link = worker_link
        self.worker_link_shape = (0.0, 0.0)  # (delay_ms one way, rate_mbit) of an emulated link
        self.worker_links: list[str] = []  # per replica, when they differ (Ray: some cross nodes)
        self.runner = runner
        # steps that queued up behind a front door that reads slowly go to it as one message
        # (`--stream-catch-up`; set by the server from the service config)
        self.stream_catch_up = True
        self.identity = identity
        self.transport = transport
        # the front doors (`--tokenizer-replicas`) whose Connect stream is open, for Describe
        self.front_doors: dict[int, pb.ServiceInfo] = {}

    async def Connect(
        self, request_iterator: AsyncIterator[pb.SchedulerInput], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SchedulerOutput]:
        conn = _Connection()
        front_door = convert.front_door_from_metadata(context.invocation_metadata() or ())
        if front_door is not None:
            self.front_doors[id(conn)] = front_door
        reader = asyncio.create_task(self._read(request_iterator, conn))
        try:
            while True:
                out = await conn.outbox.get()
                if out is None:
                    return
                ended = self.stream_catch_up and _catch_up(out, conn.outbox)
                yield out
                if ended:
                    return
        finally:
            reader.cancel()
            self.front_doors.pop(id(conn), None)
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
        response = describe_scheduler(
            self.runner, self.identity, self.worker_link, self.worker_link_shape, self.worker_links
        )
        response.services.extend(self.front_doors.values())  # the front door sorts them in
        return response


def describe_scheduler(
    runner: RequestRunner,
    identity: ServiceIdentity,
    worker_link: str = "",
    worker_link_shape: tuple[float, float] = (0.0, 0.0),
    worker_links: list[str] | None = None,
) -> pb.DescribeResponse:
    """The scheduler's and worker's part of Describe (the front door adds its own). With several
    worker replicas: every replica's service and edge (`worker`, `worker-1`, ...), summed stats
    and one ReplicaStats each."""
    response = pb.DescribeResponse(services=[convert.identity_to_pb(identity)])
    runners = list(runner.replicas)
    names = worker_names(len(runners), [r.role for r in runners])
    delay_ms, rate_mbit = worker_link_shape  # the one emulated link shape, on every shaped hop
    links = list(worker_links or []) or [worker_link] * len(runners)
    for index, replica in enumerate(runners):
        name = names[index]
        link = links[index] if index < len(links) else worker_link
        info = replica.worker_info
        if info is not None:
            service = response.services.add()
            service.CopyFrom(info.service)
            service.name = name
            service.role = replica.role
            if not replica.is_worker_up:
                service.pid = 0  # that process is gone; the one that replaces it is not known yet
                service.state = "restarting"
            if index == 0:
                response.model.CopyFrom(info.model)
        edge: dict[str, Any] = {
            "from": "scheduler",  # a Python keyword: passed by dict
            "to": name,
            "transport": replica.worker.transport,
            "link": link,
            "delay_ms": delay_ms if link else 0.0,
            "rate_mbit": rate_mbit if link else 0.0,
        }
        response.edges.append(pb.Edge(**edge))
    response.edges.extend(_kv_edges(runners, names))
    cores = [r.core for r in runners if r.core is not None]
    if cores:
        response.batching = cores[0].config.batching
        response.scheduler_stats.CopyFrom(_stats(runner, runners))
    return response


def _kv_edges(runners: list[SchedulerRunner], names: list[str]) -> list[pb.Edge]:
    """Disaggregated: the KV hop from each prefill worker to each decode worker (`shm`, or the
    transport of the address the decode worker dials: the prefill worker's)."""
    edges = []
    for source, source_name in zip(runners, names, strict=True):
        if source.role != "prefill":
            continue
        for dest, dest_name in zip(runners, names, strict=True):
            if dest.role != "decode":
                continue
            transport = "shm" if dest.kv_transport == "shm" else source.worker.transport
            edge: dict[str, Any] = {"from": source_name, "to": dest_name, "transport": transport}
            edges.append(pb.Edge(**edge))
    return edges


def _stats(runner: RequestRunner, runners: list[SchedulerRunner]) -> pb.SchedulerStats:
    cores = [r.core for r in runners if r.core is not None]
    queried = sum(c.block_manager.num_queried_tokens for c in cores)
    stats = pb.SchedulerStats(
        num_waiting=sum(c.num_waiting for c in cores),
        num_running=sum(c.num_running for c in cores),
        num_free_blocks=sum(c.num_free_blocks for c in cores),
        num_blocks=sum(c.block_manager.num_blocks for c in cores),
        is_worker_up=runner.is_worker_up,
        prefix_caching=cores[0].config.prefix_caching,
        prefix_cache_hit_rate=sum(c.block_manager.num_hit_tokens for c in cores) / queried
        if queried
        else 0.0,
        num_cached_blocks=sum(c.block_manager.num_cached_blocks for c in cores),
        preemption=cores[0].config.preemption,
        num_preemptions=sum(c.num_preemptions for c in cores),
        num_swapped_out=sum(c.num_swapped_out for c in cores),
    )
    if len(runners) > 1:
        for index, r in enumerate(runners):
            core = r.core
            stats.replicas.append(
                pb.ReplicaStats(
                    index=index,
                    address=r.worker.address,
                    is_worker_up=r.is_worker_up,
                    num_running=core.num_running if core else 0,
                    num_waiting=core.num_waiting if core else 0,
                    num_free_blocks=core.num_free_blocks if core else 0,
                    num_blocks=core.block_manager.num_blocks if core else 0,
                    num_steps=r.num_steps,
                    hop_rtt_ms=r.hop_rtt_ms,
                    num_kv_imports=r.num_kv_imports,
                    kv_bytes_imported=r.kv_bytes_imported,
                    num_kv_import_failures=r.num_kv_import_failures,
                )
            )
    return stats
