"""`hopscope cluster up | down | status`: a local multi-node Ray cluster (deploy/cluster.py)."""

from __future__ import annotations

import argparse
import json

from rich.console import Console

from deploy.cluster import (
    ClusterError,
    ClusterRecord,
    LinkSettings,
    find_record,
    is_node_alive,
    list_records,
    start_cluster,
    stop_cluster,
)

err = Console(stderr=True, highlight=False)


def add_parser(sub: argparse._SubParsersAction) -> None:
    cluster = sub.add_parser("cluster", help="a local multi-node Ray cluster on this machine")
    commands = cluster.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    up = commands.add_parser(
        "up", help="start N Ray nodes on loopback addresses; print the address"
    )
    up.add_argument(
        "--nodes", type=int, default=3, help="number of nodes, labelled a, b, c... (default 3)"
    )
    up.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay between nodes, ms")
    up.add_argument(
        "--rate-mbit", type=float, default=0.0, help="bandwidth cap between nodes, Mbit/s"
    )
    up.add_argument("--json", action="store_true", help='print {"address": ...}')
    up.set_defaults(func=run_up)
    down = commands.add_parser("down", help="stop a cluster started by `cluster up`")
    down.add_argument("--address", required=True, help="the address `cluster up` printed")
    down.set_defaults(func=run_down)
    status = commands.add_parser("status", help="nodes, labels and link settings")
    status.add_argument("--address", default="", help="one cluster (default: all recorded)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=run_status)


def run_up(args: argparse.Namespace) -> int:
    try:
        link = LinkSettings(args.delay_ms, args.rate_mbit)
        record = start_cluster(args.nodes, link)
    except (ValueError, ClusterError) as exc:
        err.print(f"error: {exc}")
        return 1
    if args.json:
        print(json.dumps({"address": record.address}))
    else:
        print(record.address)
        err.print(
            f"{len(record.nodes)} nodes ({_nodes_line(record)}); link: {_link_line(record.link)}"
        )
        err.print(f"stop it with: hopscope cluster down --address {record.address}")
    return 0


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
