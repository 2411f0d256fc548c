"""The report's per-request waterfall (PNG), as Jaeger shows a trace: every hop's spans on one time
axis, one row per span, indented under its parent, coloured by the service that recorded it. Two
requests of the baseline's first round: a typical one (E2E nearest the median) and the slowest.
A request's run of decode steps shares one row (`Worker/Step ×N`), each step its own bar at its
own time, so a 130-step request stays readable. A vLLM request's `llm_request` span carries its
queue/prefill/decode as attributes, not spans: they are drawn hatched under it, placed back from
the span's end (decode ends at the last token, just before the span ends)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from tracing.decompose import RequestBreakdown, SpanIndex
from tracing.model import Span
from tracing.report import FoldedRow, fold_steps, short_name, waterfall_spans

PLOT_NAME = "waterfall.png"
_ROW_HEIGHT_IN = 0.28
_WIDTH_IN = 11.0
_DPI = 110
_SERVICE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#17becf")
_PHASE_COLORS = {"queue": "#d62728", "prefill": "#1f77b4", "decode": "#2ca02c"}


@dataclass(slots=True)
class _Bar:
    label: str
    service: str
    spans: list[tuple[int, int]]  # (start_ns, end_ns) of each bar on the row
    depth: int
    hatched: bool = False
    color: str = ""


def pick_requests(breakdowns: list[RequestBreakdown]) -> list[tuple[str, RequestBreakdown]]:
    """The typical request (E2E nearest the median) and the slowest one (one when they are the
    same request)."""
    if not breakdowns:
        return []
    middle = median(b.e2e_ms for b in breakdowns)
    typical = min(breakdowns, key=lambda b: abs(b.e2e_ms - middle))
    slowest = max(breakdowns, key=lambda b: b.e2e_ms)
    picked = [("typical (E2E nearest the median)", typical)]
    if slowest.trace_id != typical.trace_id:
        picked.append(("slowest", slowest))
    return picked


def _rows(index: SpanIndex, trace_id: str) -> list[_Bar]:
    bars: list[_Bar] = []
    for row in fold_steps(waterfall_spans(index, trace_id), index):
        if isinstance(row, FoldedRow):
            first = row.first
            label = f"{short_name(first.name)} {first.kind.lower()} ×{len(row.spans)}"
            spans = [(s.start_ns, s.end_ns) for s in row.spans]
            bars.append(_Bar(label, first.service_name, spans, row.depth))
            continue
        depth, span = row
        label = f"{short_name(span.name)} {span.kind.lower()}"
        bars.append(_Bar(label, span.service_name, [(span.start_ns, span.end_ns)], depth))
        bars += _vllm_phases(span, depth + 1)
    return bars


def _vllm_phases(span: Span, depth: int) -> list[_Bar]:
    """queue, prefill and decode of a vLLM `llm_request` span, from its attributes."""
    from tracing import vllm

    if not vllm.is_llm_request(span):
        return []
    seconds = {
        "decode": span.attributes.get(vllm.DECODE_S),
        "prefill": span.attributes.get(vllm.PREFILL_S),
        "queue": span.attributes.get(vllm.TIME_IN_QUEUE_S),
    }
    bars: list[_Bar] = []
    end_ns = span.end_ns
    for phase, value in seconds.items():  # backwards from the end: decode, prefill, queue
        if not isinstance(value, (int, float)):
            break
        start_ns = end_ns - int(float(value) * 1e9)
        label = f"{phase} (attribute)"
        bars.append(_Bar(label, span.service_name, [(start_ns, end_ns)], depth, True, phase))
        end_ns = start_ns
    return bars[::-1]


def plot_waterfalls(
    spans: list[Span], breakdowns: list[RequestBreakdown], path: Path
) -> Path | None:
    """One panel per picked request; None when there is no request to draw."""
    from loadgen.plots import _pyplot

    picked = pick_requests(breakdowns)
    if not picked:
        return None
    index = SpanIndex(spans)
    panels = [(title, b, _rows(index, b.trace_id)) for title, b in picked]
    services = list(dict.fromkeys(bar.service for _, _, rows in panels for bar in rows))
    colors = {s: _SERVICE_COLORS[i % len(_SERVICE_COLORS)] for i, s in enumerate(services)}
    plt = _pyplot()
    heights = [max(3, len(rows)) for _, _, rows in panels]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(_WIDTH_IN, _ROW_HEIGHT_IN * sum(heights) + 1.6 * len(panels)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (title, breakdown, rows) in zip(axes[:, 0], panels, strict=True):
        _draw_panel(ax, rows, colors, f"{title}: trace {breakdown.trace_id[:12]}…, "
                    f"E2E {breakdown.e2e_ms:.1f} ms")  # fmt: skip
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[s]) for s in services]
    # below the panels: at the right it covered the longest bars' duration labels
    fig.legend(handles, services, loc="lower center", fontsize=8, ncol=len(services))
    fig.tight_layout(rect=(0, 0.05, 0.95, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def _draw_panel(ax: Any, rows: list[_Bar], colors: dict[str, str], title: str) -> None:
    origin_ns = min(start for bar in rows for start, _ in bar.spans)
    for y, bar in enumerate(rows):
        color = _PHASE_COLORS.get(bar.color) or colors[bar.service]
        ranges = [((s - origin_ns) / 1e6, max((e - s) / 1e6, 1e-3)) for s, e in bar.spans]
        ax.broken_barh(
            ranges,
            (y - 0.38, 0.76),
            facecolors="white" if bar.hatched else color,
            edgecolors=color,
            hatch="////" if bar.hatched else None,
            linewidth=0.6,
        )
        if len(bar.spans) == 1:
            start, width = ranges[0]
            ax.text(start + width, y, f" {width:.1f} ms", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(["  " * bar.depth + bar.label for bar in rows], fontsize=8)
    for label in ax.get_yticklabels():
        label.set_horizontalalignment("left")
    longest = max(len(t.get_text()) for t in ax.get_yticklabels())
    ax.tick_params(axis="y", pad=max(40, 4.6 * longest))  # left-aligned labels: room for them
    ax.invert_yaxis()
    ax.set_xlabel("ms since the request started")
    ax.set_title(title, fontsize=9, loc="left")
    ax.grid(axis="x", alpha=0.3)


# ---------------------------------------------------------------------------- report hook
def report_figure(out: Path, summary: dict[str, Any]) -> Path | None:
    """DIR/plots/waterfall.png from the baseline's first round (its measured, successful
    requests); None when that round has no spans."""
    from experiment import layout
    from tracing.decompose import decompose
    from tracing.readers import TraceReadError, read_file

    variants = {v["name"]: v for v in summary.get("variants", [])}
    baseline = variants.get(summary.get("baseline", "")) or next(iter(variants.values()), None)
    if not baseline or not baseline.get("rounds"):
        return None
    round_dir = out / baseline["rounds"][0]["path"]
    try:
        spans = read_file(round_dir / "spans.jsonl")
        records = layout.read_requests(round_dir)
    except (TraceReadError, OSError, ValueError):
        return None
    measured = {
        r["trace_id"]
        for r in records
        if r.get("status") == "OK" and r.get("is_measured", True) and r.get("trace_id")
    }
    breakdowns = [b for b in decompose(spans) if b.trace_id in measured]
    return plot_waterfalls(spans, breakdowns, out / "plots" / PLOT_NAME)


def report_blocks(path: Path | None) -> list[tuple[str, Any]]:
    if path is None:
        return []
    text = (
        "Two requests of the baseline's first round as Jaeger shows a trace: every hop's spans "
        "on one time axis, indented under their parent, coloured by service. A run of decode "
        "steps shares one row, each step a bar at its own time."
    )
    return [
        ("h2", "One request, span by span"),
        ("p", text),
        ("img", (path, "waterfall of a typical and of the slowest request")),
    ]
