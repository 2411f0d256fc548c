"""PNG plots: latency CDFs of one point, and throughput vs latency across a sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from loadgen.metrics import LATENCY_METRICS


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_cdfs(path: Path, samples: dict[str, list[float]], title: str) -> Path:
    """One panel per latency metric: the empirical CDF of its raw samples (log-x)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(LATENCY_METRICS), figsize=(4 * len(LATENCY_METRICS), 3.4))
    for ax, name in zip(axes, LATENCY_METRICS, strict=True):
        values = np.sort(np.asarray(samples.get(name, []), dtype=float))
        if values.size:
            ax.plot(values, np.arange(1, values.size + 1) / values.size)
            if values.min() > 0:
                ax.set_xscale("log")
        ax.set_title(name)
        ax.set_xlabel("ms")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("fraction of requests")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_sweep(path: Path, points: list[dict[str, Any]], title: str) -> Path:
    """Request throughput (x) vs TTFT and E2E p50/p99 (y), one marker per sweep point."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    throughput = [p["summary"]["request_throughput"] for p in points]
    for ax, metric in zip(axes, ("ttft_ms", "e2e_ms"), strict=True):
        for stat in ("p50", "p99"):
            values = [p["summary"][metric][stat] for p in points]
            ax.plot(throughput, [np.nan if v is None else v for v in values], "o-", label=stat)
        ax.set_xlabel("completed requests/s")
        ax.set_ylabel(f"{metric}")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
