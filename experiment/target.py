"""One variant-round against an external OpenAI-compatible server (a plan's `target:`): a fresh
server per round when the plan starts it (target.start through deploy/lifecycle.py, the
variant's flags on its command line), warm-up, the workload through `hopscope bench --url` as a
child, then its Prometheus /metrics (before and after the workload) and the CPU time of its whole
process tree saved into DIR/<variant>/round-<k>/ — the same layout as a hopscope round, less the
Describe (a `target.json` instead). The round's OTLP collector receives the bench's spans and
whatever the server exports: the start command gets its address as `{otlp_endpoint}` (vLLM's
`--otlp-traces-endpoint`), and the server's environment the usual OTEL_* variables."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from deploy.lifecycle import Child, LaunchError, free_port, launch, wait_http_ready
from experiment import layout
from experiment.cpu import CpuReadError, tree_cpu_s
from experiment.plan import Plan, Target
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

STOP_COMMAND_TIMEOUT_S = 60.0
STOP_GRACE_S = 30.0
METRICS_TIMEOUT_S = 5.0
SERVER = "server"  # the process name in cpu.json and the metrics file's stem


def run_target_round(ctx: RoundContext) -> Path:
    """Run it; returns the complete round directory. RoundError when it cannot finish."""
    plan = ctx.plan
    target = ctx.variant.target
    assert target is not None
    round_dir = fresh_round_dir(ctx)
    logs = round_dir / "logs"
    started = time.time()
    collector: Child | None = None
    server: Child | None = None
    bench: Child | None = None
    port = free_port() if target.start else 0
    url = target.url_for(port)
    info: dict[str, Any] = {"url": url, "flags": dict(ctx.variant.serve)}
    try:
        collector = start_collector(round_dir)
        pids: dict[str, int] = {"collector": collector.pid}
        env = tracing_env(collector_port(collector))
        otlp_endpoint = env["OTEL_EXPORTER_OTLP_ENDPOINT"]
        command = target.command(ctx.variant.serve, port, otlp_endpoint) if target.start else None
        info["command"] = command
        if command is not None:
            t0 = time.monotonic()
            server = launch(
                [command], name="target server", log_path=logs / "server.log",
                program=["/bin/sh", "-c"], env=env,
            )  # fmt: skip
            pids[SERVER] = server.pid
            layout.write_json(round_dir / "pids.json", pids)
            wait_http_ready(server, url, target.ready_timeout_s, target.ready_path)
            info["startup_s"] = round(time.monotonic() - t0, 3)
        else:
            _check_up(url, target)
        info["models"] = _get_json(url + "/v1/models")
        layout.write_json(round_dir / "target.json", info)
        warm_up(url, plan, info["models"])
        scrape(url, target, round_dir / "metrics_before")
        before = tree_cpu_s(server.pid) if server is not None else None
        # traced: its root span's W3C context reaches the server, whose request span is then
        # the child of the bench's CLIENT span (the hop is their difference)
        bench = launch_bench(ctx, round_dir, ["--url", url], env)
        layout.write_json(round_dir / "pids.json", pids | {"client": bench.pid})
        bench.wait_for_line(TARGET_RE, BENCH_START_TIMEOUT_S)
        wait_bench(bench, plan.timeout_s)
        move_requests(round_dir)
        processes: dict[str, dict[str, float | int]] = {}
        if server is not None and before is not None:
            processes[SERVER] = {
                "pid": server.pid,
                "cpu_s": round(tree_cpu_s(server.pid) - before, 4),
            }
        processes["client"] = {"pid": bench.pid, "cpu_s": round(bench.cpu_s or 0.0, 4)}
        scrape(url, target, round_dir / "metrics")
        write_cpu(round_dir, processes)
    except (LaunchError, CpuReadError, TimeoutError, OSError, ValueError) as exc:
        raise ctx.error(exc) from exc
    finally:
        with uninterruptible():
            if bench is not None:
                bench.stop()
            if server is not None:
                stop_server(server, target, port, logs / "server.log")
            if collector is not None:
                collector.stop()  # after the server: it has every span the server flushed
    spans = count_spans(round_dir / "spans.jsonl")
    write_round_done(ctx, round_dir, started, {"target": url, "num_spans": spans})
    return round_dir


def stop_server(server: Child, target: Target, port: int, log_path: Path) -> None:
    """target.stop (when the plan gives one), then SIGTERM / SIGKILL the server's process group."""
    if target.stop:
        line = target.stop.replace("{port}", str(port)).replace("{pid}", str(server.pid))
        with log_path.open("ab") as log:
            try:
                subprocess.run(
                    ["/bin/sh", "-c", line], stdout=log, stderr=subprocess.STDOUT,
                    timeout=STOP_COMMAND_TIMEOUT_S, check=False,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                pass  # the group is killed below either way
        server.wait(STOP_GRACE_S)
    server.stop(STOP_GRACE_S)


def _check_up(url: str, target: Target) -> None:
    try:
        with urllib.request.urlopen(url + target.ready_path, timeout=10) as response:
            if response.status == 200:
                return
    except OSError as exc:
        raise LaunchError(f"target {url}{target.ready_path} does not answer: {exc}") from exc
    raise LaunchError(f"target {url}{target.ready_path}: HTTP {response.status}")


def _get_json(url: str) -> Any:
    import json

    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read().decode())


# ---------------------------------------------------------------------------- warm-up, metrics
def warm_up(url: str, plan: Plan, models: Any) -> None:
    """plan.warmup requests of the workload's shape, concurrently, not measured (text prompts:
    every OpenAI-compatible server takes those)."""
    if plan.warmup <= 0:
        return
    import httpx

    model = ((models or {}).get("data") or [{}])[0].get("id")
    prompt, max_tokens = warm_up_shape(plan)
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        **({"model": model} if model else {}),
    }

    def one(_: int) -> None:
        response = httpx.post(f"{url}/v1/completions", json=body, timeout=plan.timeout_s)
        if response.status_code != 200:
            raise LaunchError(
                f"warm-up request: HTTP {response.status_code}: {response.text[:300]}"
            )

    with ThreadPoolExecutor(plan.warmup) as pool:
        list(pool.map(one, range(plan.warmup)))


def scrape(url: str, target: Target, folder: Path) -> Path:
    """GET the server's Prometheus metrics into FOLDER/server.prom (a comment saying why when it
    serves none: the diagnosis then has client-side timings only)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url + target.metrics_path, timeout=METRICS_TIMEOUT_S) as r:
            text = r.read().decode(errors="replace")
    except OSError as exc:
        text = f"# scrape of {url}{target.metrics_path} failed: {exc}\n"
    path = folder / f"{SERVER}.prom"
    path.write_text(text)
    return path
