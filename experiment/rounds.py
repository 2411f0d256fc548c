"""One variant in one round: a fresh deployment with tracing on, warm-up, the workload through
`hopscope bench` as a child process, then Describe, Prometheus metrics and CPU time saved into
DIR/<variant>/round-<k>/ (the layout in experiment/layout.py)."""

from __future__ import annotations

import asyncio
import os
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

from deploy.lifecycle import Child, LaunchError, ServeChild, start_serve
from experiment import layout
from experiment.background import background_load
from experiment.cpu import (
    CpuReadError,
    contention_document,
    contention_snapshot,
    read_cpu_s,
    service_pids,
    usable_cores,
)
from experiment.plan import Plan
from experiment.round_kit import (
    BENCH_START_TIMEOUT_S,
    TARGET_RE,
    RoundContext,
    collector_port,
    count_spans,
    fresh_round_dir,
    launch_bench,
    move_requests,
    start_collector,
    tracing_env,
    uninterruptible,
    wait_bench,
    warm_up_shape,
    write_cpu,
    write_round_done,
)
from experiment.target import run_target_round

METRICS_TIMEOUT_S = 5.0


def run_round(ctx: RoundContext) -> Path:
    """Run it; returns the round directory (complete). RoundError when it cannot finish."""
    if ctx.plan.target is not None:
        return run_target_round(ctx)
    round_dir = fresh_round_dir(ctx)
    started = time.time()
    collector: Child | None = None
    serve: ServeChild | None = None
    bench: Child | None = None
    service_logs: dict[str, Any] = {}
    try:
        collector = start_collector(round_dir)
        started_pids = {"collector": collector.pid}
        _record_pids(round_dir, started_pids)
        env = tracing_env(collector_port(collector))
        serve = _start_serve(ctx, round_dir, env)
        started_pids["serve"] = serve.child.pid
        _record_pids(round_dir, started_pids)
        pids = service_pids(serve.describe(), serve.child.pid)
        _record_pids(round_dir, started_pids | pids)
        warm_up(serve.address, ctx.plan)
        before = {name: read_cpu_s(pid) for name, pid in pids.items()}
        background = ctx.plan.background(ctx.variant)
        with background_load(background, round_dir / "logs" / "background.log") as neighbours:
            started_pids |= {f"background-{i + 1}": pid for i, pid in enumerate(neighbours)}
            bench = launch_bench(ctx, round_dir, ["--address", serve.address], env)
            _record_pids(round_dir, started_pids | pids | {"client": bench.pid})
            bench.wait_for_line(TARGET_RE, BENCH_START_TIMEOUT_S)
            client_before = read_cpu_s(bench.pid)
            # inside: this process's tree (deployment, client, collector) and the services
            # (a Ray cluster's actors need not be under it); the neighbours are outside
            inside = [os.getpid(), *pids.values()]
            contention_before = contention_snapshot(pids, inside, neighbours)
            wait_bench(bench, ctx.plan.timeout_s)
            contention_after = contention_snapshot(pids, inside, neighbours)
        contention = contention_document(contention_before, contention_after, len(usable_cores()))
        contention["background"] = background.to_json() | {"pids": neighbours}
        move_requests(round_dir)
        processes = {n: _used(pid, read_cpu_s(pid) - before[n]) for n, pid in pids.items()}
        processes["client"] = _used(bench.pid, (bench.cpu_s or 0.0) - client_before)
        layout.write_json(round_dir / "describe.json", serve.describe())
        scrape_metrics(round_dir / "metrics", serve.child.log_path)
        write_cpu(round_dir, processes, contention)
        service_logs = open_service_logs(pids, skip_under=round_dir)
    except (LaunchError, CpuReadError, TimeoutError, OSError) as exc:
        raise ctx.error(exc) from exc
    finally:
        with uninterruptible():
            if bench is not None:
                bench.stop()
            if serve is not None:
                serve.stop()  # drains: every service flushes its spans to the collector
            if collector is not None:
                collector.stop()  # after serve and bench: it has every span they flushed
            save_service_logs(service_logs, round_dir / "logs")
    spans = count_spans(round_dir / "spans.jsonl")
    write_round_done(ctx, round_dir, started, {"ray_address": ctx.ray_address, "num_spans": spans})
    return round_dir


