"""`hopscope experiment compare DIR_A DIR_B`: two experiments side by side, variant by variant
(the "compare different runs" step: the same plan before and after a change, or on two machines).

A variant whose rounds ran on a contended machine in one experiment and not in the other
(summary.json's `contended_rounds`) is not called better or worse: its ratios are shown uncoloured
with "contention differs"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from experiment import layout
from experiment.summary import CONTENTION_DIFFERS

ROWS = (
    ("output_tok_s", None, True, "output tok/s"),
    ("ttft_ms", "p99", False, "TTFT p99 ms"),
    ("tpot_ms", "p50", False, "TPOT p50 ms"),
    ("e2e_ms", "p50", False, "E2E p50 ms"),
)


def _summary(path: Path) -> dict[str, Any]:
    summary_path = path / layout.SUMMARY
    if not summary_path.exists():
        raise ValueError(f"{path}: no {layout.SUMMARY} (not a finished experiment directory)")
    return dict(layout.read_json(summary_path))


def _value(variant: dict[str, Any], metric: str, stat: str | None) -> float | None:
    value = variant["metrics"].get(metric)
    return value.get(stat) if stat and isinstance(value, dict) else value


def compare_table(dir_a: Path, dir_b: Path) -> Table:
    a, b = _summary(dir_a), _summary(dir_b)
    by_a = {v["name"]: v for v in a["variants"]}
    by_b = {v["name"]: v for v in b["variants"]}
    names = list(dict.fromkeys([*by_a, *by_b]))
    table = Table(title=f"{dir_a} (A) vs {dir_b} (B)", title_justify="left")
    table.add_column("variant")
    for _, _, _, label in ROWS:
        table.add_column(f"{label} A → B", justify="right")
    table.add_column("vs own baseline (tok/s) A | B", justify="right")
    differing = []
    for name in names:
        va, vb = by_a.get(name), by_b.get(name)
        is_comparable = _contention(va) == _contention(vb)
        if not is_comparable:
            differing.append(name)
        cells = [name]
        for metric, stat, higher_is_better, _ in ROWS:
            x = _value(va, metric, stat) if va else None
            y = _value(vb, metric, stat) if vb else None
            cells.append(_cell(x, y, higher_is_better, is_comparable))
        cells.append(f"{_verdict(va)} | {_verdict(vb)}")
        table.add_row(*cells)
    if differing:
        table.caption = (
            f"{CONTENTION_DIFFERS}: {', '.join(differing)} ran on a contended machine in one "
            "experiment only (contended_rounds in summary.json), so A → B is not called better "
            "or worse"
        )
        table.caption_justify = "left"
    return table


def _contention(variant: dict[str, Any] | None) -> bool:
    """Whether any round of the variant ran on a contended machine."""
    return bool(variant and variant.get("contended_rounds"))


def _cell(x: float | None, y: float | None, higher_is_better: bool, is_comparable: bool) -> str:
    if x is None or y is None:
        return f"{_fmt(x)} → {_fmt(y)}"
    ratio = y / x if x else float("nan")
    if not is_comparable:
        return f"{_fmt(x)} → {_fmt(y)} ({ratio:.2f}×, {CONTENTION_DIFFERS})"
    if abs(ratio - 1) < 0.005:
        return f"{_fmt(x)} → {_fmt(y)} (1.00×)"
    is_better = (ratio > 1) == higher_is_better
    style = "green" if is_better else "red"
    return f"{_fmt(x)} → {_fmt(y)} [{style}]({ratio:.2f}×)[/]"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _verdict(variant: dict[str, Any] | None) -> str:
    if not variant or variant["factor"] is None:
        return "-" if not variant else "baseline"
    entry = variant["vs_baseline"].get("output_tok_s")
    return "-" if not entry else f"{entry['ratio']:.2f}× {entry['verdict']}"
