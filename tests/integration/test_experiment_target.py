"""An external-target experiment end to end over real HTTP: hopscope's own `serve --no-ray
--placement inproc --http-port {port}` stands in for "the server a user runs" (started by the
plan's `target.start`, restarted per variant with one flag changed, stopped after each round),
two variants, one round, few requests; intervals, a report and a diagnosis from the server's own
spans that names the rules they cannot decide; nothing left running."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PLAN = """\
name: tiny-external
target:
  start: "exec {python} -P -m deploy.cli serve --no-ray --placement inproc --model tiny --port 0 --http-port {port} {flags}"
  ready_timeout_s: 120
baseline:
  max_num_seqs: 4
workload:
  concurrency: 2
  num_requests: 6
  input_len: 16
  output_len: 8
factors:
  max_num_seqs: [1]
warmup: 1
timeout_s: 120
"""
RUN_TIMEOUT_S = 400


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_an_external_target_plan_runs_reports_and_diagnoses(tmp_path: Path) -> None:
    plan, out = tmp_path / "external.yaml", tmp_path / "run"
    plan.write_text(PLAN)
    argv = [sys.executable, "-P", "-m", "deploy.cli", "experiment", str(plan), "--out", str(out)]
    process = subprocess.Popen(
        [*argv, "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if process.poll() is None:
            import os
            import signal

            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = output.decode(errors="replace")
    pids = [
        pid
        for path in out.glob("*/round-*/pids.json")
        for pid in json.loads(path.read_text()).values()
    ]
    assert not [p for p in pids if _alive(p)], f"left running: {pids}"
    assert process.returncode == 0, text
    assert "report:" in text
    summary = json.loads((out / "summary.json").read_text())
    names = [v["name"] for v in summary["variants"]]
    assert names == ["baseline", "max_num_seqs=1"]
    target = json.loads((out / "max_num_seqs=1" / "round-1" / "target.json").read_text())
    assert "--max-num-seqs 1" in target["command"] and target["startup_s"] > 0
    variant = summary["variants"][1]
    assert variant["metrics"]["completed"] == 6
    assert "output_tok_s" in variant["vs_baseline"]
    assert variant["cpu_us_per_token"]["server"] > 0
    diagnosis = variant["diagnosis"]
    assert {"host_cpu", "prefill_interference"} <= set(diagnosis["not_evaluated"])
    # the server's environment named the round's collector and the bench traced its side:
    # the server's request spans decide the hop (network) and the queue (scheduling)
    assert {"network", "scheduling"} <= set(diagnosis["scores"])
    assert diagnosis["decomposition"]["requests"] == 6
    assert diagnosis["measured"]["tpot_p50_ms"] > 0
    report = (out / "report.md").read_text()
    assert "Rules not evaluated" in report
