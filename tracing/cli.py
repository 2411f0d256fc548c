"""`hopscope traces collect|summarize|show|export`: receive, read back, decompose, convert."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from dataclasses import asdict
from types import FrameType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from tracing.collector import DEFAULT_LISTEN, CollectorError, OtlpCollector
from tracing.model import Span, normalize_trace_id
from tracing.report import FOLD_ABOVE_ROWS

if TYPE_CHECKING:
    from tracing.filters import RequestFilter


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `hopscope traces ...`."""
    traces = sub.add_parser("traces", help="collect traces and break requests down by hop")
    actions = traces.add_subparsers(dest="traces_command", required=True, metavar="ACTION")

    collect = actions.add_parser("collect", help="an OTLP/gRPC receiver writing OTLP JSON lines")
    collect.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT (default %(default)s)")
    collect.add_argument("--out", required=True, help="OTLP JSON lines file to append to")
    collect.add_argument(
        "--duration-s", type=float, default=None, help="stop after this long (default: signal)"
    )
    collect.set_defaults(func=run_collect)

    summarize = actions.add_parser(
        "summarize",
        help="per-component breakdown over requests",
        description="Where each request's time went, summarized over requests. A span file "
        "may hold many runs: --label, --since/--until and --requests pick one.",
    )
    _add_source_args(summarize)
    summarize.add_argument(
        "--label", default=None, help="only requests a `hopscope bench --label LABEL` run sent"
    )
    summarize.add_argument(
        "--until", default=None, help="only requests that started by then (same forms as --since)"
    )
    summarize.add_argument(
        "--requests",
        metavar="FILE",
        default=None,
        help="only the trace ids in a bench run's records JSONL (or its summary JSON)",
    )
    summarize.add_argument(
        "--deployment",
        metavar="PLACEMENT/MODEL",
        default=None,
        help="only requests of this deployment (a placement, a model, or PLACEMENT/MODEL as "
        "the summary names them); without it each deployment is summarized on its own",
    )
    summarize.add_argument("--json", action="store_true", help="print the summary as JSON")
    summarize.add_argument(
        "--per-request", action="store_true", help="with --json: add every request's breakdown"
    )
    summarize.set_defaults(func=run_summarize)

    show = actions.add_parser("show", help="one request's waterfall and breakdown")
    show.add_argument("trace_id", help="hex trace id (as in the loadgen records or Jaeger)")
    _add_source_args(show)
    show.add_argument(
        "--steps",
        choices=("auto", "fold", "all"),
        default="auto",
        help="fold: consecutive decode steps as one row (count, sum, p50); all: a row per "
        "span; auto: fold when the request has more than "
        f"{FOLD_ABOVE_ROWS} rows",
    )
    show.set_defaults(func=run_show)

    export = actions.add_parser(
        "export",
        help="convert spans to a file the Jaeger UI opens (Upload JSON)",
        description="Read spans (OTLP JSON lines from `traces collect`, or any Jaeger JSON) and "
        "write them in Jaeger's UI JSON, which the Jaeger UI's search page loads with "
        "'Upload JSON', no collector or storage needed.",
    )
    export.add_argument("--input", required=True, help="OTLP JSON lines file, or Jaeger JSON")
    export.add_argument(
        "--jaeger", metavar="FILE", required=True, help="Jaeger UI JSON file to write"
    )
    export.add_argument(
        "--trace-id",
        action="append",
        default=None,
        metavar="HEX",
        help="only this trace (repeatable; default: every trace in the input)",
    )
    export.set_defaults(func=run_export)


def _add_source_args(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="OTLP JSON lines file, or a Jaeger JSON download")
    source.add_argument(
        "--jaeger", metavar="URL", help="Jaeger query service, e.g. http://127.0.0.1:16686"
    )
    parser.add_argument("--service", default=None, help="Jaeger: only traces of this service")
    parser.add_argument(
        "--since",
        default=None,
        help="only requests that started after WHEN: a duration ago (30s, 15m, 2h, 1d), unix "
        "seconds or an ISO 8601 time; Jaeger: the query window (default 15m)",
    )


def _load_spans(args: argparse.Namespace) -> list[Span]:
    from datetime import UTC, datetime, timedelta

    from tracing.filters import parse_when
    from tracing.jaeger import query_jaeger
    from tracing.readers import read_file

    if args.input:
        return read_file(args.input)
    window = timedelta(minutes=15)
    if args.since:
        window = datetime.now(UTC) - parse_when(args.since)
    return query_jaeger(args.jaeger, service=args.service, since=window)


def _request_filter(args: argparse.Namespace) -> RequestFilter:
    from tracing.filters import RequestFilter, parse_when, read_trace_ids

    return RequestFilter(
        label=args.label,
        since=parse_when(args.since) if args.since else None,
        until=parse_when(args.until) if args.until else None,
        trace_ids=read_trace_ids(args.requests) if args.requests else None,
    )


def _error(message: str) -> None:
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/] {escape(message)}")


