"""`hopscope describe --address ADDR [--json]`: what a running deployment says about itself."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from services.config import DEFAULT_PORT

EXIT_UNREACHABLE = 1
RAY_ID_CHARS = 8  # enough to tell nodes apart, and to find one in `ray list nodes`


def add_parser(sub: argparse._SubParsersAction) -> None:
    describe = sub.add_parser(
        "describe",
        help="print what a running front door reports (placement, services, edges, model)",
        description="Calls Describe on a running front door: placement, each service's node, "
        "host, pid and address, each edge's transport and link shaping, the model, and the "
        "scheduler's queue and KV blocks.",
    )
    describe.add_argument(
        "--address",
        default=f"127.0.0.1:{DEFAULT_PORT}",
        help=f"HOST[:PORT] of the front door (no port: {DEFAULT_PORT})",
    )
    describe.add_argument("--json", action="store_true", help="print Describe as JSON")
    describe.add_argument("--timeout-s", type=float, default=3.0, help="connect and call deadline")
    describe.set_defaults(func=run_describe)


def run_describe(args: argparse.Namespace) -> int:
    from loadgen.address import parse_address
    from loadgen.frontdoor import UnreachableError, describe_dict

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        described = describe_dict(parse_address(args.address), args.timeout_s)
    except (UnreachableError, ValueError) as exc:
        err.print(f"error: {exc}", markup=False)
        return EXIT_UNREACHABLE
    if not described:
        err.print(f"error: {args.address} does not serve Describe", markup=False)
        return EXIT_UNREACHABLE
    if args.json:
        print(json.dumps(described, indent=2))
    else:
        print_describe(Console(highlight=False), described)
    return 0


def node_cell(service: dict[str, Any]) -> str:
    """The node as `cluster up` named it (its hopscope-node label), the start of Ray's node id
    beside it (all of it in --json); without a name, the id alone (without Ray: the host name)."""
    node_id, name = str(service.get("nodeId", "")), str(service.get("nodeName", ""))
    return f"{name} ({node_id[:RAY_ID_CHARS]}…)" if name else node_id


def print_describe(console: Console, d: dict[str, Any]) -> None:
    model = d.get("model", {})
    console.print(
        f"placement {d.get('placement', '?')}{' (Ray actors)' if d.get('ray') else ''}, "
        f"batching {d.get('batching', '?')}, model {model.get('name', '?')} "
        f"({model.get('architecture', '?')}, {model.get('dtype', '?')} on "
        f"{model.get('device', '?')}, {model.get('numBlocks', 0)} KV blocks of "
        f"{model.get('blockSize', 0)} tokens)",
        markup=False,
    )
    services = Table("service", "node", "host", "pid", "address", title="services")
    for s in d.get("services", []):
        cells = [str(s.get(k, "")) for k in ("name", "nodeId", "host", "pid", "address")]
        cells[1] = node_cell(s)
        if s.get("state"):  # gone, being replaced: no pid to show
            cells[3] = s["state"]
        services.add_row(*cells)
    console.print(services)
    edges = Table("edge", "transport", "link", title="edges")
    for e in d.get("edges", []):
        edge = f"{e.get('from', '')} → {e.get('to', '')}"
        edges.add_row(edge, e.get("transport", ""), e.get("link") or "none")
    console.print(edges)
    stats = d.get("schedulerStats", {})
    console.print(
        f"scheduler: {stats.get('numWaiting', 0)} waiting, {stats.get('numRunning', 0)} running, "
        f"{stats.get('numFreeBlocks', 0)}/{stats.get('numBlocks', 0)} KV blocks free, worker "
        f"{'up' if stats.get('isWorkerUp') else 'down'}",
        markup=False,
    )
