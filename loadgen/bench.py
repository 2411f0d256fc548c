"""`hopscope bench`: every point of a sweep, every repeat; results, tables and plots."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from loadgen import metrics
from loadgen.config import BenchConfig
from loadgen.plots import plot_cdfs, plot_sweep
from loadgen.report import LiveProgress, lag_warning, summary_lines, summary_table
from loadgen.results import git_sha, point_paths, write_requests, write_summary
from loadgen.runner import check_reachable
from loadgen.workers import PointResult, run_point

EXIT_INTERRUPTED = 130
EXIT_NOTHING_COMPLETED = 1


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
        "summary": metrics.summarise(window, config.slo),
        "failed_by_status": metrics.failed_by_status(window),
    }
    return document, window


def run_bench(plan: BenchPlan, console: Console, is_tracing: bool) -> int:
    """Run the plan (the server was checked reachable by the caller); returns the exit code."""
    num_completed, is_interrupted = 0, False
    for repeat in range(plan.num_repeats):
        documents: list[dict[str, Any]] = []
        for config, tag in zip(plan.points, plan.point_tags, strict=True):
            document, is_interrupted = _run_one(plan, config, tag, repeat, console, is_tracing)
            documents.append(document)
            num_completed += document["summary"]["completed"]
            if is_interrupted:
                break
        if plan.is_plotting and len(documents) > 1:
            sweep_png = point_paths(plan.out, "sweep", repeat, plan.num_repeats)[0]
            sweep_png = plot_sweep(
                sweep_png.with_suffix(".png"), documents, "throughput vs latency"
            )
            console.print(f"sweep plot: {sweep_png}")
        if is_interrupted:
            console.print("[yellow]interrupted: results so far were written[/]")
            return EXIT_INTERRUPTED
    return 0 if num_completed else EXIT_NOTHING_COMPLETED


def _run_one(
    plan: BenchPlan, config: BenchConfig, tag: str, repeat: int, console: Console, is_tracing: bool
) -> tuple[dict[str, Any], bool]:
    title = f"{config.label or 'bench'} {tag or 'point'}" + (
        f" repeat {repeat + 1}/{plan.num_repeats}" if plan.num_repeats > 1 else ""
    )
    if plan.is_live:
        with LiveProgress(console, title) as live:
            result = run_point(config, is_tracing, live.tick)
    else:
        result = run_point(config, is_tracing)
    summary_path, requests_path = point_paths(plan.out, tag, repeat, plan.num_repeats)
    extra = {
        "point": tag,
        "repeat_index": repeat,
        "num_repeats": plan.num_repeats,
        "repeat_group": str(plan.out),
    }
    document, window = build_document(config, result, plan.flags, requests_path, extra)
    write_requests(requests_path, result.records, {r.index for r in window})
    write_summary(summary_path, document)
    console.print(summary_table(title, document["summary"]))
    console.print(summary_lines(document["summary"], document["failed_by_status"]))
    if warning := lag_warning(document["summary"]):
        console.print(f"[bold yellow]warning:[/] {warning}")
    if plan.is_plotting:
        png = plot_cdfs(summary_path.with_suffix(".cdf.png"), metrics.samples(window), title)
        console.print(f"latency CDFs: {png}")
    console.print(f"summary: {summary_path}  requests: {requests_path}")
    return document, result.is_interrupted


def preflight(address: str, timeout_s: float, tls_ca: str = "") -> str:
    """Check the server answers before any load; returns a one-line description of it."""
    described = asyncio.run(check_reachable(address, timeout_s, tls_ca))
    if described is None:
        return f"{address} (Describe not served)"
    model = described.model
    return f"{address}: placement {described.placement or '?'}, model {model.name or '?'}"
