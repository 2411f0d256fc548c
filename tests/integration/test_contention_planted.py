"""Contention planted and detected, for real: `hopscope experiment` with one busy neighbour beside
the deployment (`background_procs: [1]`) flags that round contended, and the neighbour is gone
once the round ends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PLAN = """\
name: planted
baseline:
  placement: inproc
  no_ray: true
  max_num_seqs: 4
workload:
  concurrency: 2
  num_requests: 8
  input_len: 16
  output_len: 16
factors:
  background_procs: [1]
warmup: 1
"""
RUN_TIMEOUT_S = 600.0


def _is_background_load(pid: int) -> bool:
    try:
        return b"experiment.background" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_a_round_with_one_busy_neighbour_is_flagged_and_the_neighbour_is_gone(
    tmp_path: Path,
) -> None:
    plan, out = tmp_path / "planted.yaml", tmp_path / "run"
    plan.write_text(PLAN)
    argv = [sys.executable, "-P", "-m", "deploy.cli", "experiment", str(plan), "--out", str(out)]
    done = subprocess.run(
        [*argv, "--quiet"], capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr

    round_dir = out / "background_procs=1" / "round-1"
    contention = json.loads((round_dir / "cpu.json").read_text())["contention"]
    assert contention["is_contended"] is True, contention
    assert contention["outside_cores"] >= 0.25
    assert contention["background"]["procs"] == 1
    neighbours = contention["background"]["pids"]
    assert len(neighbours) == 1
    assert json.loads((round_dir / "pids.json").read_text())["background-1"] == neighbours[0]
    assert not any(_is_background_load(pid) for pid in neighbours)
    # every service process of the deployment has its run-queue wait and switches
    assert set(contention["processes"]) == {"pipeline"}
    assert contention["processes"]["pipeline"]["cpu_s"] > 0

    baseline = json.loads((out / "baseline" / "round-1" / "cpu.json").read_text())
    assert baseline["contention"]["background"] == {"procs": 0, "duty": 1.0, "pids": []}
    summary = json.loads((out / "summary.json").read_text())
    by_name = {v["name"]: v for v in summary["variants"]}
    assert by_name["background_procs=1"]["contended_rounds"] == [1]
    report = (out / "report.md").read_text()
    assert "`background_procs=1` round 1:" in report and "1 busy process planted" in report
