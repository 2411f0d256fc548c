"""The experiment's figures (PNG), one idea each: effects with intervals, where the time goes,
latency CDFs per factor, throughput vs TPOT. Axes labelled with units, p50/p99 marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from experiment.stats import COMPARED
from experiment.summary import component_label

# stacked-bar groups, in the order a request meets them; unknown components land in "other"
GROUPS = (
    ("tokenize/detokenize", ("tokenize", "detokenize")),
    ("queue", ("queue",)),
    ("prefill", ("compute.prefill",)),
    ("decode", ("compute.decode",)),
)
GROUP_COLORS = {
    "tokenize/detokenize": "#8c8c8c",
    "queue": "#d62728",
    "prefill": "#1f77b4",
    "decode": "#2ca02c",
    "other": "#e0e0e0",
}
NETWORK_COLORS = ("#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
VERDICT_COLORS = {"better": "#2ca02c", "worse": "#d62728", "no measurable effect": "#7f7f7f"}
CDF_METRICS = (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("e2e_ms", "E2E latency"))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


# ---------------------------------------------------------------------------- effects
def plot_effects(summary: dict[str, Any], path: Path) -> Path | None:
    """Each variant's ratio to the baseline with its 95% interval, one panel per metric."""
    variants = [v for v in summary["variants"] if v["vs_baseline"]]
    specs = [
        s for s in COMPARED if s.key in ("output_tok_s", "tpot_ms.p50", "ttft_ms.p99", "e2e_ms.p50")
    ]
    if not variants:
        return None
    plt = _pyplot()
    height = 1.2 + 0.45 * len(variants)
    fig, axes = plt.subplots(1, len(specs), figsize=(3.2 * len(specs), height), sharey=True)
    y = np.arange(len(variants))
    for ax, spec in zip(axes, specs, strict=True):
        for i, variant in enumerate(variants):
            entry = variant["vs_baseline"].get(spec.key)
            if entry is None:
                continue
            lo, hi = entry["ci95"]
            color = VERDICT_COLORS.get(entry["verdict"], "black")
            ax.plot([lo, hi], [i, i], color=color, lw=2.5, solid_capstyle="butt")
            ax.plot(entry["ratio"], i, "o", color=color, ms=6)
        ax.axvline(1.0, color="black", lw=0.8, ls="--")
        ax.set_xscale("log")
        _ratio_ticks(ax)
        direction = "higher is better" if spec.higher_is_better else "lower is better"
        ax.set_title(f"{spec.label}\n({direction})", fontsize=9)
        ax.set_xlabel("ratio to baseline (log)", fontsize=8)
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].set_yticks(y, [v["name"] for v in variants], fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(
        "variant / baseline with 95% interval (green better, red worse, grey: "
        "no measurable effect)",
        fontsize=9,
    )
    return _save(fig, path)


NICE_RATIOS = (
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.3,
    0.5,
    0.7,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
    20.0,
    50.0,
    100.0,
)


def _ratio_ticks(ax: Any) -> None:
    """A few round ratios inside the range (always 1×), never crowded."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    lo, hi = ax.get_xlim()
    lo, hi = min(lo, 0.9) / 1.1, max(hi, 1.1) * 1.1  # room for the markers at the ends
    ax.set_xlim(lo, hi)
    ticks = [t for t in NICE_RATIOS if lo <= t <= hi]
    while len(ticks) > 5:
        ticks = [t for i, t in enumerate(ticks) if i % 2 == ticks.index(1.0) % 2]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.set_xticklabels([f"{t:g}×" for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", labelsize=8)


# ---------------------------------------------------------------------------- components
def component_groups(components: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean ms per request in the stacked bar's groups (each hop's network on its own)."""
    grouped: dict[str, float] = {}
    used: set[str] = set()
    for label, names in GROUPS:
        grouped[label] = sum(components.get(n, {}).get("mean_ms", 0.0) for n in names)
        used.update(names)
    for name in sorted(components):
        if name.startswith("network"):
            grouped[component_label(name)] = components[name]["mean_ms"]
            used.add(name)
    grouped["other"] = sum(c["mean_ms"] for n, c in components.items() if n not in used)
    return grouped


def plot_components(summary: dict[str, Any], path: Path) -> Path | None:
    """Where each variant's request time goes: one horizontal stacked bar per variant."""
    variants = [v for v in summary["variants"] if v.get("components")]
    if not variants:
        return None
    plt = _pyplot()
    rows = [component_groups(v["components"]) for v in variants]
    labels = list(dict.fromkeys(k for row in rows for k in row))
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.5 * len(variants)))
    left = np.zeros(len(variants))
    network_index = 0
    for label in labels:
        widths = np.asarray([row.get(label, 0.0) for row in rows])
        if not widths.any():
            continue
        color = GROUP_COLORS.get(label)
        if color is None:
            color = NETWORK_COLORS[network_index % len(NETWORK_COLORS)]
            network_index += 1
        ax.barh(
            range(len(variants)),
            widths,
            left=left,
            color=color,
            label=label,
            edgecolor="white",
            lw=0.5,
        )
        left += widths
    ax.set_yticks(range(len(variants)), [v["name"] for v in variants], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("mean time per request (ms), from the spans")
    ax.set_title("where each variant's request time goes")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return _save(fig, path)


# ---------------------------------------------------------------------------- CDFs
def plot_cdf(series: dict[str, list[float]], metric: str, unit: str, path: Path) -> Path:
    """Empirical CDFs overlaid; each curve's p50 and p99 marked (and named in the legend)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    positive = [v for values in series.values() for v in values if v > 0]
    for name, values in series.items():
        data = np.sort(np.asarray(values, dtype=float))
        if data.size == 0:
            continue
        fraction = np.arange(1, data.size + 1) / data.size
        p50, p99 = np.percentile(data, [50, 99])
        (line,) = ax.step(
            data,
            fraction,
            where="post",
            label=f"{name}  (p50 {_short(p50)}, p99 {_short(p99)} {unit})",
        )
        ax.plot([p50], [0.5], "o", color=line.get_color(), ms=5)
        ax.plot([p99], [0.99], "D", color=line.get_color(), ms=5)
    for level, text in ((0.5, "p50"), (0.99, "p99")):
        ax.axhline(level, color="black", lw=0.6, ls=":")
        ax.annotate(
            text,
            (0, level),
            xycoords=("axes fraction", "data"),
            xytext=(3, 2),
            textcoords="offset points",
            fontsize=8,
        )
    if positive and max(positive) / max(min(positive), 1e-9) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(f"{metric} ({unit})")
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{metric}: distribution per variant (o p50, ◆ p99)")
    return _save(fig, path)


def _short(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


# ---------------------------------------------------------------------------- throughput vs TPOT
def plot_throughput_tpot(summary: dict[str, Any], path: Path) -> Path | None:
    """Output tokens/s against TPOT p50: each round a small dot, each variant's mean a large one
    (up and to the left is better)."""
    variants = [v for v in summary["variants"] if v["rounds"]]
    if not variants:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant in variants:
        xs = [r["tpot_ms"]["p50"] for r in variant["rounds"] if r["tpot_ms"]["p50"] is not None]
        ys = [r["output_tok_s"] for r in variant["rounds"] if r["tpot_ms"]["p50"] is not None]
        if not xs:
            continue
        (dots,) = ax.plot(xs, ys, "o", alpha=0.45, ms=5)
        x, y = float(np.mean(xs)), float(np.mean(ys))
        ax.plot([x], [y], "o", color=dots.get_color(), ms=10, label=variant["name"])
    ax.set_xlabel("TPOT p50 (ms per output token)")
    ax.set_ylabel("output tokens/s")
    ax.set_title("throughput vs time per output token (small: rounds; large: mean)")
    ax.grid(True, alpha=0.3)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)
