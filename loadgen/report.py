"""What the terminal shows: a live line during a run, a table and warnings after it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from loadgen.metrics import ALL_METRICS
from loadgen.runner import FAILED, INCOMPLETE, LAG_MAX_MS, LAG_SUM_MS, OK, SENT

LAG_WARN_MS = 5.0  # schedule lag p99 above this: the client, not the server, set the pace
PLAIN_LINE_INTERVAL_S = 1.0  # not a terminal (a pipe, a log file): the line, printed this often


class LiveProgress:
    """rate, in flight, done, errors and schedule lag, refreshed from the workers' counters: in
    place on a terminal; on a pipe or a file (where a live display shows only its last state) as
    a plain line every PLAIN_LINE_INTERVAL_S, so a log shows how the run went."""

    def __init__(self, console: Console, title: str) -> None:
        self._console = console
        self._title = title
        self._live = Live(Text(title), console=console, auto_refresh=False, transient=False)
        self._last_s = time.perf_counter()
        self._last_done = self._last_sent = self._last_lag_sum_ms = 0.0
        self._last_plain_s = -PLAIN_LINE_INTERVAL_S

    def __enter__(self) -> Self:
        self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.__exit__(exc_type, exc, tb)

    def tick(self, counters: Sequence[Sequence[float]]) -> None:
        totals = [sum(c[i] for c in counters) for i in range(len(counters[0]))]
        now_s = time.perf_counter()
        done = totals[OK] + totals[FAILED] + totals[INCOMPLETE]
        rate, lag_ms = 0.0, 0.0
        if now_s > self._last_s:
            rate = (done - self._last_done) / (now_s - self._last_s)
        if totals[SENT] > self._last_sent:  # mean lag of the requests sent since the last tick
            lag_ms = (totals[LAG_SUM_MS] - self._last_lag_sum_ms) / (totals[SENT] - self._last_sent)
        self._last_s, self._last_done = now_s, done
        self._last_sent, self._last_lag_sum_ms = totals[SENT], totals[LAG_SUM_MS]
        line = self._line(totals, rate, lag_ms)
        self._live.update(line, refresh=True)
        if not self._console.is_terminal and now_s - self._last_plain_s >= PLAIN_LINE_INTERVAL_S:
            self._last_plain_s = now_s
            self._console.print(line)

    def _line(self, totals: list[float], rate: float, lag_ms: float) -> Text:
        in_flight = totals[SENT] - totals[OK] - totals[FAILED] - totals[INCOMPLETE]
        max_lag = max(totals[LAG_MAX_MS], 0.0)
        lag_style = "bold red" if lag_ms > LAG_WARN_MS else "green"
        text = Text(f"{self._title}  ")
        text.append(f"{rate:7.1f} req/s  in flight {in_flight:5.0f}  done {totals[OK]:7.0f}  ")
        text.append(f"errors {totals[FAILED]:4.0f}  ", style="red" if totals[FAILED] else "")
        text.append(f"schedule lag {lag_ms:6.2f} ms (max {max_lag:.1f})", style=lag_style)
        return text


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def summary_table(title: str, summary: dict[str, Any]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    for key in ("mean", "p50", "p90", "p99", "max"):
        table.add_column(key, justify="right")
    for name in ALL_METRICS:
        stats = summary[name]
        table.add_row(name, *(_fmt(stats[k]) for k in ("mean", "p50", "p90", "p99", "max")))
    return table


def summary_lines(summary: dict[str, Any], failed_by_status: dict[str, int]) -> str:
    errors = ", ".join(f"{k}={v}" for k, v in sorted(failed_by_status.items())) or "none"
    return (
        f"completed {summary['completed']}  failed {summary['failed']} ({errors})  "
        f"incomplete {summary['incomplete']}  duration {summary['duration_s']:.2f} s\n"
        f"{summary['request_throughput']:.2f} req/s  "
        f"{summary['output_token_throughput']:.1f} out tok/s  "
        f"{summary['total_token_throughput']:.1f} total tok/s  goodput {summary['goodput']:.2f} req/s"
        + "\n"
        + goodput_line(summary)
        + _client_cpu_line(summary)
    )


def goodput_line(summary: dict[str, Any]) -> str:
    """The deciding figure: requests/s meeting every SLO, with what it was measured against."""
    goodput = summary.get("goodput") or 0.0
    slo = summary.get("slo")
    good, completed = summary.get("goodput_requests"), summary.get("completed")
    parts = f" ({good} of {completed} completed)" if good is not None else ""
    if slo:
        objectives = ", ".join(f"{k} <= {v:g}" for k, v in slo.items())
        return f"goodput {goodput:.2f} req/s meeting every SLO ({objectives}){parts}"
    if slo is None:
        return f"goodput {goodput:.2f} req/s"
    return f"goodput {goodput:.2f} req/s (no --slo set: every completed request counts){parts}"


def _client_cpu_line(summary: dict[str, Any]) -> str:
    us = summary.get("client_cpu_us_per_token")
    return "" if us is None else f"\nclient CPU {us:.1f} µs per output token"


def lag_warning(summary: dict[str, Any]) -> str | None:
    """A message when the client fell behind its own schedule, else None."""
    p99 = summary["schedule_lag_ms"]["p99"]
    if p99 is None or p99 <= LAG_WARN_MS:
        return None
    return (
        f"the load generator fell behind its schedule: schedule lag p99 {p99:.1f} ms > "
        f"{LAG_WARN_MS:g} ms, so the offered load was lower than asked; E2E-from-schedule counts "
        "the wait, but consider --workers N or a lower rate"
    )
