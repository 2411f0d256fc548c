"""`hopscope cluster up | down | status | env`: a local multi-node Ray cluster (deploy/cluster.py),
and the environment that points Ray's own tools at it."""

from __future__ import annotations

import argparse
import json
import shlex

from rich.console import Console

from deploy.cluster import (
    ClusterError,
    ClusterRecord,
    LinkSettings,
    find_record,
    is_node_alive,
    list_records,
    ray_tools_env,
    start_cluster,
    stop_cluster,
)

err = Console(stderr=True, highlight=False, soft_wrap=True)


def add_parser(sub: argparse._SubParsersAction) -> None:
    cluster = sub.add_parser("cluster", help="a local multi-node Ray cluster on this machine")
    commands = cluster.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    up = commands.add_parser(
        "up", help="start N Ray nodes on loopback addresses; print the address"
    )
    up.add_argument(
        "--nodes", type=int, default=3, help="number of nodes, labelled a, b, c... (default 3)"
    )
    # one name for the link delay everywhere: this flag, `diagnose --link-delay-ms` and the
    # experiment factor `link_delay_ms` (old spellings kept as aliases)
    up.add_argument(
        "--link-delay-ms",
        "--delay-ms",
        type=float,
        default=0.0,
        help="one-way delay between nodes, ms (deprecated spelling: --delay-ms)",
    )
    up.add_argument(
        "--rate-mbit", type=float, default=0.0, help="bandwidth cap between nodes, Mbit/s"
    )
    up.add_argument(
        "--dashboard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run Ray's dashboard on the head (`ray list ...` and the state API need it; "
        "--no-dashboard saves its memory)",
    )
    up.add_argument("--json", action="store_true", help='print {"address", "dashboard_url", "env"}')
    up.set_defaults(func=run_up)
    down = commands.add_parser("down", help="stop a cluster started by `cluster up`")
    down.add_argument("--address", required=True, help="the address `cluster up` printed")
    down.set_defaults(func=run_down)
    status = commands.add_parser("status", help="nodes, labels and link settings")
    status.add_argument("--address", default="", help="one cluster (default: all recorded)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=run_status)
    env = commands.add_parser(
        "env",
        help="print `export` lines that point Ray's CLI, state API and drivers at a cluster",
        description='eval "$(hopscope cluster env)" && ray status && ray list actors',
    )
    env.add_argument("--address", default="", help="the cluster (default: the only one recorded)")
    env.set_defaults(func=run_env)


def run_up(args: argparse.Namespace) -> int:
    try:
        link = LinkSettings(args.link_delay_ms, args.rate_mbit)
        record = start_cluster(args.nodes, link, has_dashboard=args.dashboard)
    except (ValueError, ClusterError) as exc:
        err.print(f"error: {exc}")
        return 1
    env = ray_tools_env(record)
    if args.json:
        print(
            json.dumps(
                {"address": record.address, "dashboard_url": record.dashboard_url, "env": env}
            )
        )
        return 0
    print(record.address)
    err.print(f"{len(record.nodes)} nodes ({_nodes_line(record)}); link: {_link_line(record.link)}")
    err.print(
        "Ray's own tools (ray status, ray list actors, a driver) on this cluster need:\n"
        + _export_lines(env)
        + f'\n(the same: eval "$(hopscope cluster env --address {record.address})")',
        markup=False,
    )
    if record.dashboard_url:
        err.print(
            f"dashboard: {record.dashboard_url} (it asks for the token: `ray get-auth-token`)",
            markup=False,
        )
    err.print(f"stop it with: hopscope cluster down --address {record.address}", markup=False)
    return 0


def run_env(args: argparse.Namespace) -> int:
    records = [find_record(args.address)] if args.address else list_records()
    if len(records) != 1 or records[0] is None:
        known = ", ".join(r.address for r in list_records())
        if not known:
            err.print("error: no cluster recorded; start one with `hopscope cluster up`")
        elif args.address:
            err.print(f"error: no cluster recorded at {args.address}; recorded: {known}")
        else:
            err.print(f"error: several clusters recorded ({known}): pick one with --address")
        return 1
    print(_export_lines(ray_tools_env(records[0])))
    return 0


def _export_lines(env: dict[str, str]) -> str:
    return "\n".join(f"export {name}={shlex.quote(value)}" for name, value in env.items())


def run_down(args: argparse.Namespace) -> int:
    record = find_record(args.address)
    if record is None:
        err.print(
            f"error: no cluster recorded at {args.address}; `hopscope cluster status` lists them"
        )
        return 1
    stop_cluster(record)
    err.print(f"stopped {len(record.nodes)} nodes of {record.address}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    if args.address:
        record = find_record(args.address)
        if record is None:
            err.print(f"error: no cluster recorded at {args.address}")
            return 1
        records = [record]
    else:
        records = list_records()
    if args.json:
        print(json.dumps([_status_dict(r) for r in records], indent=2))
        return 0
    if not records:
        print("no clusters (start one with `hopscope cluster up --nodes 3`)")
    for record in records:
        print(f"{record.address}  link: {_link_line(record.link)}  temp dir: {record.temp_dir}")
        for node in record.nodes:
            state = "alive" if is_node_alive(node) else "DOWN"
            print(
                f"  node {node.label}  {node.ip:<16} hopscope-node={node.label}  pid {node.pid}  {state}"
            )
    return 0


def _status_dict(record: ClusterRecord) -> dict[str, object]:
    data = json.loads(record.to_json())
    data["link"]["mechanism"] = record.link.mechanism
    for node, node_data in zip(record.nodes, data["nodes"], strict=True):
        node_data["is_alive"] = is_node_alive(node)
    return data


def _nodes_line(record: ClusterRecord) -> str:
    return ", ".join(f"{n.label}={n.ip}" for n in record.nodes)


def _link_line(link: LinkSettings) -> str:
    if not link.is_shaped:
        return "unshaped"
    return f"delay {link.delay_ms:g} ms, rate {link.rate_mbit:g} Mbit/s ({link.mechanism})"
