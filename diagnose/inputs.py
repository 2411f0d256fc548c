"""A run's raw inputs, read from an experiment variant's directory (every round pooled) or from a
bench result JSON with its spans next to it. Layout: ARCHITECTURE.md, "Experiment directory"."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from tracing.model import Span
from tracing.readers import read_file

ENGINE_PROCESS = "worker"  # the engine's process; every other one is "outside the engine"


@dataclass(slots=True)
class RunInputs:
    label: str
    spans: list[Span]
    bench: dict[str, Any] | None = None  # the first round's bench summary (latencies pooled below)
    describe: dict[str, Any] | None = None
    cpu: list[dict[str, Any]] = field(default_factory=list)  # cpu.json of each round
    metrics: dict[str, str] = field(default_factory=dict)  # service -> Prometheus text
    bench_rounds: list[dict[str, Any]] = field(default_factory=list)
    profile_dir: Path | None = None  # a `hopscope profile --out` directory, when there is one
    # the serve settings in force (an experiment variant's resolved flags); None for a bench file
    deployment: dict[str, Any] | None = None
    # the trace ids of the measured, successful requests (requests.jsonl): the diagnosis reads the
    # same requests as summary.json's table and the report's figures; None when unknown
    measured_trace_ids: set[str] | None = None
    # summary.json's pooled metrics of this variant (TPOT / TTFT / E2E percentiles over every
    # round's measured requests, tokens/s mean over rounds): the one definition of each figure
    figures: dict[str, Any] | None = None

    def contention(self) -> dict[str, Any] | None:
        """The rounds' cpu.json `contention` (CONTENTION_SCHEMA): wait share and outside cores
        pooled over rounds (run-queue wait and CPU summed), contended when any round was."""
        docs = [d["contention"] for d in self.cpu if isinstance(d.get("contention"), dict)]
        if not docs:
            return None
        wait_s = sum(float(d.get("run_queue_wait_s") or 0.0) for d in docs)
        cpu_s = sum(
            float(p.get("cpu_s") or 0.0) for d in docs for p in (d.get("processes") or {}).values()
        )
        duration_s = sum(float(d.get("duration_s") or 0.0) for d in docs)
        outside_s = sum(float(d.get("outside_cpu_s") or 0.0) for d in docs)
        return {
            "run_queue_wait_s": wait_s,
            "wait_share": wait_s / (wait_s + cpu_s) if wait_s + cpu_s > 0 else 0.0,
            "outside_cores": outside_s / duration_s if duration_s > 0 else 0.0,
            "num_cores": max(int(d.get("num_cores") or 0) for d in docs),
            "is_contended": any(bool(d.get("is_contended")) for d in docs),
            "num_rounds": len(docs),
            "num_contended_rounds": sum(bool(d.get("is_contended")) for d in docs),
        }

    def cpu_us_per_token(self) -> dict[str, float]:
        """Median over rounds of each process's CPU µs per output token (cpu.json)."""
        per_process: dict[str, list[float]] = {}
        for doc in self.cpu:
            for process, value in (doc.get("cpu_us_per_token") or {}).items():
                if isinstance(value, int | float):
                    per_process.setdefault(process, []).append(float(value))
        return {process: median(values) for process, values in per_process.items()}

    def kv_pressure(self) -> tuple[float | None, int | None]:
        """(KV-block usage share, preemptions) from the scheduler's metrics, when scraped."""
        text = self.metrics.get("scheduler")
        if not text:
            return None, None
        values = _prom_values(text)
        used, free = values.get("hopscope_kv_blocks_used"), values.get("hopscope_kv_blocks_free")
        usage = used / (used + free) if used is not None and free and used + free > 0 else None
        preemptions = values.get("hopscope_preemptions_total")
        return usage, int(preemptions) if preemptions is not None else None


