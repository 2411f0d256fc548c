"""The HTTP front door's server: uvicorn on the tokenizer's own event loop, in its process."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from services.tokenizer.http.app import FrontDoorApp

START_TIMEOUT_S = 30.0
HTTP_SCHEME = "http://"


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the host process owns SIGINT/SIGTERM and drains."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class HttpServer:
    server: uvicorn.Server
    task: asyncio.Task[None]
    address: str  # HOST:PORT, the real port when 0 was asked for

    @property
    def url(self) -> str:
        return f"{HTTP_SCHEME}{self.address}"

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, let in-flight responses finish for up to `grace_s`, then close."""
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), grace_s)
        except TimeoutError:
            self.server.force_exit = True
            await self.task


async def start_http_server(
    front: FrontDoorApp, listen: str, tracer_provider: Any = None, reuse_port: bool = False
) -> HttpServer:
    """Serve `front` on `listen` ("HOST:PORT"; port 0 picks one). Spans go to the global
    tracer provider (tracing/setup.py) unless `tracer_provider` is given (tests).
    `reuse_port`: share the port with the other front-door replicas (SO_REUSEPORT)."""
    _instrument(front, tracer_provider)
    host, port = listen.rsplit(":", 1)
    sock = _bind(host, int(port), reuse_port)
    config = uvicorn.Config(
        front.app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="http-front-door")
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise RuntimeError(f"the HTTP server on {listen} stopped at start-up")
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"the HTTP server on {listen} did not start in {START_TIMEOUT_S} s")
        await asyncio.sleep(0.01)
    return HttpServer(server, task, f"{host}:{sock.getsockname()[1]}")


def _bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen for HTTP on {host}:{port}: {exc}") from exc
    sock.set_inheritable(True)
    return sock


def _instrument(front: FrontDoorApp, tracer_provider: Any) -> None:
    """A SERVER span per request that continues the client's `traceparent` (the per-chunk
    send/receive spans are left out: one span per token would cost more than it says)."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        front.app,
        tracer_provider=tracer_provider,
        exclude_spans=["receive", "send"],
        excluded_urls="/health,/metrics",
    )
