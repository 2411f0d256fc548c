"""`hopscope serve` and `hopscope generate` (the cluster commands live in deploy/cluster_cli.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from services.config import HopscopeConfig

err = Console(stderr=True, highlight=False, soft_wrap=True)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from deploy.flags import add_flags

    serve = sub.add_parser("serve", help="deploy the pipeline and serve the front door")
    add_flags(serve, "serve")  # every flag from the configuration tree (services/config.py)
    serve.set_defaults(func=run_serve)

    gen = sub.add_parser(
        "generate", help="stream one generation (from a running front door, or embedded)"
    )
    gen.add_argument("prompt")
    add_flags(gen, "generate")
    gen.set_defaults(func=run_generate)


def spec_from_args(args: argparse.Namespace) -> HopscopeConfig:
    """The configuration tree from parsed flags (relative paths made absolute)."""
    from deploy.flags import config_from_args

    config = config_from_args(args)
    if config.security.tls_dir:
        config = config.with_(tls_dir=_absolute(config.security.tls_dir))
    return config


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve()) if path else ""


def resolve_security(spec: HopscopeConfig, has_key: bool = False) -> HopscopeConfig:
    """The TLS directory from the placement YAML when no --tls-dir, checked now (a missing file
    is named before anything starts); a warning when the front door is reachable from other
    machines with nothing protecting it."""
    from deploy.placement import resolve_placement
    from services.common.peer_auth import warn_if_exposed
    from services.common.tls import SERVICE_IDENTITIES, read_tls_files

    tls_dir = spec.security.tls_dir or resolve_placement(spec.deploy.placement).tls_dir
    if tls_dir:
        read_tls_files(tls_dir, SERVICE_IDENTITIES[:3])  # TlsError (a ValueError) names the file
    warn_if_exposed("the front door", spec.deploy.front_door, is_protected=bool(tls_dir) or has_key)
    return spec.with_(tls_dir=tls_dir)


# ---------------------------------------------------------------------------- serve
def run_serve(args: argparse.Namespace) -> int:
    from deploy.spec import NO_RAY_PLACEMENTS, check_tokenizer_replicas, with_concrete_http_port

    try:
        has_key = bool(args.api_key or os.environ.get("HOPSCOPE_API_KEY"))
        # a bad value or a missing placement file is named here, before anything starts
        spec = resolve_security(spec_from_args(args), has_key)
        check_tokenizer_replicas(spec)
    except ValueError as exc:
        err.print(f"error: {exc}")
        return 2
    from deploy.lifecycle import LaunchError, check_port_free

    deploy = spec.deploy
    try:  # before anything slow (a model load, a kernel build) starts
        check_port_free(deploy.host, deploy.port)
    except LaunchError as exc:
        err.print(f"error: {exc}", markup=False)
        return 1
    if spec.security.api_key is not None:  # every placement's front door reads it, at start
        from services.tokenizer.auth import API_KEY_ENV

        os.environ[API_KEY_ENV] = spec.security.api_key
    if deploy.placement != "inproc":  # a restarted front door must come back on the same port
        spec = with_concrete_http_port(spec)
    log_dir = Path(deploy.log_dir) if deploy.log_dir is not None else None
    if not deploy.no_ray:
        from deploy.ray_serve import run_ray_serve

        if log_dir is not None:
            err.print("note: --log-dir keeps --no-ray service logs; Ray keeps its actors' logs")
        return run_ray_serve(spec, deploy.ray_address)
    if deploy.placement not in NO_RAY_PLACEMENTS:
        err.print(
            f"error: placement {deploy.placement!r} needs Ray; without Ray use one of "
            f"{', '.join(NO_RAY_PLACEMENTS)}"
        )
        return 2
    if deploy.placement == "inproc":
        return _with_tracing(
            "hopscope-inproc",
            deploy.placement,
            lambda: asyncio.run(_serve_inproc(spec)),
            model=spec.model.model,
        )
    return _serve_local(spec, log_dir)


def _with_tracing(service_name: str, placement: str, run: Any, model: str = "") -> int:
    """Run in a process that hosts spans itself (inproc serve, generate); flush at the end."""
    from tracing.setup import configure_tracing, shutdown_tracing

    try:
        configure_tracing(service_name, {"hopscope.placement": placement, "hopscope.model": model})
    except ValueError as exc:
        err.print(f"error: tracing: {exc}")
        return 2
    try:
        return int(run())
    finally:
        shutdown_tracing()


async def _serve_inproc(spec: HopscopeConfig) -> int:
    from deploy.inproc import start_inproc
    from deploy.lifecycle import announce_front_door, announce_metrics
    from deploy.spec import announce_http
    from services.common.process import wait_for_stop_signal

    try:
        pipeline = await start_inproc(spec)
    except Exception as exc:  # noqa: BLE001 - fatal start-up error: one clear line
        err.print(f"error: could not start: {exc}")
        return 1
    announce_front_door(pipeline.address, spec.deploy.placement, spec.model.model)
    if pipeline.front_door.http_url:
        announce_http(pipeline.front_door.http_url)
    announce_metrics(pipeline.metrics_urls)
    await wait_for_stop_signal()
    err.print("draining: health NOT_SERVING, finishing in-flight streams")
    await pipeline.stop()
    return 0


def _serve_local(spec: HopscopeConfig, log_dir: Path | None) -> int:
    from deploy.lifecycle import (
        LaunchError,
        StopRequest,
        announce_front_door,
        announce_metrics,
        supervise,
    )
    from deploy.local import LocalDeployment
    from deploy.spec import announce_http

    deployment = LocalDeployment(spec, log_dir)
    stop = StopRequest()
    try:
        address = deployment.start()
        announce_front_door(address, spec.deploy.placement, spec.model.model)
        if spec.deploy.http_listen:
            announce_http(f"http://{spec.deploy.http_listen}")
        announce_metrics(deployment.metrics_urls)
        if log_dir is not None:
            err.print(f"service logs: {log_dir}/{{worker,scheduler,tokenizer}}.log", markup=False)
        supervise(
            deployment.supervise_once, stop, 0.2, lambda event: err.print(event, markup=False)
        )
    except LaunchError as exc:
        err.print(f"error: {exc}", markup=False)
        deployment.stop()
        return 1
    err.print("draining: front door first, then scheduler and worker")
    deployment.stop()
    return 0


# ---------------------------------------------------------------------------- generate
def run_generate(args: argparse.Namespace) -> int:
    from deploy.client import GenerateError, build_request, random_weights_note, raw_prompt_note
    from deploy.flags import given_engine_flags

    if args.address and (given := given_engine_flags(args)):
        err.print(
            f"error: {', '.join(given)} set(s) up the embedded pipeline; with --address the "
            "running server's own settings apply: leave them out"
        )
        return 2
    try:
        request = build_request(args)
        credentials = _client_credentials(args)
    except ValueError as exc:
        err.print(f"error: {exc}")
        return 2
    result: dict[str, Any] = {}

    def run() -> int:
        result.update(asyncio.run(_generate(args, request, credentials)))
        return 0

    try:
        _with_tracing("hopscope-cli", "inproc" if not args.address else "", run)
    except GenerateError as exc:
        err.print(f"error: {exc}")
        return 1
    has_chat_template = result.pop("has_chat_template", False)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"\n[{result['finish_reason']}; {result['usage']['completion_tokens']} tokens]",
            file=sys.stderr,
        )
    model = result.get("model") or spec_from_args(args).model.model
    for note in (
        random_weights_note(model),
        raw_prompt_note(model, has_chat_template, args.chat),
    ):
        if note:
            print(note, file=sys.stderr)
    return 0


def _client_credentials(args: argparse.Namespace) -> Any:
    """TLS credentials for --tls-ca (and --tls-cert/--tls-key); None without --tls-ca."""
    if not args.tls_ca:
        if args.tls_cert or args.tls_key:
            raise ValueError("--tls-cert/--tls-key need --tls-ca (the CA that signed the server)")
        return None
    from services.common.tls import client_credentials

    return client_credentials(args.tls_ca, args.tls_cert, args.tls_key)


async def _generate(args: argparse.Namespace, request: Any, credentials: Any) -> dict[str, Any]:
    from deploy.client import stream_generate

    on_text = None if args.json else (lambda text: print(text, end="", flush=True))
    if args.address:
        return await stream_generate(
            args.address, request, args.timeout_s, on_text, credentials=credentials
        )
    from deploy.inproc import start_inproc

    try:
        pipeline = await start_inproc(spec_from_args(args).with_(port=0))
    except Exception as exc:
        from deploy.client import GenerateError

        raise GenerateError(f"could not start the embedded pipeline: {exc}") from exc
    try:
        return await stream_generate(pipeline.address, request, args.timeout_s, on_text)
    finally:
        await pipeline.stop(grace_s=1.0)
