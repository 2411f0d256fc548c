"""Terminal rendering (rich) of a summary and of one request's waterfall."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tracing.decompose import COMPONENTS, RequestBreakdown, SpanIndex
from tracing.model import Span
from tracing.summary import deployment_name, percentile

_BAR_WIDTH = 32
_WIDE_CONSOLE = 140  # not a terminal (pipe, file): wide enough that span names stay whole


def summary_table(summary: dict[str, Any]) -> Table:
    deployment = summary.get("deployment") or {}
    where = f", {deployment_name(deployment)}" if any(deployment.values()) else ""
    table = Table(title=f"Where the time went ({summary['requests']} requests{where})")
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


@dataclass(slots=True)
class FoldedRow:
    """Consecutive decode steps of one request (and the spans under each) as one row."""

    depth: int
    spans: list[Span]

    @property
    def first(self) -> Span:
        return self.spans[0]

    @property
    def sum_ms(self) -> float:
        return sum(s.duration_ms for s in self.spans)

    @property
    def p50_ms(self) -> float:
        return percentile([s.duration_ms for s in self.spans], 50)


Row = tuple[int, Span] | FoldedRow
FOLD_ABOVE_ROWS = 24  # `--steps auto`: a request with more rows than this shows them folded


def fold_steps(rows: list[tuple[int, Span]], index: SpanIndex) -> list[Row]:
    """Runs of consecutive decode steps (a Step CLIENT and its subtree) folded: one row per
    span name and kind at each depth of the run, with count, sum and p50; prefill steps and
    every other span stay as they are."""
    decode_steps = {
        call.client.key
        for _, span in rows
        if _is_submit_server(span)
        for call in index.step_calls(span)
        if call.phase != "prefill"
    }
    out: list[Row] = []
    position = 0
    while position < len(rows):
        depth, span = rows[position]
        if span.key not in decode_steps:
            out.append(rows[position])
            position += 1
            continue
        run: list[tuple[int, Span]] = []
        while (
            position < len(rows)
            and rows[position][1].key in decode_steps
            and (rows[position][0] == depth)
        ):
            run.append(rows[position])
            position += 1
            while position < len(rows) and rows[position][0] > depth:  # the step's subtree
                run.append(rows[position])
                position += 1
        out.extend(_fold_run(run))
    return out


def _is_submit_server(span: Span) -> bool:
    from tracing.schema import SUBMIT, base_name

    return base_name(span.name) == SUBMIT and span.kind == "SERVER"


def _fold_run(run: list[tuple[int, Span]]) -> list[Row]:
    groups: dict[tuple[int, str, str], FoldedRow] = {}
    for depth, span in run:
        key = (depth, span.name, span.kind)
        groups.setdefault(key, FoldedRow(depth, [])).spans.append(span)
    if all(len(group.spans) == 1 for group in groups.values()):
        return list(run)  # one step: nothing to fold
    return list(groups.values())


def waterfall_table(rows: list[tuple[int, Span]] | list[Row], trace_id: str) -> Table:
    folded = any(isinstance(row, FoldedRow) for row in rows)
    table = Table(title=f"trace {trace_id}" + (" (decode steps folded)" if folded else ""))
    table.add_column("span", no_wrap=True)
    for header in ("service", "kind", "start ms", "sum ms" if folded else "duration ms"):
        table.add_column(header, justify="right" if "ms" in header else "left")
    if folded:
        table.add_column("count", justify="right")
        table.add_column("p50 ms", justify="right")
    table.add_column("timeline", no_wrap=True, min_width=_BAR_WIDTH)
    if not rows:
        return table
    spans = [s for row in rows for s in (row.spans if isinstance(row, FoldedRow) else [row[1]])]
    origin_ns = min(span.start_ns for span in spans)
    extent_ns = max(max(span.end_ns for span in spans) - origin_ns, 1)
    for row in rows:
        if isinstance(row, FoldedRow):
            span, depth = row.first, row.depth
            name = f"{short_name(span.name)} ×{len(row.spans)}"
            cells = [f"{row.sum_ms:.3f}", str(len(row.spans)), f"{row.p50_ms:.3f}"]
            bar = _run_bar(row.spans, origin_ns, extent_ns)
        else:
            depth, span = row
            name = short_name(span.name)
            cells = [f"{span.duration_ms:.3f}"] + (["", ""] if folded else [])
            bar = _bar(span, origin_ns, extent_ns)
        marker = " (link)" if span.trace_id != trace_id else ""  # from another trace
        table.add_row(
            " " * depth + name + marker,
            span.service_name,
            span.kind.lower(),
            f"{(span.start_ns - origin_ns) / 1e6:.3f}",
            *cells,
            bar,
        )
    return table


def _run_bar(spans: list[Span], origin_ns: int, extent_ns: int) -> Text:
    """From the first span's start to the last one's end, drawn lighter: not one span."""
    start = int((spans[0].start_ns - origin_ns) * _BAR_WIDTH / extent_ns)
    end_ns = max(s.end_ns for s in spans)
    length = max(1, int((end_ns - spans[0].start_ns) * _BAR_WIDTH / extent_ns))
    style = "cyan" if spans[0].kind == "CLIENT" else "green" if spans[0].kind == "SERVER" else ""
    return Text(" " * start + "▒" * min(length, _BAR_WIDTH - start), style=style)


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
