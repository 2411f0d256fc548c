"""Shared helpers for the benchmark scripts that are not plans (tracing_cost, tls_cost, http_cost,
routing, token_cost).

Each benchmark starts `hopscope serve --no-ray` as a child process through the lifecycle kit
(deploy/lifecycle.py: its own process group, `python -P`, output in a log file, ready once the
front door reports SERVING; the services it starts die with it), drives it with `hopscope bench`
in another child process and reads the bench summary JSON back. Variants are alternated in
rounds within one run, and only one pipeline is alive at a time: on a 2-core machine an idle
pipeline's pollers would otherwise take CPU from the one being measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.lifecycle import ServeChild, start_serve
from experiment.run import rotated  # the experiment's round order, shared by every script

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
DRAIN_TIMEOUT_S = 30.0

# figures copied out of each bench summary into a round's record
SUMMARY_FIGURES = {
    "output_tok_s": ("output_token_throughput",),
    "request_throughput": ("request_throughput",),
    "ttft_p50_ms": ("ttft_ms", "p50"),
    "ttft_p99_ms": ("ttft_ms", "p99"),
    "tpot_p50_ms": ("tpot_ms", "p50"),
    "tpot_p99_ms": ("tpot_ms", "p99"),
    "e2e_p50_ms": ("e2e_ms", "p50"),
    "completed": ("completed",),
    "failed": ("failed",),
    "incomplete": ("incomplete",),
    "duration_s": ("duration_s",),
}


@dataclass(slots=True)
class Server:
    """A running `hopscope serve`; `address` is its front door."""

    child: ServeChild
    log_path: Path
    cpu_s: float = 0.0  # whole pipeline, start-up included; set once it has stopped

    @property
    def address(self) -> str:
        return self.child.address

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.child.child.process


def add_load_args(
    parser: argparse.ArgumentParser,
    *,
    rounds: int,
    num_requests: int,
    warmup_requests: int,
    concurrency: int,
) -> None:
    """The closed-loop load every pipeline benchmark shares (tiny model, 64-token prompts)."""
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--num-requests", type=int, default=num_requests, help="measured, per run")
    parser.add_argument("--warmup-requests", type=int, default=warmup_requests)
    parser.add_argument("--concurrency", type=int, default=concurrency)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--model", default="tiny")


def load_bench_args(args: argparse.Namespace) -> list[str]:
    """`hopscope bench` flags for the load that add_load_args described (seeded, same every run)."""
    return [
        "--concurrency", str(args.concurrency),
        "--num-requests", str(args.num_requests + args.warmup_requests),
        "--warmup-requests", str(args.warmup_requests),
        "--input-len", str(args.input_len),
        "--seed", "0",
    ]  # fmt: skip


def hopscope_argv(*args: str) -> list[str]:
    return [sys.executable, "-P", "-m", "deploy.cli", *args]  # -P: never the cwd's modules


def repo_env() -> dict[str, str]:
    """This environment with the checkout first on PYTHONPATH: a `python -P -m benchmarks.X`
    child finds the (not installed) benchmarks package there, never in its working directory."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def _child_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    # a benchmark's "tracing off" must really be off, whatever the caller's shell exports
    for name in (
        "HOPSCOPE_TRACE_FILE",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ):
        env.pop(name, None)
    env.update(extra or {})
    return env


@contextmanager
def serve(
    serve_args: Sequence[str], log_dir: Path, env: Mapping[str, str] | None = None
) -> Iterator[Server]:
    """Start `hopscope serve --no-ray --port 0 ARGS`, yield it once ready, drain it on exit."""
    with serving(["--no-ray", *serve_args], log_dir, env) as server:
        yield server


@contextmanager
def serving(
    serve_args: Sequence[str], log_dir: Path, env: Mapping[str, str] | None = None
) -> Iterator[Server]:
    """Start `hopscope serve --port 0 ARGS` (Ray or not), yield it once SERVING, drain it on
    exit and record the CPU the whole pipeline used (`cpu_s`, of it and every process it
    waited for)."""
    log_path = log_dir / f"serve-{time.monotonic_ns()}.log"
    child = start_serve(list(serve_args), log_path=log_path, env=_child_env(env), cwd=REPO)
    server = Server(child, log_path)
    try:
        yield server
    finally:
        child.stop(DRAIN_TIMEOUT_S)
        server.cpu_s = child.child.cpu_s or 0.0


