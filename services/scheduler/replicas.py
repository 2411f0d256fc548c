"""N model-worker replicas behind one scheduler: one `SchedulerRunner` per replica (its own core,
KV-block accounting, batch, worker stream and loop) and a `Router` that picks the replica of each
request. One worker is a set of one: every request goes through the same routing path.

`RequestRunner` is what the servicer, Describe and the in-process client need of a scheduler (a
`ReplicaSet`, or a bare `SchedulerRunner` in tests): the one interface they are typed against.

A replica whose worker is lost hands its requests to the healthy replicas at once (their tokens
so far are recomputed there, so seeded outputs are unchanged), and gets no new request until its
worker is back; with no healthy replica left they stay and wait for their own worker, as with one.

Disaggregated (workers whose Info says role `prefill` / `decode`): new requests go to the
prefill replicas only; a prefill replica's core hands each request whose prompt is done to
`_hand_off`, which gives it to the least loaded decode replica (a connected one if any), whose
worker pulls the KV from the prefill worker (runner.py). With no prefill worker up, a decode
replica takes new requests itself (it runs prompts as a mixed worker would).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from prometheus_client import Gauge

from services.common.errors import UnavailableError
from services.common.metrics import ServiceMetrics
from services.scheduler.request import Request
from services.scheduler.router import ReplicaView, Router
from services.scheduler.runner import SchedulerRunner, Sink, Tracked

log = logging.getLogger(__name__)


class RequestRunner(Protocol):
    """The scheduler as its front ends see it: start/stop, take and abort requests, the worker
    replicas behind it (for Describe) and the metrics they share."""

    metrics: ServiceMetrics

    @property
    def is_worker_up(self) -> bool: ...

    @property
    def replicas(self) -> Sequence[SchedulerRunner]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def submit(self, request: Request, sink: Sink, transport: str) -> None: ...

    def abort(self, request_id: str) -> None: ...


class ReplicaSet:
    def __init__(
        self,
        runners: list[SchedulerRunner],
        router: Router,
        metrics: ServiceMetrics,
        link_bandwidth_mbps: list[float] | None = None,
        on_health: Callable[[bool], None] = lambda is_serving: None,
    ) -> None:
        assert runners, "a replica set needs at least one replica"
        self._replicas = runners
        self.router = router
        self.metrics = metrics
        self._bandwidth = link_bandwidth_mbps or [0.0] * len(runners)
        self._on_health = on_health
        self._down: set[int] = set()  # replicas whose worker was lost and is not back yet
        for index, runner in enumerate(runners):
            runner.replica = str(index)
            runner.set_health_callback(functools.partial(self._replica_health, index))
        steps = Gauge(
            "hopscope_replica_steps",
            "Steps run by each worker replica (cumulative)",
            ("service", "replica"),
            registry=metrics.registry,
        )
        up = Gauge(
            "hopscope_replica_up",
            "Whether the replica's worker is connected",
            ("service", "replica"),
            registry=metrics.registry,
        )
        for index, runner in enumerate(runners):
            steps.labels(metrics.service_name, str(index)).set_function(
                functools.partial(_num_steps, runner)
            )
            up.labels(metrics.service_name, str(index)).set_function(
                functools.partial(_is_up, runner)
            )

    # ---- the runner's interface ------------------------------------------------------------

    @property
    def replicas(self) -> list[SchedulerRunner]:
        return self._replicas

    @property
    def is_worker_up(self) -> bool:
        return any(r.is_worker_up for r in self.replicas)

    async def start(self) -> None:
        try:
            await asyncio.gather(*(r.start() for r in self.replicas))
            self._set_roles()
        except BaseException:
            await self.stop()
            raise
        self._on_health(True)

    @property
    def is_disaggregated(self) -> bool:
        return any(r.role != "mixed" for r in self.replicas)

    def _set_roles(self) -> None:
        roles = {r.role for r in self.replicas}
        if roles != {"mixed"} and roles != {"prefill", "decode"}:
            raise UnavailableError(
                f"the workers' roles are {', '.join(sorted(roles))}: a scheduler needs prefill "
                "and decode workers (disaggregated) or only mixed ones"
            )
        for runner in self.replicas:
            if runner.role == "prefill":
                assert runner.core is not None
                runner.core.hands_off = True
                runner.on_handoff = self._hand_off

    async def stop(self) -> None:
        await asyncio.gather(*(r.stop() for r in self.replicas), return_exceptions=True)

    def submit(self, request: Request, sink: Sink, transport: str) -> None:
        started = [i for i, r in enumerate(self.replicas) if r.core is not None]
        if not started:
            raise UnavailableError("no model worker replica is available")
        # With no worker up, a request waits for one (as it would with one replica); a replica
        # whose worker is given up refuses it in its own submit.
        # disaggregated: prompts go to the prefill workers (while one is up), not the decode ones
        entry = [i for i in started if self.replicas[i].role != "decode"]
        up = [i for i in started if self.replicas[i].is_worker_up]
        candidates = [i for i in entry if i in up] or up or entry or started
        decision = self.router.choose(
            [self._view(i, request.prompt_token_ids) for i in candidates],
            len(request.prompt_token_ids),
            request.max_tokens,
        )
        self.replicas[decision.chosen].submit(request, sink, transport, decision.span_attributes())

    def abort(self, request_id: str) -> None:
        for runner in self.replicas:
            if runner.is_tracking(request_id):
                runner.abort(request_id)

    # ---- internals -------------------------------------------------------------------------

    def _hand_off(
        self, source: SchedulerRunner, tracked: Tracked, blocks: list[int], done_ns: int
    ) -> None:
        """A prefill replica's request whose prompt is done: to the least loaded decode replica
        (a connected one if any; else it waits there for its worker, as a request would)."""
        decoders = [r for r in self.replicas if r.role == "decode" and r.core is not None]
        assert decoders, "a prefill replica without decode replicas (_set_roles refuses that)"
        connected = [r for r in decoders if r.is_worker_up] or decoders
        target = min(connected, key=_decode_load)
        target.adopt_prefilled(tracked, source, blocks, done_ns)

    def _view(self, index: int, prompt_token_ids: list[int]) -> ReplicaView:
        runner = self.replicas[index]
        core = runner.core
        assert core is not None
        return ReplicaView(
            index=index,
            load_tokens=core.num_pending_tokens,
            hit_tokens=core.num_cached_prompt_tokens(prompt_token_ids),
            hop_rtt_ms=runner.hop_rtt_ms,
            tokens_per_ms=runner.tokens_per_ms,
            link_bandwidth_mbps=self._bandwidth[index],
        )

    def _replica_health(self, index: int, is_up: bool) -> None:
        self._on_health(self.is_worker_up)
        if is_up:
            if index in self._down:
                self._down.discard(index)
                log.warning("worker replica %d is back", index)
            return
        self._down.add(index)
        others = [i for i, r in enumerate(self.replicas) if i != index and r.is_worker_up]
        if not others:
            return  # nowhere to go: they wait for their own worker (recomputed there)
        moved = self.replicas[index].take_all()
        for k, tracked in enumerate(moved):
            target = others[k % len(others)]
            self.replicas[target].adopt(tracked)
        log.warning(
            "worker replica %d lost; %d requests recomputed on replicas %s",
            index,
            len(moved),
            others,
        )


def _decode_load(runner: SchedulerRunner) -> int:
    core = runner.core
    assert core is not None
    return core.num_running + core.num_importing + core.num_waiting


def _num_steps(runner: SchedulerRunner) -> float:
    return float(runner.num_steps)


def _is_up(runner: SchedulerRunner) -> float:
    return float(runner.is_worker_up)
