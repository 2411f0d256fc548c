"""Alternating rounds for the KV-reuse benchmarks (prefix_cache, kv_offload): like
common.run_rounds, plus the scheduler's Describe stats (prefix-cache hit rate, preemptions,
swaps) read from each server before it drains."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import common

STATS = (
    "prefix_cache_hit_rate",
    "num_cached_blocks",
    "num_preemptions",
    "num_swapped_out",
)


def run_rounds(
    variants: Sequence[common.Variant], num_rounds: int, work_dir: Path
) -> list[dict[str, Any]]:
    records = []
    for round_index in range(num_rounds):
        for name in common.rotated([v.name for v in variants], round_index):
            variant = next(v for v in variants if v.name == name)
            records.append(_run_once(variant, round_index, work_dir))
    return records


def _run_once(variant: common.Variant, round_index: int, work_dir: Path) -> dict[str, Any]:
    out = work_dir / f"r{round_index}-{variant.name}.json"
    with common.serve(variant.serve_args, work_dir, variant.env) as server:
        started = time.monotonic()
        result = common.run_bench(
            server.address, [*variant.bench_args, "--label", variant.name], out
        )
        wall_s = time.monotonic() - started
        stats = server.child.describe().get("scheduler_stats", {})
    figures = common.figures(result)
    for name in STATS:  # Describe omits zeros (proto3 defaults)
        figures[name] = round(float(stats.get(name, 0)), 4)
    record = {
        "round": round_index,
        "variant": variant.name,
        "bench_wall_s": round(wall_s, 2),
        "figures": figures,
        "server_cpu_s_incl_startup": round(server.cpu_s, 2),
    }
    common.log(f"round {round_index} {variant.name}: {figures}")
    return record
