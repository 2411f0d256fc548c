"""Terminal rendering (rich) of a summary and of one request's waterfall."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tracing.decompose import COMPONENTS, RequestBreakdown, SpanIndex
from tracing.model import Span

_BAR_WIDTH = 32
_WIDE_CONSOLE = 140  # not a terminal (pipe, file): wide enough that span names stay whole


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"Where the time went ({summary['requests']} requests)")
    for header in ("component", "mean ms", "p50 ms", "p99 ms", "share of e2e"):
        table.add_column(header, justify="left" if header == "component" else "right")
    for name, row in summary["components"].items():
        style = "cyan" if "network" in name else None
        table.add_row(name, *_stat_cells(row), _share(row["share"]), style=style)
    table.add_section()
    table.add_row("e2e", *_stat_cells(summary["e2e"]), "100%", style="bold")
    network = summary["network_total"]
    table.add_row("network (all hops)", *_stat_cells(network), _share(network["share"]))
    return table


NOT_MEASURED = "n/a"  # no span measured it: unknown, which is not 0


def tpot_table(tpot: dict[str, Any]) -> Table:
    table = Table(title=f"Per output token (TPOT, {tpot['requests']} requests)")
    for header in ("component", "mean ms", "p50 ms", "p99 ms", "share of TPOT"):
        table.add_column(header, justify="left" if header == "component" else "right")
    for name, row in tpot["components"].items():
        table.add_row(name, *_stat_cells(row), _share(row["share"]))
    table.add_section()
    table.add_row("TPOT", *_stat_cells(tpot), "100%", style="bold")
    return table


def _stat_cells(row: dict[str, float | None]) -> list[str]:
    return [_ms(row[key]) for key in ("mean_ms", "p50_ms", "p99_ms")]


def _ms(value: float | None) -> str:
    return NOT_MEASURED if value is None else f"{value:.3f}"


def _share(value: float | None) -> str:
    return NOT_MEASURED if value is None else f"{value:.1%}"


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    console.print(summary_table(summary))
    if summary["tpot"]["requests"]:
        console.print(tpot_table(summary["tpot"]))
    for warning in summary["checks"]["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")


def waterfall_spans(index: SpanIndex, trace_id: str) -> list[tuple[int, Span]]:
    """(depth, span) rows of a trace, plus the step spans (other traces) that link into it."""
    in_trace = [s for s in index.spans if s.trace_id == trace_id]
    rows: list[tuple[int, Span]] = []
    seen: set[tuple[str, str]] = set()

    def visit(span: Span, depth: int) -> None:
        if span.key in seen:
            return
        seen.add(span.key)
        rows.append((depth, span))
        linked = [client for client, _ in index.linked_from[span.key]]
        for child in sorted(index.children[span.key] + linked, key=lambda s: s.start_ns):
            visit(child, depth + 1)

    roots = [s for s in in_trace if index.parent(s) is None]
    for root in sorted(roots, key=lambda s: s.start_ns):
        visit(root, 0)
    return rows


def waterfall_table(rows: list[tuple[int, Span]], trace_id: str) -> Table:
    table = Table(title=f"trace {trace_id}")
    table.add_column("span", no_wrap=True)
    for header in ("service", "kind", "start ms", "duration ms"):
        table.add_column(header, justify="right" if "ms" in header else "left")
    table.add_column("timeline", no_wrap=True, min_width=_BAR_WIDTH)
    if not rows:
        return table
    origin_ns = min(span.start_ns for _, span in rows)
    extent_ns = max(max(span.end_ns for _, span in rows) - origin_ns, 1)
    for depth, span in rows:
        marker = " (link)" if span.trace_id != trace_id else ""  # from another trace
        table.add_row(
            " " * depth + short_name(span.name) + marker,
            span.service_name,
            span.kind.lower(),
            f"{(span.start_ns - origin_ns) / 1e6:.3f}",
            f"{span.duration_ms:.3f}",
            _bar(span, origin_ns, extent_ns),
        )
    return table


def short_name(name: str) -> str:
    """'/hopscope.v1.Tokenizer/Generate' → 'Tokenizer/Generate'."""
    return name.lstrip("/").removeprefix("hopscope.v1.")


def console_for_output() -> Console:
    return Console() if sys.stdout.isatty() else Console(width=_WIDE_CONSOLE)


def _bar(span: Span, origin_ns: int, extent_ns: int) -> Text:
    start = int((span.start_ns - origin_ns) * _BAR_WIDTH / extent_ns)
    length = max(1, int(span.duration_ns * _BAR_WIDTH / extent_ns))
    style = "cyan" if span.kind == "CLIENT" else "green" if span.kind == "SERVER" else "white"
    return Text(" " * start + "█" * min(length, _BAR_WIDTH - start), style=style)


def breakdown_table(breakdown: RequestBreakdown) -> Table:
    title = f"request {breakdown.request_id or '?'}: e2e {breakdown.e2e_ms:.3f} ms"
    table = Table(title=title)
    for header in ("component", "ms", "share of e2e"):
        table.add_column(header, justify="left" if header == "component" else "right")
    for name in COMPONENTS:
        style = "cyan" if "network" in name else None
        if name in breakdown.unmeasured:
            table.add_row(name, NOT_MEASURED, NOT_MEASURED, style=style)
            continue
        value = breakdown.components_ms.get(name, 0.0)
        share = value / breakdown.e2e_ms if breakdown.e2e_ms > 0 else 0.0
        table.add_row(name, f"{value:.3f}", f"{share:.1%}", style=style)
    if breakdown.tpot_ms is not None:
        table.add_section()
        table.add_row("TPOT", f"{breakdown.tpot_ms:.3f}", "")
    return table
