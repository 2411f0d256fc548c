"""PNG plots, one figure per idea: a latency metric's CDF (several runs overlaid, p50/p99 marked),
and throughput vs latency across a sweep.

`cdf_plot` is the reusable piece (bench, bench compare and experiment reports call it):

    cdf_plot({"colocated": ttfts_a, "split": ttfts_b}, "ttft_ms", "ms", Path("ttft_cdf.png"))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# metric key -> what a reader calls it (a key not listed is shown as given)
METRIC_TITLES = {
    "ttft_ms": "Time to first token (TTFT)",
    "tpot_ms": "Time per output token (TPOT)",
    "itl_ms": "Inter-token latency (ITL)",
    "e2e_ms": "End-to-end latency (E2E)",
    "e2e_from_schedule_ms": "E2E from the scheduled send time",
    "schedule_lag_ms": "Schedule lag of the load generator",
}
# the figures `hopscope bench` writes per point: file stem -> {series name: metric key}
BENCH_FIGURES: dict[str, dict[str, str]] = {
    "ttft_cdf": {"TTFT": "ttft_ms"},
    "tpot_cdf": {"TPOT": "tpot_ms"},
    "itl_cdf": {"ITL": "itl_ms"},
    "e2e_cdf": {"E2E from send": "e2e_ms", "E2E from schedule": "e2e_from_schedule_ms"},
}
_LOG_WHEN_DECADES = 2.0  # a log x axis only when the data span at least this many decades
_FIGSIZE_IN = (7.0, 4.4)
_DPI = 120
_QUANTILES = ((0.50, "p50", "o"), (0.99, "p99", "^"))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def metric_title(metric: str) -> str:
    return METRIC_TITLES.get(metric, metric)


def quantile(values: Sequence[float] | np.ndarray, q: float) -> float:
    """numpy's default (linear) quantile, as loadgen/metrics.py reports percentiles."""
    return float(np.quantile(np.asarray(values, dtype=float), q))


def cdf_plot(series: dict[str, list[float]], metric: str, unit: str, path: Path) -> Path:
    """One figure: the empirical CDF of each labelled series overlaid, p50 and p99 of each marked
    on its curve and given in the legend. The x axis is logarithmic only when the values span
    two decades or more, with plain-number tick labels either way. Writes `path`; returns it."""
    plt = _pyplot()
    fig = cdf_figure(series, metric, unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def cdf_figure(series: dict[str, list[float]], metric: str, unit: str) -> Any:
    """The matplotlib Figure `cdf_plot` saves (close it with pyplot.close when done)."""
    plt = _pyplot()
    data = {name: np.sort(np.asarray(v, dtype=float)) for name, v in series.items() if len(v)}
    # the legend sits under the axes (never over a curve); the figure grows with its lines
    width_in, height_in = _FIGSIZE_IN
    fig, ax = plt.subplots(
        figsize=(width_in, height_in + 0.2 * len(data)), dpi=_DPI, layout="constrained"
    )
    for index, (name, values) in enumerate(data.items()):
        _draw_series(ax, name, values, unit, f"C{index % 10}")
    for q, label, _ in _QUANTILES:
        ax.axhline(q, color="0.6", linewidth=0.8, linestyle=":", zorder=0)
        ax.annotate(label, (1.0, q), xycoords=("axes fraction", "data"), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8, color="0.4")  # fmt: skip
    _set_x_axis(ax, np.concatenate(list(data.values())) if data else np.array([]))
    ax.set_ylim(0, 1.02)
    ax.yaxis.set_major_formatter(_percent_formatter())
    ax.set_xlabel(f"{metric_title(metric)} ({unit})")
    ax.set_ylabel(f"{'token gaps' if metric == 'itl_ms' else 'requests'} at or below x")
    ax.set_title(f"{metric_title(metric)}: cumulative distribution")
    ax.grid(True, which="major", alpha=0.3)
    if data:
        fig.legend(loc="outside lower center", fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no samples", transform=ax.transAxes, ha="center", color="0.4")
    return fig


def _draw_series(ax: Any, name: str, values: np.ndarray, unit: str, color: str) -> None:
    fractions = np.arange(1, values.size + 1) / values.size
    marks = {label: quantile(values, q) for q, label, _ in _QUANTILES}
    legend = (
        f"{name}: p50 {_number(marks['p50'])}, p99 {_number(marks['p99'])} {unit} (n={values.size})"
    )
    ax.step(values, fractions, where="post", color=color, linewidth=1.6, label=legend)
    for q, label, marker in _QUANTILES:
        ax.plot([marks[label]], [q], marker=marker, color=color, markersize=6, zorder=3)


def _set_x_axis(ax: Any, values: np.ndarray) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    plain = FuncFormatter(lambda x, _pos: _number(x))
    if is_log_scale(values):
        ax.set_xscale("log")
        # 1-2-5 steps: a label every few millimetres, never overlapping at this width
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
        ax.xaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10)), numticks=12))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        # the data's own range (not from 0): a narrow distribution keeps its shape readable
        ax.xaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 2.5, 5, 10], min_n_ticks=3))
        ax.margins(x=0.04)
    ax.xaxis.set_major_formatter(plain)