def _prom_values(text: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + float(sample.value)
    return values


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_variant(variant_dir: Path) -> RunInputs:
    """Every `round-*` of one experiment variant, pooled."""
    rounds = sorted(p for p in variant_dir.glob("round-*") if p.is_dir())
    if not rounds:
        raise ValueError(f"{variant_dir}: no round-*/ directories (is it an experiment variant?)")
    run = RunInputs(label=variant_dir.name, spans=[], measured_trace_ids=set())
    variant = _read_json(variant_dir / "variant.json") or {}
    deployment = variant.get("deployment")
    run.deployment = deployment if isinstance(deployment, dict) else None
    for round_dir in rounds:
        spans_path = round_dir / "spans.jsonl"
        if spans_path.exists():
            run.spans.extend(read_file(spans_path))
        bench = _read_json(round_dir / "bench.json")
        if bench is not None:
            run.bench_rounds.append(bench)
            _add_measured(run, round_dir, bench)
        cpu = _read_json(round_dir / "cpu.json")
        if cpu is not None:
            run.cpu.append(cpu)
        run.describe = _read_json(round_dir / "describe.json") or run.describe
        for prom in sorted((round_dir / "metrics").glob("*.prom")):
            run.metrics[prom.stem] = prom.read_text(encoding="utf-8")
    run.bench = _pooled_bench(run.bench_rounds)
    if not run.measured_trace_ids:
        run.measured_trace_ids = None
    run.profile_dir = variant_dir / "profile" if (variant_dir / "profile").is_dir() else None
    return run


def _add_measured(run: RunInputs, folder: Path, bench: dict[str, Any]) -> None:
    """The trace ids of a round's measured, successful requests (warm-up requests are not)."""
    path = Path(str(bench.get("requests_file") or folder / "requests.jsonl"))
    if not path.is_file():
        path = folder / path.name
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return
    for line in lines:
        try:
            row = json.loads(line) if line.strip() else {}
        except ValueError:
            continue
        if row.get("status") == "OK" and row.get("is_measured", True) and row.get("trace_id"):
            assert run.measured_trace_ids is not None
            run.measured_trace_ids.add(str(row["trace_id"]))


def _pooled_bench(rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One summary whose p50s and throughput are the medians over rounds."""
    if not rounds:
        return None
    pooled: dict[str, Any] = {"config": rounds[0].get("config", {}), "summary": {}}
    summaries = [r.get("summary", {}) for r in rounds]
    for key in ("ttft_ms", "tpot_ms", "e2e_ms", "itl_ms"):
        p50s = [s[key]["p50"] for s in summaries if isinstance(s.get(key), dict)]
        if p50s:
            pooled["summary"][key] = {"p50": median(p50s)}
    tok_s = [s["output_token_throughput"] for s in summaries if "output_token_throughput" in s]
    if tok_s:
        pooled["summary"]["output_token_throughput"] = median(tok_s)
    return pooled


def load_bench_run(
    bench_path: Path, spans_path: Path | None = None, profile_dir: Path | None = None
) -> RunInputs:
    """A `hopscope bench --out` summary and its spans (`--spans`, or a spans file beside it), and
    a `hopscope profile` directory (`--profile`, or `profile/` beside it)."""
    bench = _read_json(bench_path)
    if bench is None or "summary" not in bench:
        raise ValueError(f"{bench_path}: not a hopscope bench summary JSON")
    spans_path = spans_path or _spans_beside(bench_path)
    run = RunInputs(label=bench_path.stem, spans=read_file(spans_path), bench=bench)
    run.bench_rounds = [bench]
    folder = bench_path.parent
    # Describe beside the file (an experiment round), else the deployment bench recorded in it
    recorded = bench.get("deployment") if isinstance(bench.get("deployment"), dict) else None
    run.describe = _read_json(folder / "describe.json") or recorded or None
    cpu = _read_json(folder / "cpu.json")
    run.cpu = [cpu] if cpu else []
    for prom in sorted((folder / "metrics").glob("*.prom")):
        run.metrics[prom.stem] = prom.read_text(encoding="utf-8")
    run.profile_dir = profile_dir or (folder / "profile" if (folder / "profile").is_dir() else None)
    return run


def _spans_beside(bench_path: Path) -> Path:
    stem = bench_path.with_suffix("")
    candidates = [
        stem.with_name(stem.name + ".spans.jsonl"),
        bench_path.parent / "spans.jsonl",
    ]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise ValueError(f"no spans found next to {bench_path} (tried {tried}); pass --spans FILE")
