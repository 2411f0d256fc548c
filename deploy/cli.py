"""The `hopscope` command. Each package contributes its own subcommands through
`add_parser(subparsers)`; this module only assembles them (imports point down)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Registrar = Callable[[argparse._SubParsersAction], None]


def _registrars() -> list[Registrar]:
    from deploy import certs, cluster_cli, commands
    from loadgen import cli as loadgen_cli
    from tracing import cli as tracing_cli

    return [
        commands.add_parser,
        cluster_cli.add_parser,
        certs.add_parser,
        loadgen_cli.add_parser,
        tracing_cli.add_parser,
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hopscope",
        description="An LLM serving pipeline that measures what every hop costs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _registrars():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # every subcommand sets `func(args) -> int` with set_defaults
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
