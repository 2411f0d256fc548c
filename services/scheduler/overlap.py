"""Async scheduling, the runner's side: a second step (or multi-step run) queued behind the
running one, built (`Scheduler.schedule_ahead`) before the running one's tokens are known; each
turn takes the oldest one's answer. A collaborator the runner makes when the core's config asks
for it and calls once a turn (`turn`) and when its steps are void (`drop`); the synchronous turn
is the runner's own."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from services.scheduler.core import Scheduler
from services.scheduler.request import Batch

StepAnswer = tuple[list[dict[int, int]], float]  # tokens sampled by each step, worker ms


@dataclass(slots=True)
class _Sent:
    """A step (or multi-step run) handed to the worker, not yet answered."""

    run: list[Batch]
    task: asyncio.Task[StepAnswer]
    started_s: float


class OverlappedSteps:
    """`step` runs a step (and the ones chained behind it) on the worker, `apply` takes its
    answer, `on_error` a step that got none, `wait_for_work` idles the loop: the runner's."""

    def __init__(
        self,
        core: Scheduler,
        step: Callable[[Batch, Sequence[Batch]], Coroutine[Any, Any, StepAnswer]],
        apply: Callable[[list[Batch], list[dict[int, int]], float, float], None],
        on_error: Callable[[Exception, Batch], None],
        wait_for_work: Callable[[float], Awaitable[None]],
    ) -> None:
        self._core = core
        self._step = step
        self._apply = apply
        self._on_error = on_error
        self._wait_for_work = wait_for_work
        self._sent: deque[_Sent] = deque()  # oldest first, at most two
        self._last_answer_s = 0.0  # when the previous step's answer came

    async def turn(self, now: float) -> None:
        """Keep a second step queued behind the running one, then take the oldest's answer."""
        if not self._sent:
            run = self._core.schedule_run(now)
            if not run:
                await self._wait_for_work(now)
                return
            self._send(run, now)
        if len(self._sent) == 1 and (ahead := self._core.schedule_run_ahead(now)):
            self._send(ahead, now)
        await self._take_oldest()

    def drop(self) -> None:
        """The steps sent are void (their stream is gone; the core forgets them too)."""
        for sent in self._sent:
            sent.task.cancel()
        self._sent.clear()

    def _send(self, run: list[Batch], now: float) -> None:
        task = asyncio.create_task(self._step(run[0], run[1:]), name=f"step-{run[0].step_id}")
        task.add_done_callback(_retrieve)  # a dropped step's error is not "never retrieved"
        self._sent.append(_Sent(run, task, now))

    async def _take_oldest(self) -> None:
        sent = self._sent[0]
        try:
            sampled_per_step, step_ms = await sent.task
        except Exception as exc:  # noqa: BLE001 -- on_error logs it, the loop goes on
            # the step queued behind it may be built on its tokens: wait for its answer (so the
            # stream stays in step) and drop it; the core reruns its sequences
            await asyncio.gather(*(s.task for s in self._sent), return_exceptions=True)
            self._sent.clear()
            self._on_error(exc, sent.run[0])
            return
        self._sent.popleft()
        # a step sent while another ran started on the worker when that one's answer left it:
        # its round trip counts from then (else the hop's estimate would include a whole step)
        started_s = max(sent.started_s, self._last_answer_s)
        self._last_answer_s = time.monotonic()
        self._apply(sent.run, sampled_per_step, step_ms, started_s)


def _retrieve(task: asyncio.Task[StepAnswer]) -> None:
    if not task.cancelled():
        task.exception()
