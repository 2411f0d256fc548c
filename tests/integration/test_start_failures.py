"""A service that cannot bind its address stops everything it had started: its /metrics
endpoints, its scheduler loop, its channels. A second try on a free port then works."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from deploy.inproc import start_inproc
from deploy.spec import scheduler_config, worker_config
from services.common.server import BindError
from services.config import HopscopeConfig
from services.scheduler.server import start_scheduler
from services.worker.server import start_worker


@contextmanager
def _taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _free_port_triple() -> int:
    """A base port P with P, P+1 and P+2 free right now."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            base = sock.getsockname()[1]
        if base + 2 < 65536 and all(_is_free(base + i) for i in range(3)):
            return base
    raise RuntimeError("no three consecutive free ports")


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _other_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}


def test_inproc_pipeline_that_cannot_bind_stops_its_metrics_and_its_scheduler() -> None:
    base = _free_port_triple()

    async def scenario() -> set[asyncio.Task[object]]:
        with _taken_port() as port:
            spec = HopscopeConfig.of(port=port, metrics_port=base)
            with pytest.raises(BindError, match=str(port)):
                await start_inproc(spec)
        await asyncio.sleep(0)
        return _other_tasks()

    leftover = asyncio.run(scenario())
    assert leftover == set(), leftover  # the scheduler loop was cancelled
    assert [_is_free(base + i) for i in range(3)] == [True, True, True]  # /metrics stopped


def test_scheduler_that_cannot_bind_stops_its_loop_channel_and_metrics() -> None:
    base = _free_port_triple()
    spec = HopscopeConfig.of(port=0, metrics_port=base)

    async def scenario() -> set[str]:
        worker = await start_worker(worker_config(spec, "127.0.0.1:0"))
        try:
            with _taken_port() as port:
                config = scheduler_config(spec, f"127.0.0.1:{port}", worker.address)
                with pytest.raises(BindError, match=str(port)):
                    await start_scheduler(config)
            await asyncio.sleep(0)
            leftover = {t.get_name() for t in _other_tasks()} & {"scheduler-loop"}
            assert _is_free(base + 1), "the scheduler's /metrics is still served"
            # the port is free again: a second scheduler on it starts and drives the worker
            config = scheduler_config(spec, "127.0.0.1:0", worker.address)
            scheduler = await start_scheduler(config)
            await scheduler.stop(0)
        finally:
            await worker.stop(0)
        return leftover

    assert asyncio.run(scenario()) == set()