def is_log_scale(values: np.ndarray) -> bool:
    """Log x only for positive data spanning two decades or more (else linear reads better)."""
    positive = values[values > 0]
    return bool(
        positive.size == values.size > 1
        and math.log10(positive.max() / positive.min()) >= _LOG_WHEN_DECADES
    )


def _percent_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda y, _pos: f"{y:.0%}")


def _number(x: float) -> str:
    """Plain numbers: 0.25, 3, 12.5, 1500 (no 10^x, no trailing zeros)."""
    if x == 0:
        return "0"
    digits = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:,.{digits}f}".rstrip("0").rstrip(".") if digits else f"{x:,.0f}"


def bench_cdf_plots(
    directory: Path, samples_by_run: dict[str, dict[str, list[float]]]
) -> list[Path]:
    """The figures of BENCH_FIGURES in `directory`, one series per run (and per metric of the
    figure); a figure with no samples at all is skipped."""
    paths = []
    for stem, metrics in BENCH_FIGURES.items():
        series: dict[str, list[float]] = {}
        for run, samples in samples_by_run.items():
            seen: list[list[float]] = []
            for name, key in metrics.items():
                values = samples.get(key, [])
                if any(_is_same_curve(values, other) for other in seen):
                    continue  # closed loop: E2E from schedule is E2E; one curve says it
                seen.append(values)
                label = " · ".join(p for p in (run, name if len(metrics) > 1 else "") if p)
                series[label or name] = values
        if any(series.values()):
            paths.append(
                cdf_plot(series, next(iter(metrics.values())), "ms", directory / f"{stem}.png")
            )
    return paths


def _is_same_curve(a: list[float], b: list[float], tolerance: float = 0.01) -> bool:
    """Same size and every quantile within `tolerance` of the median: indistinguishable."""
    if len(a) != len(b) or not a:
        return len(a) == len(b)
    gap = np.max(np.abs(np.sort(a) - np.sort(b)))
    return bool(gap <= tolerance * abs(float(np.median(b))))


def plot_sweep(path: Path, points: list[dict[str, Any]], title: str) -> Path:
    """Request throughput (x) vs TTFT and E2E p50/p99 (y), one marker per sweep point."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    throughput = [p["summary"]["request_throughput"] for p in points]
    for ax, metric in zip(axes, ("ttft_ms", "e2e_ms"), strict=True):
        for stat in ("p50", "p99"):
            values = [p["summary"][metric][stat] for p in points]
            ax.plot(throughput, [np.nan if v is None else v for v in values], "o-", label=stat)
            if stat == "p99":  # which offered load each point was: "rate-30" -> "rate 30"
                for x, y, point in zip(throughput, values, points, strict=True):
                    tag = str(point["config"].get("point", "")).replace("-", " ")
                    if y is not None and tag:
                        ax.annotate(tag, (x, y), xytext=(0, 6), textcoords="offset points",
                                    ha="center", fontsize=7, color="0.35")  # fmt: skip
        ax.margins(x=0.08, y=0.15)  # room for the point labels
        ax.set_xlabel("completed requests/s")
        ax.set_ylabel(f"{metric_title(metric)} (ms)")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path