def run_bench(
    address: str, bench_args: Sequence[str], out: Path, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Run `hopscope bench` against `address`; returns its summary JSON."""
    argv = hopscope_argv(
        "bench", "--address", address, "--out", str(out), "--no-live", "--no-plots", *bench_args
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        argv, cwd=REPO, env=_child_env(env), capture_output=True, text=True, check=False
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(
            f"hopscope bench failed ({done.returncode}):\n{done.stdout[-1500:]}{done.stderr[-1500:]}"
        )
    result: dict[str, Any] = json.loads(out.read_text())
    result["loadgen_cpu_s"] = (after.ru_utime + after.ru_stime) - (
        before.ru_utime + before.ru_stime
    )
    return result


def figures(result: Mapping[str, Any]) -> dict[str, float]:
    summary = result["summary"]
    out: dict[str, float] = {}
    for name, path in SUMMARY_FIGURES.items():
        value: Any = summary
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        if value is not None:
            out[name] = round(float(value), 3)
    return out


@dataclass(slots=True)
class Variant:
    """One arm of a comparison: how its server is started and how it is loaded."""

    name: str
    serve_args: list[str]
    bench_args: list[str]
    env: dict[str, str] | None = None


def run_rounds(
    variants: Sequence[Variant], num_rounds: int, work_dir: Path
) -> list[dict[str, Any]]:
    """Every variant once per round, order rotated per round, a fresh server per run."""
    records = []
    for round_index in range(num_rounds):
        for name in rotated([v.name for v in variants], round_index):
            variant = next(v for v in variants if v.name == name)
            records.append(run_variant(variant, round_index, work_dir))
    return records


def run_variant(variant: Variant, round_index: int, work_dir: Path) -> dict[str, Any]:
    """One run of a variant; a failed run is retried once, then recorded (without figures)."""
    errors = []
    for _ in range(2):
        try:
            record = _run_variant_once(variant, round_index, work_dir)
        except RuntimeError as exc:
            log(f"round {round_index} {variant.name} failed: {exc}")
            errors.append(str(exc)[-3000:])
            continue
        if errors:
            record["failed_attempts"] = errors
        return record
    return {"round": round_index, "variant": variant.name, "failed_attempts": errors}


def _run_variant_once(variant: Variant, round_index: int, work_dir: Path) -> dict[str, Any]:
    out = work_dir / f"r{round_index}-{variant.name}.json"
    with serve(variant.serve_args, work_dir, variant.env) as server:
        started = time.monotonic()
        bench_args = [*variant.bench_args, "--label", variant.name]
        try:
            result = run_bench(server.address, bench_args, out, variant.env)
        except RuntimeError as exc:
            tail = server.log_path.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"{exc}\nserver log tail:\n{tail}") from exc
        wall_s = time.monotonic() - started
    record = {
        "round": round_index,
        "variant": variant.name,
        "bench_wall_s": round(wall_s, 2),
        "figures": figures(result),
        # CPU bills: robust to other load on the box, unlike tokens/s
        "server_cpu_s_incl_startup": round(server.cpu_s, 2),
        "loadgen_cpu_s": round(result["loadgen_cpu_s"], 2),
    }
    log(f"round {round_index} {variant.name}: {record['figures']}")
    return record


def medians(
    rounds: Sequence[Mapping[str, Any]], variants: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Median of every figure per variant over the rounds."""
    out: dict[str, dict[str, float]] = {}
    for variant in variants:
        runs = [r["figures"] for r in rounds if r["variant"] == variant and "figures" in r]
        names = sorted({name for run in runs for name in run})
        out[variant] = {
            name: round(statistics.median(run[name] for run in runs if name in run), 3)
            for name in names
        }
    return out


def paired_ratios(
    rounds: Sequence[Mapping[str, Any]], numerator: str, denominator: str, figure: str
) -> list[float]:
    """numerator/denominator of `figure` within each round (same round = same machine load)."""
    ratios = []
    for index in sorted({r["round"] for r in rounds}):
        by_variant = {
            r["variant"]: r["figures"] for r in rounds if r["round"] == index and "figures" in r
        }
        top, bottom = by_variant.get(numerator, {}), by_variant.get(denominator, {})
        if top.get(figure) is not None and bottom.get(figure):  # not every variant has each
            ratios.append(round(top[figure] / bottom[figure], 4))
    return ratios


def ratio_checks(
    rounds: Sequence[Mapping[str, Any]],
    numerator: str,
    denominator: str,
    figures: Sequence[tuple[str, str]],
) -> dict[str, dict[str, Any]]:
    """For each (figure, better = "higher" | "lower"): the per-round numerator/denominator ratios,
    their median, and whether the median is on the better side of 1."""
    checks: dict[str, dict[str, Any]] = {}
    for figure, better in figures:
        ratios = paired_ratios(rounds, numerator, denominator, figure)
        median = round(statistics.median(ratios), 4) if ratios else None
        checks[figure] = {
            f"{numerator}_over_{denominator}_per_round": ratios,
            "median_ratio": median,
            "passed": median is not None and (median < 1 if better == "lower" else median > 1),
        }
    return checks


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a dependency
        info["torch"] = None
    info["git_sha"] = _git_sha()
    return info


def _git_sha() -> str:
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip()


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
