"""`hopscope serve`, `hopscope generate`, `hopscope cluster`."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register serve/generate/cluster (placeholder until implemented)."""
