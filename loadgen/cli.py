"""`hopscope bench` (load generator) and `hopscope bench compare` subcommands."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from loadgen.config import (
    ARRIVALS,
    DATASET_FORMATS,
    LENGTH_DISTS,
    BenchConfig,
    BenchConfigError,
    LengthSpec,
    LoadConfig,
    SloConfig,
    WorkloadConfig,
)

EXIT_BAD_INPUT = 2
DEFAULT_NUM_REQUESTS = 100


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `bench` and its `compare` subcommand."""
    bench = sub.add_parser(
        "bench",
        help="drive a running hopscope with load and measure it",
        description="Open-loop (--rate) or closed-loop (--concurrency) load against a "
        "hopscope front door; writes a summary JSON, per-request JSONL and plots.",
    )
    _add_load_flags(bench)
    _add_workload_flags(bench)
    _add_output_flags(bench)
    bench.set_defaults(func=run_bench_command)
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="{compare}")
    compare = bench_sub.add_parser("compare", help="show bench summaries side by side")
    compare.add_argument("summaries", nargs="+", type=Path, help="summary JSON files")
    compare.set_defaults(func=run_compare_command)


def _add_load_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="HOST:PORT of the hopscope front door (Tokenizer)")
    p.add_argument(
        "--tls-ca", default="", help="TLS to the front door, trusting this CA certificate"
    )
    p.add_argument("--rate", type=_float_list, help="open loop, requests/s; a list sweeps: 1,2,4")
    p.add_argument("--concurrency", type=_int_list, help="closed loop; a list sweeps: 1,4,16")
    p.add_argument("--max-concurrency", type=int, help="cap on requests in flight under --rate")
    p.add_argument("--arrival", choices=ARRIVALS, help="open-loop arrivals (default poisson)")
    p.add_argument("--burstiness", type=float, help="gamma shape: 1 Poisson, <1 burstier")
    p.add_argument("--num-requests", type=int, help=f"per point (default {DEFAULT_NUM_REQUESTS})")
    p.add_argument("--duration-s", type=float, help="per point, instead of --num-requests")
    p.add_argument("--warmup-requests", type=int, default=0)
    p.add_argument("--warmup-s", type=float, default=0.0)
    p.add_argument("--cooldown-requests", type=int, default=0)
    p.add_argument("--cooldown-s", type=float, default=0.0)
    p.add_argument("--workers", type=int, default=1, help="client processes")
    p.add_argument("--repeat", type=int, default=1, help="run every point K times (for CIs)")
    p.add_argument("--grace-s", type=float, default=5.0, help="Ctrl-C wait for requests")
    p.add_argument("--request-timeout-s", type=float, default=600.0)
    p.add_argument("--connect-timeout-s", type=float, default=3.0)


def _add_workload_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-len", type=int, default=128, help="synthetic prompt tokens")
    p.add_argument("--output-len", type=int, default=64, help="tokens to generate")
    p.add_argument("--input-len-spread", type=float, default=0.0)
    p.add_argument("--output-len-spread", type=float, default=0.0)
    p.add_argument("--len-dist", choices=LENGTH_DISTS, help="default fixed; uniform with spread")
    p.add_argument("--dataset", default="", help="JSONL prompts or ShareGPT JSON file")
    p.add_argument("--dataset-format", choices=DATASET_FORMATS, default="jsonl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--no-ignore-eos", action="store_true", help="let requests stop at EOS")


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="summary JSON (default bench-results/bench-TIME.json)")
    p.add_argument("--label", default="", help="a name for this run, e.g. the placement")
    p.add_argument("--slo", default="", help="ttft_ms=..,tpot_ms=..,e2e_ms=.. (for goodput)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-live", action="store_true", help="no live progress line")


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers like 1,2,4") from None


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers like 1,4,16") from None


def _lengths(args: argparse.Namespace) -> tuple[LengthSpec, LengthSpec]:
    dist = args.len_dist or (
        "uniform" if args.input_len_spread or args.output_len_spread else "fixed"
    )
    return (
        LengthSpec(args.input_len, args.input_len_spread, dist),
        LengthSpec(args.output_len, args.output_len_spread, dist),
    )


def _arrival(args: argparse.Namespace) -> tuple[str, float]:
    if args.burstiness is None:
        return args.arrival or "poisson", 1.0
    if args.arrival in ("poisson", "constant"):
        raise BenchConfigError(f"--burstiness needs gamma arrivals, not --arrival {args.arrival}")
    return "gamma", args.burstiness


