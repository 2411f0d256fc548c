"""Background load, a workload knob of a plan: N busy processes beside the deployment for the
length of the workload (`background_procs: N`, each busy `background_duty` of the time), stopped
after.

Contention is planted with it and measured like any other factor (`factors: background_procs:
[1, 2]`). The neighbours are children of the one lifecycle kit (deploy/lifecycle.py): each in its
own process group, dying with its parent, stopped in a `finally` on failure and Ctrl-C. They are
outside the deployment: the contention measurement (services/common/procfs.py) counts their CPU
as outside CPU, which is how a planted neighbour is detected.

Run as `python -m experiment.background --duty D`, a neighbour spins for D of every 100 ms and
sleeps the rest, until it is stopped.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deploy.lifecycle import Child, launch

PERIOD_S = 0.1  # one busy-then-idle cycle: short against any workload, long against a tick
READY_TIMEOUT_S = 30.0
READY_LINE = "background load: spinning"
_READY_RE = re.compile(re.escape(READY_LINE))


@dataclass(frozen=True, slots=True)
class BackgroundLoad:
    """How many busy processes to start beside the deployment, and the share of time each spins."""

    procs: int = 0
    duty: float = 1.0

    def __post_init__(self) -> None:
        if self.procs < 0:
            raise ValueError(f"background_procs {self.procs}: expected 0 or more processes")
        if not 0.0 < self.duty <= 1.0:
            raise ValueError(f"background_duty {self.duty:g}: expected a fraction in (0, 1]")

    def to_json(self) -> dict[str, float | int]:
        return {"procs": self.procs, "duty": self.duty}


@contextmanager
def background_load(load: BackgroundLoad, log_path: Path) -> Iterator[list[int]]:
    """Start the neighbours (each spinning once this yields), yield their pids, stop them on the
    way out, however it is left."""
    children: list[Child] = []
    try:
        for i in range(load.procs):
            argv = ["-m", "experiment.background", "--duty", f"{load.duty:g}"]
            children.append(launch(argv, name=f"background load {i + 1}", log_path=log_path))
        for child in children:
            child.wait_for_line(_READY_RE, READY_TIMEOUT_S)
        yield [c.pid for c in children]
    finally:
        for child in children:
            child.stop(grace_s=2.0)


def spin(duty: float, period_s: float = PERIOD_S) -> None:
    """Busy `duty` of every period, asleep for the rest; forever."""
    while True:
        start = time.monotonic()
        while time.monotonic() - start < duty * period_s:
            pass
        if duty < 1.0:
            time.sleep((1.0 - duty) * period_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one busy neighbour (background load)")
    parser.add_argument("--duty", type=float, default=1.0, help="share of time spent busy")
    args = parser.parse_args(argv)
    BackgroundLoad(1, args.duty)  # checks the duty
    print(f"{READY_LINE} (duty {args.duty:g})", flush=True)
    spin(args.duty)
    return 0


if __name__ == "__main__":
    sys.exit(main())