def _start_serve(ctx: RoundContext, round_dir: Path, env: dict[str, str]) -> ServeChild:
    argv = ctx.variant.serve_argv()
    if ctx.ray_address and ctx.variant.is_ray:
        argv += ["--ray-address", ctx.ray_address]
    argv += metrics_args()
    if not ctx.variant.is_ray and "--log-dir" in _serve_options():
        argv += ["--log-dir", str(round_dir / "logs")]  # each service's log, kept
    return start_serve(argv, log_path=round_dir / "logs" / "serve.log", env=env)


def metrics_args() -> list[str]:
    """--metrics on free ports where `serve` can pick them (`--metrics-port 0`); the fixed
    default ports would collide with any other hopscope serving metrics on this machine."""
    return ["--metrics", "--metrics-port", "0"] if "--metrics-port" in _serve_options() else []


def _serve_options() -> set[str]:
    from experiment.flags import serve_parser

    return {o for a in serve_parser()._actions for o in a.option_strings}


def open_service_logs(pids: dict[str, int], skip_under: Path) -> dict[str, Any]:
    """Open each service process's stdout (its log file, wherever serve put it: a temp dir that
    is deleted at stop, or a Ray session dir) so it can be copied after the drain."""
    opened = {}
    for name, pid in pids.items():
        try:
            target = os.readlink(f"/proc/{pid}/fd/1")
            if target.startswith(str(skip_under)):
                continue  # already in the round's logs (serve.log)
            if target.startswith("/") and os.path.isfile(target):
                opened[name] = open(target, "rb")  # noqa: SIM115 - closed in save_service_logs
        except OSError:
            continue
    return opened


def save_service_logs(opened: dict[str, Any], folder: Path) -> None:
    for name, handle in opened.items():
        with handle:
            (folder / f"{name}.log").write_bytes(handle.read())


def _used(pid: int, cpu_s: float) -> dict[str, float | int]:
    return {"pid": pid, "cpu_s": round(cpu_s, 4)}


def _record_pids(round_dir: Path, pids: dict[str, int]) -> None:
    layout.write_json(round_dir / "pids.json", pids)


# ---------------------------------------------------------------------------- warm-up
def warm_up(address: str, plan: Plan) -> None:
    """A few requests of the workload's shape on the fresh deployment (first-call costs: kernel
    loading, allocator growth, connection set-up), concurrently; not measured."""
    if plan.warmup <= 0:
        return
    asyncio.run(_warm_up(address, plan))


async def _warm_up(address: str, plan: Plan) -> None:
    from deploy.client import stream_generate
    from protos import hopscope_pb2 as pb

    prompt, max_tokens = warm_up_shape(plan)
    request = pb.GenerateRequest(prompt=prompt, max_tokens=max_tokens, ignore_eos=True)
    await asyncio.gather(*(stream_generate(address, request, 300.0) for _ in range(plan.warmup)))


# ---------------------------------------------------------------------------- metrics
METRICS_LINE_RE = re.compile(r"^hopscope metrics: (?P<urls>.+)$", re.MULTILINE)


def scrape_metrics(folder: Path, serve_log: Path) -> dict[str, Path]:
    """GET /metrics of each service whose metrics address the serve log names."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for service, address in metrics_addresses(serve_log).items():
        try:
            with urllib.request.urlopen(
                f"http://{address}/metrics", timeout=METRICS_TIMEOUT_S
            ) as r:
                text = r.read().decode()
        except OSError as exc:
            text = f"# scrape of http://{address}/metrics failed: {exc}\n"
        path = folder / f"{service}.prom"
        path.write_text(text)
        written[service] = path
    return written


def metrics_addresses(serve_log: Path) -> dict[str, str]:
    """service -> HOST:PORT from the line serve prints once ready:
    `hopscope metrics: tokenizer http://127.0.0.1:41001/metrics, scheduler http://...`."""
    try:
        match = METRICS_LINE_RE.search(serve_log.read_text(errors="replace"))
    except OSError:
        return {}
    addresses = {}
    for item in match.group("urls").split(", ") if match else []:
        name, _, url = item.strip().partition(" ")
        address = url.removeprefix("http://").split("/", 1)[0]
        if name and address:
            addresses[name] = address
    return addresses
