"""The one entry point shape for a service process: `python -m services.<name> --config JSON`
(the service's config: the settings tree as is under `settings`, serialized once by the
deployer, plus its wiring).

It configures logging and tracing, starts the service, prints
`HOPSCOPE_READY <address> metrics=<url or ->` once it serves (the launcher waits for that line), drains on SIGTERM/SIGINT and exits 0; a fatal
error at start-up is one clear line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
import typing
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from services.common.peer_auth import TOKEN_ENV
from services.config import HopscopeConfig
from tracing.setup import configure_tracing, shutdown_tracing

READY_PREFIX = "HOPSCOPE_READY"
T = TypeVar("T")


class ServiceConfig(Protocol):
    """A service's one config: the settings tree as is, plus its wiring (node_id, listen...)."""

    settings: HopscopeConfig
    node_id: str


S = TypeVar("S", bound=ServiceConfig)


class RunningService(Protocol):
    @property
    def address(self) -> str: ...

    @property
    def metrics_urls(self) -> dict[str, str]: ...

    async def stop(self, grace_s: float) -> None: ...


def config_to_json(config: Any) -> str:
    return json.dumps(dataclasses.asdict(config))


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a (nested) config dataclass; each __post_init__ validates again."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            value = config_from_dict(typing.cast(type[Any], hint), value)
        kwargs[f.name] = value
    return cls(**kwargs)


def run_service_main(
    name: str,
    config_cls: type[S],
    start: Callable[[S], Awaitable[RunningService]],
    argv: list[str] | None = None,
) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m services.{name}")
    parser.add_argument("--config", required=True, help="the service config as JSON")
    parser.add_argument(
        "--placement", default="", help="recorded on spans (default: the settings' placement)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"[{name}] %(levelname)s %(message)s")
    try:
        config = config_from_dict(config_cls, _with_secrets(json.loads(args.config)))
    except (ValueError, TypeError) as exc:
        print(f"error: bad {name} config: {exc}", file=sys.stderr)
        return 2
    node_id = config.node_id
    # `traces summarize` groups requests by placement and model and never pools across them
    model = config.settings.model.model
    try:
        configure_tracing(
            f"hopscope-{name}",
            {
                "hopscope.placement": args.placement or config.settings.deploy.placement,
                "hopscope.node_id": node_id,
                "hopscope.model": model,
            },
        )
    except ValueError as exc:
        print(f"error: tracing: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(name, config, start))
    finally:
        shutdown_tracing()


def _with_secrets(data: dict[str, Any]) -> dict[str, Any]:
    """Secrets come from the environment (a command line is visible to every user in `ps`);
    taken out of it, so that nothing this process starts inherits them. The token goes where
    the deployer made it: the settings tree's `security.internal_token`."""
    token = os.environ.pop(TOKEN_ENV, "")
    if not token:
        return data
    settings = data.get("settings", {})
    security = {**settings.get("security", {}), "internal_token": token}
    return {**data, "settings": {**settings, "security": security}}


async def _serve(name: str, config: S, start: Callable[[S], Awaitable[RunningService]]) -> int:
    try:
        service = await start(config)
    except Exception as exc:  # noqa: BLE001 - a fatal start-up error is reported, not a traceback
        print(f"error: {name} could not start: {exc}", file=sys.stderr, flush=True)
        return 2
    metrics_url = next(iter(service.metrics_urls.values()), "")
    print(f"{READY_PREFIX} {service.address} metrics={metrics_url or '-'}", flush=True)
    await wait_for_stop_signal()
    await service.stop(10.0)
    return 0


async def wait_for_stop_signal() -> None:
    """Return once SIGTERM or SIGINT arrives (the one "wait for a signal, then drain"). The
    handlers stay: a second signal during the drain must not kill it before spans are flushed."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
