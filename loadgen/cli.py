"""`hopscope bench` (load generator) and `hopscope bench compare` subcommands."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from loadgen.address import AddressError, parse_address
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
    compare.add_argument(
        "--plots",
        type=Path,
        metavar="DIR",
        default=None,
        help="also write CDF overlays of the runs there (ttft_cdf.png, tpot_cdf.png, ...)",
    )
    compare.set_defaults(func=run_compare_command)


def _add_load_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="HOST:PORT of the hopscope front door (Tokenizer)")
    p.add_argument(
        "--url",
        help="http://HOST:PORT of an OpenAI-compatible HTTP front door (`serve --http-port`), "
        "instead of --address; sends HOPSCOPE_API_KEY as a Bearer key when set",
    )
    p.add_argument(
        "--endpoint",
        choices=["completions", "chat"],
        default="completions",
        help="completions, or chat: each prompt as one user message through the model's chat "
        "template (--url: /v1/chat/completions; --address: Generate's messages), streamed",
    )
    p.add_argument(
        "--chat",
        dest="endpoint",
        action="store_const",
        const="chat",
        help="the same as --endpoint chat (text prompts from a --dataset)",
    )
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
    p.add_argument(
        "--warmup-requests", type=int, default=0, help="first requests sent but not measured"
    )
    p.add_argument(
        "--warmup-s", type=float, default=0.0, help="first seconds sent but not measured"
    )
    p.add_argument(
        "--cooldown-requests", type=int, default=0, help="last requests sent but not measured"
    )
    p.add_argument(
        "--cooldown-s", type=float, default=0.0, help="last seconds sent but not measured"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="client processes (default 0: auto, one per 8 cores, 1 to 8; never more than the "
        "concurrency). One process sends ~20k tokens/s at most on one core",
    )
    p.add_argument("--repeat", type=int, default=1, help="run every point K times (for CIs)")
    p.add_argument("--grace-s", type=float, default=5.0, help="Ctrl-C wait for requests")
    p.add_argument(
        "--request-timeout-s", type=float, default=600.0, help="deadline of each request"
    )
    p.add_argument(
        "--connect-timeout-s",
        type=float,
        default=3.0,
        help="how long to wait for the front door before any load",
    )


def _add_workload_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-len", type=int, default=128, help="synthetic prompt tokens")
    p.add_argument("--output-len", type=int, default=64, help="tokens to generate")
    p.add_argument(
        "--input-len-spread", type=float, default=0.0, help="uniform: ±tokens; normal: std"
    )
    p.add_argument(
        "--output-len-spread", type=float, default=0.0, help="uniform: ±tokens; normal: std"
    )
    p.add_argument("--len-dist", choices=LENGTH_DISTS, help="default fixed; uniform with spread")
    p.add_argument("--dataset", default="", help="JSONL prompts or ShareGPT JSON file")
    p.add_argument(
        "--dataset-format", choices=DATASET_FORMATS, default="jsonl", help="format of --dataset"
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the workload and arrivals")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling; 0 = greedy")
    p.add_argument(
        "--ignore-eos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="generate max tokens past EOS (--no-ignore-eos: let requests stop at EOS)",
    )


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="summary JSON (default bench-results/bench-TIME.json)")
    p.add_argument("--label", default="", help="a name for this run, e.g. the placement")
    p.add_argument("--slo", default="", help="ttft_ms=..,tpot_ms=..,e2e_ms=.. (for goodput)")
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.add_argument("--no-live", action="store_true", help="no live progress line")
    p.add_argument(
        "--max-failed-frac",
        type=_fraction,
        default=0.0,
        help="exit 1 when a point's failed share of its finished requests is above this "
        "(0: any failure fails the run; 1: never)",
    )


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers like 1,2,4") from None


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a fraction in [0, 1], e.g. 0.05")
    return value


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
    if not args.address and not args.url:
        raise BenchConfigError(
            "--address HOST:PORT (the gRPC front door of `hopscope serve`) or --url "
            "http://HOST:PORT (its HTTP front door) is required"
        )
    if args.address and args.url:
        raise BenchConfigError("choose --address (gRPC) or --url (HTTP), not both")
    try:
        # no port: hopscope's 50051, not gRPC's 443 ("" when another front door is named)
        address = parse_address(args.address) if args.address else ""
    except AddressError as exc:
        raise BenchConfigError(f"--address: {exc}") from None
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
        ignore_eos=args.ignore_eos,
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
        num_workers=args.workers or auto_workers(os.cpu_count() or 1, min(concurrencies or [0])),
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
        BenchConfig(
            address,
            load,
            workload,
            slo,
            args.label,
            args.url or "",
            args.endpoint,
            tls_ca=args.tls_ca or "",
        )
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
    from loadgen.frontdoor import UnreachableError
    from loadgen.workloads import DatasetError, Workload

    console = Console()
    try:
        points, tags = build_points(args)
        Workload(points[0].workload)  # a malformed dataset fails here, before any load
        out = args.out or Path("bench-results") / time.strftime("bench-%Y%m%d-%H%M%S.json")
        plan = BenchPlan(
            points,
            tags,
            out,
            _flags(args),
            args.repeat,
            not args.no_plots,
            not args.no_live,
            max_failed_frac=args.max_failed_frac,
        )
        server, deployment = preflight(
            args.url or points[0].address, args.connect_timeout_s, args.tls_ca or ""
        )
    except (BenchConfigError, DatasetError, UnreachableError, ValueError) as exc:
        return _fail("hopscope bench", exc)
    console.print(f"target {server}")
    return _run_traced(plan, console, {**plan.flags, "server": server}, deployment)


def auto_workers(num_cpus: int, concurrency: int = 0) -> int:
    """Client processes by default: one per 8 cores (1 to 8), so on a larger machine the load
    generator is not the bottleneck (~50 µs of client CPU per output token, one process ~20k
    tokens/s), while on a small one it leaves the cores to what it measures."""
    workers = max(1, min(8, num_cpus // 8))
    return min(workers, concurrency) if concurrency else workers


def _run_traced(
    plan: Any, console: Console, flags: dict[str, Any], deployment: dict[str, Any]
) -> int:
    from dataclasses import replace

    from loadgen.bench import run_bench
    from tracing.setup import TracingSettings, configure_tracing, shutdown_tracing

    settings = TracingSettings.from_env()
    if settings.is_enabled:
        if plan.points[0].load.num_workers == 1:
            configure_tracing("hopscope-loadgen")  # worker processes set up their own
        # the client side of the first hop: `traces summarize` needs it for network.client_tokenizer
        console.print(
            f"tracing: client spans (loadgen.request, Generate CLIENT) → {_sink(settings)}"
        )
    try:
        return run_bench(
            replace(plan, flags=flags, deployment=deployment), console, settings.is_enabled
        )
    finally:
        shutdown_tracing()


def _sink(settings: Any) -> str:
    sinks = [settings.otlp_endpoint, settings.trace_file]
    return ", ".join(s for s in sinks if s)


def _fail(command: str, exc: Exception) -> int:
    # stderr, unwrapped: the message must survive pipes and greps whole
    Console(stderr=True, soft_wrap=True).print(f"[bold red]{command}:[/] {exc}", highlight=False)
    return EXIT_BAD_INPUT


def run_compare_command(args: argparse.Namespace) -> int:
    from loadgen.compare import column_samples, compare_table, group_columns, loop_warning
    from loadgen.plots import bench_cdf_plots

    console = Console()
    try:
        columns = group_columns(args.summaries)
        samples = {c.name: column_samples(c) for c in columns} if args.plots else {}
    except ValueError as exc:
        return _fail("hopscope bench compare", exc)
    console.print(compare_table(columns))
    if warning := loop_warning(columns):
        console.print(f"[bold yellow]warning:[/] {warning}", highlight=False)
    if args.plots:
        pngs = bench_cdf_plots(args.plots, samples)
        console.print(f"CDF overlays: {args.plots}/ ({', '.join(p.name for p in pngs)})")
    return 0
