"""`hopscope bench`: every point of a sweep, every repeat; results, tables and plots."""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from loadgen import metrics
from loadgen.config import BenchConfig
from loadgen.frontdoor import check_reachable
from loadgen.plots import bench_cdf_plots, plot_sweep
from loadgen.report import LiveProgress, lag_warning, summary_lines, summary_table
from loadgen.results import git_sha, point_paths, write_requests, write_summary
from loadgen.workers import PointResult, run_point
from services.common.procfs import (
    CpuReadError,
    contention_document,
    contention_snapshot,
    service_pids,
    usable_cores,
)

EXIT_INTERRUPTED = 130
EXIT_NOTHING_COMPLETED = 1
EXIT_REQUESTS_FAILED = 1  # a point's failed share above --max-failed-frac


@dataclass(slots=True, frozen=True)
class BenchPlan:
    """The points of a run (one unless sweeping), how often to repeat them, where to write."""

    points: list[BenchConfig]
    point_tags: list[str]  # "" for a single point, else e.g. "rate-4"
    out: Path
    flags: dict[str, Any] = field(default_factory=dict)
    num_repeats: int = 1
    is_plotting: bool = True
    is_live: bool = True
    max_failed_frac: float = 0.0
    deployment: dict[str, Any] = field(default_factory=dict)  # Describe, as a dict

    def __post_init__(self) -> None:
        if len(self.points) != len(self.point_tags) or not self.points:
            raise ValueError("a plan needs one tag per point and at least one point")
        if self.num_repeats < 1:
            raise ValueError("--repeat must be >= 1")


def build_document(
    config: BenchConfig,
    result: PointResult,
    flags: dict[str, Any],
    requests_file: Path,
    extra: dict[str, Any],
    deployment: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[metrics.RequestRecord]]:
    window = metrics.measured(result.records, config.load, result.num_scheduled)
    document = {
        "config": {
            **flags,
            **extra,
            "label": config.label,
            "seed": config.workload.seed,
            "git_sha": git_sha(),
            "started_at_unix_s": result.started_at_unix_s,
            "num_scheduled": result.num_scheduled,
            "is_interrupted": result.is_interrupted,
            "resolved": config.to_dict(),
        },
        "requests_file": str(requests_file),
        # what was measured: Describe's placement, services, edges (transport, link), model
        "deployment": deployment or {},
        "summary": metrics.summarise(window, config.slo)
        | metrics.client_cpu(result.client_cpu_s, result.records),
        "failed_by_status": metrics.failed_by_status(window),
    }
    return document, window


def run_bench(plan: BenchPlan, console: Console, is_tracing: bool) -> int:
    """Run the plan (the server was checked reachable by the caller); returns the exit code."""
    num_completed, is_interrupted, failures = 0, False, []
    for repeat in range(plan.num_repeats):
        documents: list[dict[str, Any]] = []
        for config, tag in zip(plan.points, plan.point_tags, strict=True):
            document, is_interrupted = _run_one(plan, config, tag, repeat, console, is_tracing)
            documents.append(document)
            num_completed += document["summary"]["completed"]
            if failure := failed_share_error(document["summary"], plan.max_failed_frac):
                failures.append(f"{tag or 'the run'}: {failure}")
            if is_interrupted:
                break
        if plan.is_plotting and len(documents) > 1:
            sweep_png = point_paths(plan.out, "sweep", repeat, plan.num_repeats)[0]
            sweep_png = plot_sweep(
                sweep_png.with_suffix(".png"),
                documents,
                f"{plan.points[0].label or 'bench'}: throughput vs latency",
            )
            console.print(f"sweep plot: {sweep_png}")
        if is_interrupted:
            console.print("[yellow]interrupted: results so far were written[/]")
            return EXIT_INTERRUPTED
    if not num_completed:
        return EXIT_NOTHING_COMPLETED
    for failure in failures:
        console.print(f"[bold red]failed:[/] {failure}", highlight=False)
    return EXIT_REQUESTS_FAILED if failures else 0


def plots_dir(summary_path: Path) -> Path:
    """Where a point's figures go: beside its summary, `NAME.json` -> `NAME-plots/`."""
    return summary_path.with_name(summary_path.stem + "-plots")


def failed_share_error(summary: dict[str, Any], max_failed_frac: float) -> str | None:
    """Why a point fails the run (its failed share of finished requests is above the limit)."""
    num_failed = summary["failed"]
    num_finished = num_failed + summary["completed"]
    if not num_failed or num_failed <= max_failed_frac * num_finished:
        return None
    return (
        f"{num_failed} of {num_finished} requests failed ({num_failed / num_finished:.1%} > "
        f"--max-failed-frac {max_failed_frac:g}); see failed_by_status in the summary"
    )


