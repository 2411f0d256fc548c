"""`hopscope diagnose` and `hopscope profile`: name the bottleneck of a run with written-down
rules, split every hop into wire and wait, predict the network what-if, and profile hot code."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def diagnose_experiment(dir: Path) -> dict[str, Any]:
    """Diagnose every variant of an experiment directory (see diagnose.experiment)."""
    from diagnose.experiment import diagnose_experiment as run

    return run(Path(dir))


__all__ = ["diagnose_experiment"]
