"""`hopscope experiment PLAN --out DIR`, `--list`, `compare DIR_A DIR_B`, `report DIR`,
`next DIR [--out DIR2] [--variant NAME]`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

EXIT_BAD_INPUT = 2
USAGE = (
    "hopscope experiment PLAN --out DIR [--resume] [--quiet] [--ray-address ADDR]\n"
    "       hopscope experiment --list\n"
    "       hopscope experiment compare DIR_A DIR_B\n"
    "       hopscope experiment report DIR\n"
    "       hopscope experiment next DIR [--out DIR2] [--variant NAME]"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "experiment",
        help="measure a baseline and variants that change one setting each; write a report",
        usage=USAGE,
        description="Runs every variant of PLAN (a YAML file or a built-in plan's name) in "
        "rounds against the baseline, and writes DIR/summary.json and DIR/report.html.",
    )
    p.add_argument(
        "plan",
        nargs="?",
        help="YAML file or built-in plan (see --list); or `compare` / `report` / `next`",
    )
    p.add_argument("dirs", nargs="*", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help="experiment directory to write")
    p.add_argument("--list", action="store_true", help="list the built-in plans")
    p.add_argument("--resume", action="store_true", help="skip variant-rounds complete in --out")
    p.add_argument("--quiet", action="store_true", help="no progress display (for scripts)")
    p.add_argument("--ray-address", default="", help="use this Ray cluster instead of starting one")
    p.add_argument(
        "--variant",
        help="next: the variant of DIR whose top suggestion to test (default: the one with the "
        "largest bottleneck)",
    )
    p.set_defaults(func=run_experiment_command)


def _fail(message: str) -> int:
    Console(stderr=True, soft_wrap=True, highlight=False).print(
        f"[bold red]hopscope experiment:[/] {message}"
    )
    return EXIT_BAD_INPUT


def run_experiment_command(args: argparse.Namespace) -> int:
    if args.list:
        from experiment.plan import list_lines

        print("\n".join(list_lines()))
        return 0
    if args.plan == "compare":
        return _compare(args.dirs)
    if args.plan == "report":
        return _report(args.dirs)
    if args.plan == "next":
        return _next(args)
    if not args.plan:
        return _fail(f"name a plan (--list shows the built-in ones)\nusage: {USAGE}")
    if args.dirs:
        return _fail(f"unexpected arguments {' '.join(map(str, args.dirs))}\nusage: {USAGE}")
    if args.out is None:
        return _fail("--out DIR is required (where the results and the report go)")
    from experiment.plan import PlanError, load_plan
    from experiment.run import ExperimentError, run_experiment

    try:
        plan = load_plan(args.plan, ray_address=args.ray_address)
        if plan.workloads:
            return _run_workloads(plan, args)
        code = run_experiment(
            plan,
            args.out,
            is_resume=args.resume,
            is_quiet=args.quiet,
            ray_address=args.ray_address,
        )
    except (PlanError, ExperimentError) as exc:
        return _fail(str(exc))
    if code == 0:
        print_outcome(args.out)
    return code


def print_outcome(out: Path) -> None:
    """On stdout, terminal or not: each variant's headline and diagnosis, and the `next`
    command that tests the top suggestion."""
    from diagnose.report import print_verdict
    from experiment import layout
    from experiment.next_step import next_command, predicted_vs_measured, top_step

    summary = layout.read_json(out / layout.SUMMARY)
    console = Console(soft_wrap=True, highlight=False)
    for variant in summary["variants"]:
        diagnosis = variant.get("diagnosis") or {}
        if diagnosis.get("headline"):
            print_verdict(diagnosis, variant["name"], console)
    for row in predicted_vs_measured(summary):
        console.print(_prediction_line(row))
    step = top_step(summary)
    if step is not None:
        console.print(
            f"next: {next_command(out, step)}  (tests `{step.suggestion['switch']}` on "
            f"{step.variant}: {step.finding}, {step.share:.0%} of E2E)"
        )


def _run_workloads(plan: Any, args: argparse.Namespace) -> int:
    """A plan with named workloads: one experiment per workload in DIR/<workload>/ (each its own
    summary.json and report), and DIR/report.md linking them. Stops at the first that fails."""
    from experiment.run import run_experiment

    args.out.mkdir(parents=True, exist_ok=True)
    lines = [f"# hopscope experiment: {plan.name}", "", plan.description, ""]
    for name in plan.workloads:
        code = run_experiment(
            plan.for_workload(name),
            args.out / name,
            is_resume=args.resume,
            is_quiet=args.quiet,
            ray_address=args.ray_address,
        )
        if code:
            return code
        overrides = ", ".join(f"{k}={v}" for k, v in plan.workloads[name].items())
        lines.append(f"- [{name}]({name}/report.html) ({overrides}): `{name}/summary.json`")
    (args.out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"reports: {args.out / 'report.md'} (one experiment per workload)")
    return 0


def _prediction_line(row: dict[str, Any]) -> str:
    head = f"{row['variant']}: {row['metric']} predicted {row['predicted']:.2f}x"
    if row.get("measured_ratio") is None:
        return f"{head}, not measured"
    return f"{head}, measured {row['measured_ratio']:.2f}x (error {row['error']:+.0%})"


def _next(args: argparse.Namespace) -> int:
    """Write the plan that tests DIR's top suggestion, run it into DIR2, report predicted vs
    measured."""
    from experiment import layout
    from experiment.next_step import NextError, steps, write_plan
    from experiment.plan import PlanError, load_plan
    from experiment.run import ExperimentError, run_experiment

    if len(args.dirs) != 1 or not (args.dirs[0] / layout.SUMMARY).exists():
        return _fail("next needs one experiment directory (with summary.json): next DIR")
    exp_dir = args.dirs[0]
    summary = layout.read_json(exp_dir / layout.SUMMARY)
    plan, skipped = None, []
    for step in steps(summary, args.variant):  # the first suggestion a plan can hold
        try:
            plan_path = write_plan(exp_dir, step)
            plan = load_plan(str(plan_path), ray_address=args.ray_address)
            break
        except (NextError, PlanError) as exc:
            skipped.append(f"`{step.suggestion['switch']}` on {step.variant}: {exc}")
            print(f"skipped {skipped[-1]}")
    if plan is None:
        which = f"variant {args.variant!r}" if args.variant else "any variant"
        why = "; ".join(skipped) or f"run `hopscope diagnose {exp_dir}` first"
        return _fail(
            f"next: no diagnosed suggestion that a plan can test for {which} of {exp_dir} ({why})"
        )
    print(f"plan: {plan_path} (tests `{step.suggestion['switch']}` on {step.variant})")
    out = args.out or exp_dir.with_name(exp_dir.name + "-next")
    try:
        code = run_experiment(
            plan, out, is_resume=args.resume, is_quiet=args.quiet, ray_address=args.ray_address
        )
    except ExperimentError as exc:
        return _fail(str(exc))
    if code == 0:
        print_outcome(out)
    return code


def _compare(dirs: list[Path]) -> int:
    from experiment.compare import compare_table

    if len(dirs) != 2:
        return _fail("compare needs two experiment directories: compare DIR_A DIR_B")
    try:
        table = compare_table(dirs[0], dirs[1])
    except (OSError, ValueError, KeyError) as exc:
        return _fail(f"compare: {exc}")
    Console().print(table)
    return 0


def _report(dirs: list[Path]) -> int:
    """Rebuild summary.json and the report from an experiment directory's raw files."""
    from experiment.run import finish

    if len(dirs) != 1 or not (dirs[0] / "plan.json").exists():
        return _fail("report needs one experiment directory (with plan.json): report DIR")
    code = finish(dirs[0], Console(stderr=True))
    if code == 0:
        print_outcome(dirs[0])
    return code
