"""`hopscope diagnose` and `hopscope profile`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape

EXIT_BAD_INPUT = 2


def add_parser(sub: argparse._SubParsersAction) -> None:
    diagnose = sub.add_parser(
        "diagnose",
        help="name a run's bottleneck, with evidence, suggestions and the network what-if",
        description="Diagnose an experiment directory (every variant) or a bench summary JSON "
        "with its spans. Writes diagnosis.json; the rules are listed in docs/diagnosis.md.",
    )
    diagnose.add_argument("run", nargs="?", type=Path, help="experiment DIR or bench JSON")
    diagnose.add_argument("--spans", type=Path, help="spans file (default: next to the bench JSON)")
    diagnose.add_argument("--out", type=Path, help="diagnosis.json path (bench input)")
    diagnose.add_argument(
        "--profile",
        type=Path,
        help="a `hopscope profile --out` directory (default: profile/ beside)",
    )
    diagnose.add_argument(
        "--link-delay-ms",
        "--delay-ms-list",
        type=_floats,
        help="what-if link delays, one way, ms (e.g. 1,3); deprecated spelling: --delay-ms-list",
    )
    diagnose.add_argument("--rate-mbit", type=float, default=0.0, help="what-if link rate cap")
    diagnose.add_argument(
        "--calibrate",
        action="store_true",
        help="measure this machine's transport round trips now (stored in ~/.hopscope)",
    )
    diagnose.add_argument("--json", action="store_true", help="print diagnosis.json instead")
    diagnose.set_defaults(func=run_diagnose)

    profile = sub.add_parser(
        "profile",
        help="py-spy every service and torch.profiler the worker's steps",
        description="Samples every service process of a running hopscope with py-spy (flame "
        "graph SVG + speedscope JSON each) and records the worker's steps with torch.profiler "
        "(Chrome trace JSON), all for --duration-s.",
    )
    profile.add_argument("--address", required=True, help="HOST:PORT of the front door")
    # `bench --rate` is requests/s; here a rate is samples/s: named apart (old names kept)
    profile.add_argument(
        "--duration-s",
        "--seconds",
        type=float,
        default=10.0,
        help="how long to record, in seconds (deprecated spelling: --seconds)",
    )
    profile.add_argument("--out", type=Path, required=True, help="output directory")
    profile.add_argument(
        "--sample-rate",
        "--rate",
        type=int,
        default=100,
        help="py-spy samples per second (deprecated spelling: --rate)",
    )
    profile.set_defaults(func=run_profile)


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,3, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected delays >= 0 like 1,3, got {text!r}")
    return values


def _error(message: str) -> int:
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {escape(message)}")
    return EXIT_BAD_INPUT


def run_diagnose(args: argparse.Namespace) -> int:
    from diagnose.calibrate import get_calibration, measure, store_calibration

    console = Console(soft_wrap=True)
    if args.calibrate:
        calibration = measure()
        path = store_calibration(calibration)
        trips = ", ".join(
            f"{t} {by_size[min(by_size)]:.0f}-{by_size[max(by_size)]:.0f} us"
            for t, by_size in calibration.round_trip_us.items()
        )
        console.print(f"calibrated idle round trips ({trips}) -> {path}", highlight=False)
        if args.run is None:
            return 0
    if args.run is None:
        return _error("give RUN (an experiment directory or a bench JSON), or --calibrate")
    if not args.run.exists():
        return _error(f"{args.run} does not exist")
    from tracing.readers import TraceReadError

    try:
        if args.run.is_dir():
            return _diagnose_dir(args, console)
        return _diagnose_bench(args, console, get_calibration())
    except (ValueError, TraceReadError) as exc:
        return _error(str(exc))


def _diagnose_dir(args: argparse.Namespace, console: Console) -> int:
    from diagnose.experiment import WHAT_IF_PLOT, diagnose_experiment
    from diagnose.report import print_diagnosis

    results = diagnose_experiment(args.run)
    if not results:
        return _error(f"{args.run}: no variant directories with round-*/ in it")
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for name, result in results.items():
        if "error" in result:
            console.print(f"[yellow]{escape(name)}: not diagnosed[/]: {escape(result['error'])}")
            continue
        print_diagnosis(result["diagnosis"], name, console)
        prediction = result.get("prediction")
        if prediction:
            console.print(
                f"  predicted from the baseline: TPOT p50 {prediction['tpot_p50_ms']:.2f} ms, "
                f"measured {prediction['measured_tpot_p50_ms']:.2f} ms "
                f"(error {prediction['error']:+.1%})",
                highlight=False,
            )
        console.print()
    console.print(f"wrote {args.run}/VARIANT/diagnosis.json and {args.run}/plots/{WHAT_IF_PLOT}")
    return 0


def _diagnose_bench(args: argparse.Namespace, console: Console, calibration: object) -> int:
    from diagnose.calibrate import Calibration
    from diagnose.core import diagnose_run
    from diagnose.inputs import load_bench_run
    from diagnose.report import plot_what_if, print_diagnosis
    from diagnose.whatif import DEFAULT_DELAYS_MS

    assert calibration is None or isinstance(calibration, Calibration)
    run = load_bench_run(args.run, args.spans, args.profile)
    delays = args.link_delay_ms or list(DEFAULT_DELAYS_MS)
    diagnosis = diagnose_run(run, calibration, delays, args.rate_mbit)
    out = args.out or args.run.with_name("diagnosis.json")
    out.write_text(json.dumps(diagnosis, indent=2) + "\n", encoding="utf-8")
    plot = plot_what_if(diagnosis["what_if"], out.with_name("what_if_tpot.png"))
    if args.json:
        print(json.dumps(diagnosis, indent=2))
        return 0
    print_diagnosis(diagnosis, run.label, console)
    console.print(f"wrote {out} and {plot}", highlight=False)
    return 0


def run_profile(args: argparse.Namespace) -> int:
    from diagnose.profile import ProfileError, profile

    console = Console(soft_wrap=True)
    if args.duration_s <= 0:
        return _error("--duration-s must be > 0")
    try:
        written = profile(
            args.address, args.duration_s, args.out, rate_hz=args.sample_rate, console=console
        )
    except ProfileError as exc:
        return _error(str(exc))
    for path in written:
        console.print(f"wrote {path}", highlight=False)
    return 0
