"""`hopscope bench compare A.json B.json ...`: runs side by side, deltas against the first.

Summaries written by one `hopscope bench --repeat K` run share `config.repeat_group` (and their
point); they form one column whose value is the mean over the K runs with a 95% confidence
interval (Student t), so `compare a.r*.json b.r*.json` compares two repeated runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from loadgen.results import read_summary

# two-sided 95% Student t quantiles by degrees of freedom; 1.96 beyond the table
_T95 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    30: 2.042,
}
ROWS = (
    ("request_throughput", None, True),
    ("output_token_throughput", None, True),
    ("goodput", None, True),
    ("ttft_ms", "p50", False),
    ("ttft_ms", "p99", False),
    ("tpot_ms", "p50", False),
    ("tpot_ms", "p99", False),
    ("itl_ms", "p50", False),
    ("itl_ms", "p99", False),
    ("e2e_ms", "p50", False),
    ("e2e_ms", "p99", False),
    ("e2e_from_schedule_ms", "p99", False),
    ("schedule_lag_ms", "p99", False),
)


@dataclass(slots=True)
class Column:
    name: str
    documents: list[dict[str, Any]]
    paths: list[Path]

    @property
    def loop(self) -> str:
        """ "open" (--rate), "closed" (--concurrency) or "mixed" over its runs."""
        loops = {_loop(d) for d in self.documents}
        return loops.pop() if len(loops) == 1 else "mixed"


def _loop(document: dict[str, Any]) -> str:
    load = document["config"].get("resolved", {}).get("load", {})
    return "open" if load.get("rate") is not None else "closed"


def loop_warning(columns: list[Column]) -> str | None:
    """A warning when closed-loop and open-loop runs are compared: their latencies answer
    different questions (a closed loop waits for each answer before it sends, so it never
    queues; an open loop keeps sending), so their difference is not the servers'."""
    loops = {c.name: c.loop for c in columns}
    if len(set(loops.values())) < 2:
        return None
    which = ", ".join(f"{name} {loop}-loop" for name, loop in loops.items())
    return (
        f"comparing closed-loop (--concurrency) with open-loop (--rate) runs ({which}): a closed "
        "loop waits for each answer before sending, an open loop keeps sending, so latencies "
        "differ by design; compare runs of the same kind"
    )


def t95(dof: int) -> float:
    """Two-sided 95% t quantile; between table entries the smaller dof (wider, conservative)."""
    if dof < 1:
        raise ValueError("a confidence interval needs at least two runs")
    if dof > 30:
        return 1.96
    return _T95[max(known for known in _T95 if known <= dof)]


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% confidence interval (None for one run)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, t95(len(values) - 1) * math.sqrt(var / len(values))


def group_columns(paths: list[Path]) -> list[Column]:
    """One column per summary, repeats of one run merged into one column (first-seen order)."""
    columns: dict[str, Column] = {}
    for path in paths:
        document = read_summary(path)
        config = document["config"]
        is_repeat = config.get("num_repeats", 1) > 1
        key = f"{config.get('repeat_group')}|{config.get('point')}" if is_repeat else str(path)
        name = config.get("label") or Path(path).stem
        if is_repeat:
            name = (config.get("label") or Path(str(config.get("repeat_group"))).stem) + (
                f" {config['point']}" if config.get("point") else ""
            )
        column = columns.setdefault(key, Column(name, [], []))
        column.documents.append(document)
        column.paths.append(Path(path))
    return list(columns.values())


def column_samples(column: Column) -> dict[str, list[float]]:
    """The raw latency samples of a column's runs (measured, successful requests), read from
    each summary's requests file: the CDF overlays of `bench compare --plots`."""
    samples: dict[str, list[float]] = {}
    for document, path in zip(column.documents, column.paths, strict=True):
        for row in _measured_rows(document, path):
            for key in ("ttft_ms", "tpot_ms", "e2e_ms", "e2e_from_schedule_ms"):
                if row.get(key) is not None:
                    samples.setdefault(key, []).append(float(row[key]))
            samples.setdefault("itl_ms", []).extend(float(v) for v in row.get("itl_ms") or [])
    return samples


def _measured_rows(document: dict[str, Any], summary_path: Path) -> list[dict[str, Any]]:
    recorded = Path(document["requests_file"])
    # as written (relative to where bench ran), else beside the summary (a moved directory)
    for candidate in (recorded, summary_path.parent / recorded.name):
        if candidate.is_file():
            rows = [json.loads(line) for line in candidate.read_text().splitlines() if line]
            return [r for r in rows if r.get("is_measured") and r.get("status") == "OK"]
    raise ValueError(f"{summary_path}: its requests file {recorded} is not there")


def _value(document: dict[str, Any], metric: str, stat: str | None) -> float | None:
    entry = document["summary"][metric]
    return entry if stat is None else entry[stat]


def cell(column: Column, metric: str, stat: str | None) -> tuple[float | None, float | None]:
    values = [v for d in column.documents if (v := _value(d, metric, stat)) is not None]
    return mean_ci(values) if values else (None, None)


def compare_table(columns: list[Column]) -> Table:
    table = Table(title="hopscope bench compare", title_justify="left")
    table.add_column("metric")
    for index, column in enumerate(columns):
        runs = f" ({len(column.documents)} runs)" if len(column.documents) > 1 else ""
        table.add_column(column.name + runs, justify="right")
        if index:
            table.add_column("Δ vs first", justify="right")
    for metric, stat, higher_is_better in ROWS:
        table.add_row(*_row(columns, metric, stat, higher_is_better))
    return table


def _row(columns: list[Column], metric: str, stat: str | None, higher_is_better: bool) -> list[str]:
    label = metric if stat is None else f"{metric} {stat}"
    cells = [label]
    base, _ = cell(columns[0], metric, stat)
    for index, column in enumerate(columns):
        value, half_width = cell(column, metric, stat)
        text = "-" if value is None else f"{value:.2f}"
        cells.append(text + ("" if half_width is None else f" ± {half_width:.2f}"))
        if index:
            cells.append(_delta(base, value, higher_is_better))
    return cells


def _delta(base: float | None, value: float | None, higher_is_better: bool) -> str:
    if base is None or value is None:
        return "-"
    diff = value - base
    pct = f" ({100 * diff / base:+.1f}%)" if base else ""
    is_better = (diff > 0) == higher_is_better
    style = "green" if diff and is_better else "red" if diff else ""
    text = f"{diff:+.2f}{pct}"
    return f"[{style}]{text}[/]" if style else text
