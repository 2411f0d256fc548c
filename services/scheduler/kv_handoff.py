"""Disaggregation, the runner's side (ARCHITECTURE.md, "Roles and the handoff"): a collaborator
the runner calls at named points (`hand_off` after each step, `start_imports` each turn, `drop`
when a request leaves it, `on_worker_lost`, `stop`); the core's side is handoff.py.

A prefill runner hands each request whose prompt is done to `on_handoff` (the replica set, which
picks a decode runner); the decode runner `adopt`s it, makes its worker pull the KV from the
prefill worker (`import_kv`), then releases the prefill worker's blocks and decodes it. The
handoff's dead time is traced: `hopscope.handoff_wait` (prompt done -> transfer started),
`hopscope.handoff_transfer` (the transfer as the scheduler waited for it) and
`hopscope.handoff_resume` (transfer done -> the request's first decode step sent, ended by the
runner's step).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.common import spans
from services.common.errors import HopscopeError
from tracing import schema

if TYPE_CHECKING:
    from services.scheduler.runner import SchedulerRunner, Tracked

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Handoff:
    """Decode side: a prefilled request whose KV is still on the prefill worker."""

    source: SchedulerRunner
    source_blocks: list[int]
    done_ns: int  # when its prompt was done (wall clock, for the span)


class KVHandoffs:
    """One runner's handoffs: `tracked` is the runner's own table of requests, `fail` fails one
    of them, `wake` wakes its loop."""

    def __init__(
        self,
        runner: SchedulerRunner,
        tracked: dict[str, Tracked],
        fail: Callable[[str, HopscopeError], None],
        wake: Callable[[], None],
    ) -> None:
        self._runner = runner
        self._tracked = tracked
        self._fail = fail
        self._wake = wake
        self._handoffs: dict[str, _Handoff] = {}  # decode side: adopted, KV not yet imported
        self._tasks: set[asyncio.Task[None]] = set()
        # decode side: KV hops done (and their bytes) and failed (recomputed), cumulative
        self.num_imports = 0
        self.num_bytes_imported = 0
        self.num_import_failures = 0

    # ---- prefill side
    def hand_off(self) -> None:
        """After a step: requests whose prompt is done go to `on_handoff` (a decode runner)."""
        runner = self._runner
        assert runner.core is not None
        if not runner.core.hands_off:
            return
        done_ns = time.time_ns()
        for rid, blocks in runner.core.take_handoffs():
            tracked = self._tracked.pop(rid, None)
            if tracked is None or runner.on_handoff is None:
                runner.core.release_handoff(rid)
                continue
            runner.on_handoff(runner, tracked, blocks, done_ns)

    # ---- decode side
    def adopt(
        self, tracked: Tracked, source: SchedulerRunner, source_blocks: list[int], done_ns: int
    ) -> None:
        """Continue a request whose prompt `source` ran; its KV comes from there once this
        cache has room (or it is recomputed here when the transfer fails)."""
        core = self._runner.core
        assert core is not None, "adopt before start"
        rid = tracked.request.request_id
        self._tracked[rid] = tracked
        try:
            core.add_prefilled(tracked.request)
        except HopscopeError as exc:
            source.release_handoff(rid)
            self._fail(rid, exc)
            return
        self._handoffs[rid] = _Handoff(source, source_blocks, done_ns)
        self._wake()

    def start_imports(self) -> None:
        """Each turn: a KV hop for every adopted request the core has blocks for now."""
        assert self._runner.core is not None
        for rid, seq_id, dest_blocks in self._runner.core.start_imports():
            task = asyncio.create_task(self._import(rid, seq_id, dest_blocks), name=f"kv-{rid}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _import(self, rid: str, seq_id: int, dest_blocks: list[int]) -> None:
        """One KV hop: this worker pulls the blocks from the prefill worker; the prefill
        worker's blocks are freed once it answers. A failed hop recomputes the request here."""
        core, worker = self._runner.core, self._runner.worker
        assert core is not None
        handoff, tracked = self._handoffs.get(rid), self._tracked.get(rid)
        if handoff is None or tracked is None:
            core.finish_import(rid, ok=False)
            return
        span_attributes = {schema.REQUEST_ID: rid}
        spans.record_internal_span(
            schema.HANDOFF_WAIT, tracked.span, handoff.done_ns, time.time_ns(), span_attributes
        )
        transport = self._runner.kv_transport
        transfer = spans.start_internal_span(
            schema.HANDOFF_TRANSFER,
            tracked.span,
            {**span_attributes, schema.KV_TRANSPORT: transport},
        )
        ok, error = False, None
        try:
            result = await worker.import_kv(
                handoff.source.worker.address,
                handoff.source_blocks,
                dest_blocks,
                transport,
                spans.carrier_of(transfer),  # the worker's kv_transfer spans go under it
                rid,
                seq_id,
            )
            transfer.set_attribute(schema.KV_BYTES, result.num_bytes)
            transfer.set_attribute(schema.NUM_BLOCKS, result.num_blocks)
            ok = True
        except HopscopeError as exc:
            log.warning("KV transfer of %s failed (%s); recomputing it here", rid, exc)
            error = exc
        finally:
            if self._handoffs.pop(rid, None) is handoff:  # still ours (not aborted, not lost)
                # blocks gone before the answer: what was pulled is not this request's KV
                ok = handoff.source.release_handoff(rid) and ok
            else:
                ok = False
        if ok:
            self.num_imports += 1
            self.num_bytes_imported += result.num_bytes
        else:
            self.num_import_failures += 1
        spans.end_span(transfer, error)
        if ok and self._tracked.get(rid) is tracked:
            tracked.resume_span = spans.start_internal_span(
                schema.HANDOFF_RESUME, tracked.span, span_attributes
            )
        core.finish_import(rid, ok)
        self._wake()

    def drop(self, request_id: str) -> None:
        """A request leaves this runner before its KV came: the prefill worker frees it."""
        handoff = self._handoffs.pop(request_id, None)
        if handoff is not None:
            handoff.source.release_handoff(request_id)

    def on_worker_lost(self) -> None:
        """Every adopted request is recomputed here once the worker is back."""
        for rid in list(self._handoffs):
            self.drop(rid)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