def _run_one(
    plan: BenchPlan, config: BenchConfig, tag: str, repeat: int, console: Console, is_tracing: bool
) -> tuple[dict[str, Any], bool]:
    title = " ".join(p for p in (config.label or "bench", tag) if p) + (
        f" repeat {repeat + 1}/{plan.num_repeats}" if plan.num_repeats > 1 else ""
    )
    summary_path, requests_path = point_paths(plan.out, tag, repeat, plan.num_repeats)
    result, contention = _measured_point(plan, config, title, console, is_tracing)
    extra = {
        "point": tag,
        "repeat_index": repeat,
        "num_repeats": plan.num_repeats,
        "repeat_group": str(plan.out),
    }
    document, window = build_document(
        config, result, plan.flags, requests_path, extra, plan.deployment
    )
    document["contention"] = contention
    write_requests(requests_path, result.records, {r.index for r in window}, config.slo)
    write_summary(summary_path, document)
    console.print(summary_table(title, document["summary"]))
    console.print(summary_lines(document["summary"], document["failed_by_status"]))
    if warning := lag_warning(document["summary"]):
        console.print(f"[bold yellow]warning:[/] {warning}")
    if warning := busy_host_warning(contention):
        Console(stderr=True, soft_wrap=True).print(f"[bold yellow]warning:[/] {warning}")
    if plan.is_plotting:
        plot_dir = plots_dir(summary_path)
        pngs = bench_cdf_plots(plot_dir, {config.label: metrics.samples(window)})
        console.print(f"latency CDFs: {plot_dir}/ ({', '.join(p.name for p in pngs)})")
    console.print(f"summary: {summary_path}  requests: {requests_path}")
    return document, result.is_interrupted


def _measured_point(
    plan: BenchPlan, config: BenchConfig, title: str, console: Console, is_tracing: bool
) -> tuple[PointResult, dict[str, Any]]:
    """Run the point, measuring contention over it: the run-queue wait of the server's processes
    on this host, and the CPU used by processes other than them and this bench."""
    services = local_service_pids(plan.deployment)
    inside = [os.getpid(), *services.values()]
    before = contention_snapshot(services, inside)
    if plan.is_live:
        with LiveProgress(console, title) as live:
            result = run_point(config, is_tracing, live.tick)
    else:
        result = run_point(config, is_tracing)
    try:
        after = contention_snapshot(_alive(services), inside)
    except CpuReadError:  # a server process ended just now: its counters are gone
        after = contention_snapshot({}, inside)
    return result, contention_document(before, after, len(usable_cores()))


def local_service_pids(deployment: dict[str, Any]) -> dict[str, int]:
    """The server's processes that run on this host (Describe names their host and pid)."""
    here = socket.gethostname()
    services = [s for s in deployment.get("services", []) if s.get("host") == here]
    return _alive(service_pids({"services": services}))


def _alive(pids: dict[str, int]) -> dict[str, int]:
    return {name: pid for name, pid in pids.items() if os.path.exists(f"/proc/{pid}/task")}


def busy_host_warning(contention: dict[str, Any]) -> str | None:
    """Why the figures are not an idle host's (outside CPU at or above the contended mark)."""
    if not contention.get("is_contended"):
        return None
    return (
        f"the host was busy: processes outside this bench and the server used "
        f"{contention['outside_cores']:.2f} of {contention['num_cores']} cores during the "
        "workload; its figures may be far below an idle host's (`contention` in the summary JSON)"
    )


def preflight(address: str, timeout_s: float, tls_ca: str = "") -> tuple[str, dict[str, Any]]:
    """Check the server answers before any load; returns a one-line description of it and its
    Describe as a dict ({} when not served), which the summary records as `deployment`."""
    from google.protobuf.json_format import MessageToDict

    if address.startswith(("http://", "https://")):
        from loadgen.http_client import describe

        return asyncio.run(describe(address, timeout_s)), {}
    described = asyncio.run(check_reachable(address, timeout_s, tls_ca))
    if described is None:
        return f"{address} (Describe not served)", {}
    model = described.model
    edges = ", ".join(
        f"{getattr(e, 'from')}→{e.to} {e.transport}" + (f" ({e.link})" if e.link else "")
        for e in described.edges
    )
    line = f"{address}: placement {described.placement or '?'}, model {model.name or '?'}"
    return line + (f", edges {edges}" if edges else ""), MessageToDict(described)
