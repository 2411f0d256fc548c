"""`hopscope` subcommands contributed by the loadgen package."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register this package's subcommands (placeholder until implemented)."""
