"""The one health publisher: whether a service is SERVING, remembered and published.

A service is SERVING exactly when each of its parts is: the scheduler when its worker is up, the
front door when its scheduler stream is connected and the scheduler itself reports SERVING. Each
part reports through `set_serving(is_serving, part=...)` (synchronous: callable from any callback
on the loop, or from another thread), before or after the gRPC server exists: the state is
remembered and published to `grpc.health.v1` (for "" and every service name) once a server is
attached, and on every change after that. Once draining, it stays NOT_SERVING.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from grpc_health.v1 import health, health_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthPublisher:
    """`is_serving` is the starting state of the default part ""."""

    def __init__(self, is_serving: bool = False) -> None:
        self._parts: dict[str, bool] = {"": is_serving}
        self._is_draining = False
        self._servicer: health.aio.HealthServicer | None = None
        self._service_names: tuple[str, ...] = ()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def is_serving(self) -> bool:
        return not self._is_draining and all(self._parts.values())

    def set_serving(self, is_serving: bool, part: str = "") -> None:
        """Record one part's state (a new part name joins the parts that must all be serving)."""
        was_serving = self.is_serving
        self._parts[part] = is_serving
        if self.is_serving != was_serving:
            self._schedule_publish()

    async def attach(
        self, servicer: health.aio.HealthServicer, service_names: Sequence[str]
    ) -> None:
        """Publish to `servicer` from now on (for "" and `service_names`), starting now."""
        self._servicer = servicer
        self._service_names = ("", *service_names)
        self._loop = asyncio.get_running_loop()
        await self._publish()

    async def drain(self) -> None:
        """NOT_SERVING for good (the server is stopping); returns once published."""
        self._is_draining = True
        await self._publish()

    async def flush(self) -> None:
        """Wait until every change so far is published (tests, and ordered shutdowns)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    def _schedule_publish(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # not attached yet: `attach` publishes the state remembered by then
        try:
            is_on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            is_on_loop = False
        if is_on_loop:
            self._start_publish()
        else:
            loop.call_soon_threadsafe(self._start_publish)

    def _start_publish(self) -> None:
        task = asyncio.get_running_loop().create_task(self._publish(), name="health-publish")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self) -> None:
        # Each publish writes the state current when it holds the lock, so however the tasks
        # interleave, the last one leaves the latest state on every name.
        async with self._lock:
            if self._servicer is None:
                return
            status = SERVING if self.is_serving else NOT_SERVING
            for name in self._service_names:
                await self._servicer.set(name, status)
