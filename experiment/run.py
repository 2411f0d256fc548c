"""Run a plan: every variant in every round (order rotated per round), skipping what --resume
finds complete; a cluster when the plan needs one; then summary.json, diagnosis and the report.
Nothing is left running when it ends, fails or is interrupted (Ctrl-C keeps finished rounds)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from experiment import layout
from experiment.plan import Plan, Variant
from experiment.round_kit import RoundContext, RoundError, uninterruptible
from experiment.rounds import run_round

T = TypeVar("T")

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class ExperimentError(RuntimeError):
    """The experiment cannot start or continue (DIR in use, plan changed under --resume...)."""


def schedule(plan: Plan) -> list[tuple[int, int, Variant]]:
    """(round, position, variant) in run order: every variant once per round, the order rotated
    by one each round so no variant always runs first (or right after the same neighbour)."""
    order = []
    for k in range(plan.repeats):
        order += [(k, position, v) for position, v in enumerate(rotated(plan.variants, k))]
    return order


def rotated(items: Sequence[T], round_index: int) -> list[T]:
    """One round's order: shifted by one each round (benchmarks/ scripts share it too)."""
    shift = round_index % len(items)
    return [*items[shift:], *items[:shift]]


def prepare_dir(plan: Plan, out: Path, is_resume: bool) -> dict[str, Any]:
    """Create DIR (or check it matches the plan under --resume); returns experiment.json."""
    resolved = plan.resolved()
    plan_path = out / layout.PLAN
    if plan_path.exists():
        if not is_resume:
            raise ExperimentError(
                f"{out} already holds an experiment; continue it with --resume or choose "
                "another --out"
            )
        if layout.read_json(plan_path) != resolved:
            raise ExperimentError(
                f"--resume: the plan differs from the one {out} was run with ({plan_path}); "
                "run the changed plan into another --out"
            )
    elif out.exists() and any(out.iterdir()):
        raise ExperimentError(f"{out} exists and is not empty; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    layout.write_json(plan_path, resolved)
    workload = resolved["workload"]
    for variant in plan.variants:
        layout.write_json(
            layout.variant_dir(out, variant) / "variant.json",
            {
                "name": variant.name,
                "factor": variant.factor,
                "value": variant.value,
                "deployment": variant.deployment(),
                "workload": workload,
            },
        )
    meta_path = out / "experiment.json"
    meta = layout.read_json(meta_path) if meta_path.exists() else {"started": _now()}
    layout.write_json(meta_path, meta)
    return dict(meta)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(slots=True)
class Clusters:
    """The Ray cluster of a plan that needs one: started with the link settings of the variant
    about to run (the same code as `hopscope cluster up`), restarted when they change, stopped
    at the end. `--ray-address` uses that cluster instead and never stops it."""

    plan: Plan
    ray_address: str = ""
    console: Console | None = None
    record: Any = None
    link: tuple[float, float] | None = None
    started: list[str] = field(default_factory=list)

    def address_for(self, variant: Variant) -> str:
        if not variant.is_ray:
            return ""
        if self.ray_address:
            return self.ray_address
        if not self.plan.is_cluster_needed:
            return ""  # serve starts (and stops) its own local Ray instance
        link = (variant.link_delay_ms, variant.link_rate_mbit)
        if self.record is None or self.link != link:
            self.stop()
            self._start(link)
        return str(self.record.address)

    def _start(self, link: tuple[float, float]) -> None:
        from deploy.cluster import LinkSettings, start_cluster

        if self.console:
            self.console.print(
                f"starting a {self.plan.num_cluster_nodes}-node Ray cluster "
                f"(link delay {link[0]:g} ms, rate {link[1]:g} Mbit/s)"
            )
        self.record = start_cluster(self.plan.num_cluster_nodes, LinkSettings(*link))
        self.link = link
        self.started.append(str(self.record.address))

    def stop(self) -> None:
        from deploy.cluster import stop_cluster

        if self.record is not None:
            stop_cluster(self.record)
            self.record, self.link = None, None


@contextmanager
def interrupts_as_keyboard_interrupt() -> Iterator[None]:
    """SIGTERM stops the experiment like Ctrl-C does (KeyboardInterrupt, then every finally)."""

    def raise_interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_experiment(
    plan: Plan, out: Path, *, is_resume: bool, is_quiet: bool, ray_address: str = ""
) -> int:
    console = Console(stderr=True, quiet=is_quiet, highlight=False)
    errors = Console(stderr=True, highlight=False)  # failures and how to resume: even --quiet
    wall_start = time.monotonic()
    meta = prepare_dir(plan, out, is_resume)
    todo = schedule(plan)
    clusters = Clusters(plan, ray_address, console)
    code = 0
    with interrupts_as_keyboard_interrupt():
        try:
            _run_rounds(plan, out, todo, clusters, console, is_quiet)
        except KeyboardInterrupt:
            code = EXIT_INTERRUPTED
        except RoundError as exc:
            errors.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
            code = EXIT_FAILED
        finally:
            with uninterruptible():
                clusters.stop()
    done = sum(layout.is_complete(layout.round_dir(out, v, k)) for k, _, v in todo)
    if code:
        errors.print(
            f"{'interrupted' if code == EXIT_INTERRUPTED else 'stopped'}: {done} of {len(todo)} "
            f"variant-rounds complete in {out}; continue with: hopscope experiment "
            f"{plan.source} --out {out} --resume",
            soft_wrap=True,
        )
        return code
    meta["finished"] = _now()
    meta["wall_s"] = round(meta.get("wall_s", 0.0) + time.monotonic() - wall_start, 1)
    layout.write_json(out / "experiment.json", meta)
    return finish(out, console)


def finish(out: Path, console: Console) -> int:
    """summary.json, the diagnosis (when `diagnose` is installed), the report; prints where."""
    from experiment.report import write_report
    from experiment.summary import write_summary

    write_summary(out)
    _diagnose(out, console)
    report = write_report(out)
    print(
        f"report: {report.with_suffix('.html')} (and {report.name}); data: {out / layout.SUMMARY}"
    )
    return 0


def _diagnose(out: Path, console: Console) -> None:
    """`diagnose.diagnose_experiment(DIR)` adds `diagnosis` / `prediction` to summary.json."""
    try:
        from diagnose import diagnose_experiment  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return
    try:
        diagnose_experiment(out)
    except Exception as exc:  # noqa: BLE001 - the measurements stand without a diagnosis
        console.print(f"[yellow]warning:[/] diagnosis failed: {exc}")


def _run_rounds(
    plan: Plan,
    out: Path,
    todo: list[tuple[int, int, Variant]],
    clusters: Clusters,
    console: Console,
    is_quiet: bool,
) -> None:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    # without a terminal a bar is one line redrawn into a log: one line per variant-round there
    is_bar = console.is_terminal
    with Progress(*columns, console=console, disable=is_quiet or not is_bar) as progress:
        task = progress.add_task(plan.name, total=len(todo))
        for done, (round_index, position, variant) in enumerate(todo, start=1):
            if layout.is_complete(layout.round_dir(out, variant, round_index)):
                progress.advance(task)
                continue
            where = f"round {round_index + 1}/{plan.repeats} · {variant.name}"
            progress.update(task, description=where)
            ctx = RoundContext(plan, variant, round_index, position, out)
            ctx.ray_address = clusters.address_for(variant)
            started = time.monotonic()
            run_round(ctx)
            progress.advance(task)
            if not is_bar:
                console.print(
                    f"{plan.name}: {where} done in {time.monotonic() - started:.0f} s "
                    f"({done}/{len(todo)})"
                )
