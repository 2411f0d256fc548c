"""The CDF figures: one metric per figure, readable tick labels, p50/p99 in the legend."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from loadgen.plots import _pyplot, bench_cdf_plots, cdf_figure, cdf_plot

RNG = np.random.default_rng(7)
WIDE = list(RNG.lognormal(3.0, 1.3, 400))  # ~0.3 .. 2000 ms: several decades
NARROW = list(RNG.normal(120.0, 3.0, 80))  # 110 .. 130 ms


def _labels_overlap(fig) -> bool:  # type: ignore[no-untyped-def]
    fig.canvas.draw()
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
    boxes = [b for b in boxes if ax.bbox.x0 - 1 <= (b.x0 + b.x1) / 2 <= ax.bbox.x1 + 1]
    boxes.sort(key=lambda b: b.x0)
    return any(a.x1 > b.x0 for a, b in pairwise(boxes))


@pytest.mark.parametrize(("values", "is_log"), [(WIDE, True), (NARROW, False)])
def test_axis_is_log_only_across_decades_and_labels_never_overlap(
    values: list[float], is_log: bool
) -> None:
    fig = cdf_figure({"a": values, "b": [v * 1.5 for v in values]}, "ttft_ms", "ms")
    ax = fig.axes[0]
    try:
        assert (ax.get_xscale() == "log") == is_log
        assert not _labels_overlap(fig)
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert len(labels) >= 3
        assert not any("10^" in t or "$" in t or "e+" in t for t in labels)  # plain numbers
        assert ax.get_xlabel() == "Time to first token (TTFT) (ms)"
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        p50, p99 = np.quantile(values, [0.5, 0.99])
        assert legend[0].startswith(f"a: p50 {p50:.3g}, p99 {p99:.3g}")
    finally:
        _pyplot().close(fig)


def test_bench_writes_one_figure_per_metric(tmp_path: Path) -> None:
    samples = {"ttft_ms": WIDE, "tpot_ms": NARROW, "itl_ms": NARROW, "e2e_ms": NARROW,
               "e2e_from_schedule_ms": NARROW}  # fmt: skip
    paths = bench_cdf_plots(tmp_path, {"run": samples})
    assert sorted(p.name for p in paths) == [
        "e2e_cdf.png", "itl_cdf.png", "tpot_cdf.png", "ttft_cdf.png"
    ]  # fmt: skip
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_an_empty_series_still_makes_a_figure(tmp_path: Path) -> None:
    assert cdf_plot({"a": []}, "itl_ms", "ms", tmp_path / "x.png").stat().st_size > 0