def build_points(args: argparse.Namespace) -> tuple[list[BenchConfig], list[str]]:
    """One BenchConfig per sweep point, with its tag ("" when there is one point)."""
    if not args.address:
        raise BenchConfigError(
            "--address HOST:PORT is required (the front door of `hopscope serve`)"
        )
    rates, concurrencies = args.rate or [], args.concurrency or []
    if rates and concurrencies:
        raise BenchConfigError("choose --rate (open loop) or --concurrency (closed loop), not both")
    if not rates and not concurrencies:
        raise BenchConfigError("choose --rate R (open loop) or --concurrency C (closed loop)")
    input_len, output_len = _lengths(args)
    workload = WorkloadConfig(
        input_len=input_len,
        output_len=output_len,
        dataset=args.dataset,
        dataset_format=args.dataset_format,
        seed=args.seed,
        ignore_eos=not args.no_ignore_eos,
        temperature=args.temperature,
    )
    slo = SloConfig.parse(args.slo)
    arrival, burstiness = _arrival(args)
    num_requests = args.num_requests
    if num_requests is None and args.duration_s is None:
        num_requests = DEFAULT_NUM_REQUESTS
    common: dict[str, Any] = dict(  # noqa: C408 - keyword form mirrors LoadConfig
        max_concurrency=args.max_concurrency,
        arrival=arrival,
        burstiness=burstiness,
        num_requests=num_requests,
        duration_s=args.duration_s,
        warmup_requests=args.warmup_requests,
        warmup_s=args.warmup_s,
        cooldown_requests=args.cooldown_requests,
        cooldown_s=args.cooldown_s,
        num_workers=args.workers,
        grace_s=args.grace_s,
        request_timeout_s=args.request_timeout_s,
    )
    if rates:
        loads = [LoadConfig(rate=r, **common) for r in rates]
        tags = [f"rate-{r:g}" for r in rates]
    else:
        loads = [LoadConfig(concurrency=c, **common) for c in concurrencies]
        tags = [f"concurrency-{c}" for c in concurrencies]
    configs = [
        BenchConfig(args.address, load, workload, slo, args.label, tls_ca=args.tls_ca or "")
        for load in loads
    ]
    return configs, tags if len(configs) > 1 else [""]


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"func", "bench_command", "command"}
    return {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in skip
    }


def run_bench_command(args: argparse.Namespace) -> int:
    from loadgen.bench import BenchPlan, preflight
    from loadgen.runner import UnreachableError
    from loadgen.workloads import DatasetError, Workload

    console = Console()
    try:
        points, tags = build_points(args)
        Workload(points[0].workload)  # a malformed dataset fails here, before any load
        out = args.out or Path("bench-results") / time.strftime("bench-%Y%m%d-%H%M%S.json")
        plan = BenchPlan(
            points, tags, out, _flags(args), args.repeat, not args.no_plots, not args.no_live
        )
        server = preflight(args.address, args.connect_timeout_s, args.tls_ca or "")
    except (BenchConfigError, DatasetError, UnreachableError, ValueError) as exc:
        return _fail("hopscope bench", exc)
    console.print(f"target {server}")
    return _run_traced(plan, console, {**plan.flags, "server": server})


def _run_traced(plan: Any, console: Console, flags: dict[str, Any]) -> int:
    from dataclasses import replace

    from loadgen.bench import run_bench
    from tracing.setup import TracingSettings, configure_tracing, shutdown_tracing

    is_tracing = TracingSettings.from_env().is_enabled
    if is_tracing and plan.points[0].load.num_workers == 1:
        configure_tracing("hopscope-loadgen")  # worker processes set up their own
    try:
        return run_bench(replace(plan, flags=flags), console, is_tracing)
    finally:
        shutdown_tracing()


def _fail(command: str, exc: Exception) -> int:
    # stderr, unwrapped: the message must survive pipes and greps whole
    Console(stderr=True, soft_wrap=True).print(f"[bold red]{command}:[/] {exc}", highlight=False)
    return EXIT_BAD_INPUT


def run_compare_command(args: argparse.Namespace) -> int:
    from loadgen.compare import compare_table, group_columns

    console = Console()
    try:
        columns = group_columns(args.summaries)
    except ValueError as exc:
        return _fail("hopscope bench compare", exc)
    console.print(compare_table(columns))
    return 0