def run_collect(args: argparse.Namespace) -> int:
    console = Console(stderr=True, soft_wrap=True)
    collector = OtlpCollector(args.out, listen=args.listen)
    try:
        collector.start()
    except CollectorError as exc:
        _error(str(exc))
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    host = args.listen.rpartition(":")[0]
    console.print(
        f"collecting OTLP/gRPC traces on {host}:{collector.port} → {args.out}",
        markup=False,
        highlight=False,
        soft_wrap=True,  # one line: scripts read the port
    )
    # without the http:// scheme the SDK's OTLP exporter tries TLS and this receiver is plaintext
    console.print(
        f"point exporters here with OTEL_EXPORTER_OTLP_ENDPOINT=http://{host}:{collector.port}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    try:
        stop.wait(args.duration_s)
    finally:
        collector.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    console.print(f"wrote {collector.num_spans} spans to {args.out}", markup=False, soft_wrap=True)
    return 0


def run_summarize(args: argparse.Namespace) -> int:
    from tracing.decompose import decompose
    from tracing.readers import TraceReadError
    from tracing.report import console_for_output, print_summary
    from tracing.summary import by_deployment, deployment_name, summarize_deployments

    try:
        request_filter = _request_filter(args)
        spans = _load_spans(args)
    except (TraceReadError, ValueError) as exc:
        _error(str(exc))
        return 2
    found = decompose(spans)
    breakdowns = request_filter.apply(found)
    if args.deployment is not None:
        breakdowns = [b for b in breakdowns if _is_deployment(b.deployment, args.deployment)]
    summary = summarize_deployments(breakdowns)
    if request_filter.is_active:
        summary["filter"] = {**request_filter.describe(), "num_requests_read": len(found)}
    if args.json and args.per_request:
        summary["per_request"] = [asdict(b) for b in breakdowns]
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    console = console_for_output()
    if not found:
        console.print(
            f"no requests found among {len(spans)} spans (no Submit SERVER or vLLM "
            "llm_request span)"
        )
        return 1
    if not breakdowns:
        console.print(f"none of the {len(found)} requests read match the filters")
        return 1
    if request_filter.is_active or args.deployment is not None:
        console.print(f"{len(breakdowns)} of the {len(found)} requests read match the filters")
    groups = by_deployment(breakdowns)
    if len(groups) > 1:
        names = ", ".join(f"{deployment_name(d)} ({len(g)})" for d, g in groups)
        console.print(
            f"{len(groups)} deployments in these spans: {names}. Each is summarized on its "
            "own, never pooled (--deployment PLACEMENT/MODEL picks one)."
        )
    for deployment, group in groups:
        if len(groups) > 1:
            console.rule(f"deployment {deployment_name(deployment)}")
        print_summary(console, summarize_deployments(group))
    return 0


def _is_deployment(deployment: dict[str, str], wanted: str) -> bool:
    placement, model = deployment.get("placement", ""), deployment.get("model", "")
    wanted = wanted.replace(" ", "")
    return wanted in (placement, model, f"{placement}/{model}")


def run_show(args: argparse.Namespace) -> int:
    from tracing.decompose import SpanIndex, decompose
    from tracing.readers import TraceReadError
    from tracing.report import (
        breakdown_table,
        console_for_output,
        fold_steps,
        waterfall_spans,
        waterfall_table,
    )

    console = console_for_output()
    try:
        spans = _load_spans(args)
    except (TraceReadError, ValueError) as exc:
        _error(str(exc))
        return 2
    trace_id = normalize_trace_id(args.trace_id)
    index = SpanIndex(spans)
    rows = waterfall_spans(index, trace_id)
    if not rows:
        _error(f"trace {trace_id} is not among the {len(spans)} spans read")
        return 1
    fold = args.steps == "fold" or (args.steps == "auto" and len(rows) > FOLD_ABOVE_ROWS)
    console.print(waterfall_table(fold_steps(rows, index) if fold else rows, trace_id))
    for breakdown in decompose(spans):
        if breakdown.trace_id == trace_id:
            console.print(breakdown_table(breakdown))
            for note in breakdown.notes:
                console.print(f"[yellow]note:[/] {note}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from tracing.jaeger_file import write_jaeger_file
    from tracing.readers import TraceReadError, read_file

    try:
        spans = read_file(args.input)
    except TraceReadError as exc:
        _error(str(exc))
        return 2
    if args.trace_id:
        wanted = {normalize_trace_id(t) for t in args.trace_id}
        spans = [s for s in spans if s.trace_id in wanted]
    if not spans:
        _error(
            f"no spans to export from {args.input}"
            + (" for those trace ids" if args.trace_id else "")
        )
        return 1
    try:
        num_traces = write_jaeger_file(args.jaeger, spans)
    except OSError as exc:
        _error(f"cannot write {args.jaeger}: {exc.strerror or exc}")
        return 2
    print(f"wrote {num_traces} traces ({len(spans)} spans) to {args.jaeger}")
    return 0


if __name__ == "__main__":  # handy when deploy/cli.py is mid-change
    root = argparse.ArgumentParser(prog="hopscope")
    add_parser(root.add_subparsers(dest="command", required=True))
    parsed = root.parse_args()
    sys.exit(parsed.func(parsed))
