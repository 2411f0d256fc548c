"""`hopscope experiment` end to end on a tiny plan (two variants, one round, few requests, no
Ray): Ctrl-C mid-run leaves no process behind, --resume completes it, and the outputs are there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from experiment.report import write_report

PLAN = """\
name: tiny
baseline:
  placement: colocated
  no_ray: true
  max_num_seqs: 8
workload:
  concurrency: 4
  num_requests: 12
  input_len: 16
  output_len: 8
factors:
  placement: [inproc]
warmup: 1
"""
STARTUP_TIMEOUT_S = 150.0
RUN_TIMEOUT_S = 300.0


def _experiment(plan: Path, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-P", "-m", "deploy.cli", "experiment", str(plan), "--out", str(out)]
    return subprocess.Popen(
        [*argv, "--quiet", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[2],
    )


def _pids(out: Path) -> set[int]:
    return {
        pid
        for path in out.glob("*/round-*/pids.json")
        for pid in json.loads(path.read_text()).values()
    }


def _is_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def interrupted_then_resumed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("experiment")
    plan, out = root / "tiny.yaml", root / "run"
    plan.write_text(PLAN)
    process = _experiment(plan, out)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        first = out / "baseline" / "round-1" / "pids.json"
        while not (first.exists() and "client" in json.loads(first.read_text() or "{}")):
            assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the first variant's workload never started"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)  # Ctrl-C while the load generator runs
        interrupted_rc = process.wait(120)
        interrupted_output = process.stdout.read().decode()  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    recorded = _pids(out)
    left = {pid for pid in recorded if _is_running(pid)}
    for pid in left:  # never leave them to other tests
        os.kill(pid, signal.SIGKILL)
    resumed = _experiment(plan, out, "--resume")
    try:
        resumed_rc = resumed.wait(RUN_TIMEOUT_S)
    finally:
        if resumed.poll() is None:
            os.killpg(resumed.pid, signal.SIGKILL)
            resumed.wait()
    return {
        "out": out,
        "interrupted_rc": interrupted_rc,
        "interrupted_output": interrupted_output,
        "recorded": recorded,
        "left": left,
        "resumed_rc": resumed_rc,
        "resumed_output": resumed.stdout.read().decode(),  # type: ignore[union-attr]
    }


def test_ctrl_c_leaves_no_process_behind_and_resume_completes(
    interrupted_then_resumed: dict[str, Any],
) -> None:
    run = interrupted_then_resumed
    assert run["interrupted_rc"] == 130, run["interrupted_output"]
    assert "--resume" in run["interrupted_output"]
    assert len(run["recorded"]) >= 2  # serve and the services, and the load generator
    assert run["left"] == set(), f"still running after Ctrl-C: {run['left']}"
    assert run["resumed_rc"] == 0, run["resumed_output"]
    assert "report: " in run["resumed_output"]


def test_summary_and_report_files(interrupted_then_resumed: dict[str, Any]) -> None:
    out: Path = interrupted_then_resumed["out"]
    summary = json.loads((out / "summary.json").read_text())
    for key in ("plan", "machine", "started", "finished", "baseline", "variants"):
        assert key in summary
    for key in ("cpus", "memory_gib", "torch", "device", "git_sha"):
        assert key in summary["machine"]
    assert summary["baseline"] == "baseline"
    names = [v["name"] for v in summary["variants"]]
    assert names == ["baseline", "placement=inproc"]
    baseline, variant = summary["variants"]
    assert baseline["factor"] is None and variant["factor"] == "placement"
    assert variant["deployment"]["placement"] == "inproc"
    for v in summary["variants"]:
        assert len(v["rounds"]) == 1
        metrics = v["metrics"]
        assert metrics["completed"] == 12 and metrics["failed"] == 0
        for name in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
            assert set(metrics[name]) >= {"p50", "p90", "p99", "mean"}
        assert metrics["output_tok_s"] > 0 and metrics["request_throughput"] > 0
        assert v["components"]["compute.decode"]["mean_ms"] > 0  # spans were collected
        assert v["cpu_us_per_token"]["client"] > 0
    assert set(baseline["cpu_us_per_token"]) >= {"tokenizer", "scheduler", "worker", "client"}
    assert "pipeline" in variant["cpu_us_per_token"]
    for key in ("output_tok_s", "tpot_ms.p50", "ttft_ms.p99", "e2e_ms.p50"):
        entry = variant["vs_baseline"][key]
        lo, hi = entry["ci95"]
        assert lo <= entry["ratio"] <= hi
        assert entry["verdict"] in ("better", "worse", "no measurable effect")
    round_dir = out / "baseline" / "round-1"
    for name in ("bench.json", "requests.jsonl", "spans.jsonl", "describe.json", "cpu.json"):
        assert (round_dir / name).stat().st_size > 0, name
    assert (round_dir / "logs" / "serve.log").exists()
    for name in ("report.md", "report.html"):
        assert (out / name).stat().st_size > 0
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "placement=inproc" in html
    plots = {p.name for p in (out / "plots").glob("*.png")}
    assert {"effects.png", "components.png", "throughput_tpot.png"} <= plots
    assert "cdf_placement_e2e_ms.png" in plots


def test_report_renders_a_diagnosis_when_summary_json_has_one(
    interrupted_then_resumed: dict[str, Any],
) -> None:
    out: Path = interrupted_then_resumed["out"]
    summary = json.loads((out / "summary.json").read_text())
    summary["variants"][1]["diagnosis"] = {
        "primary": "scheduling",
        "findings": [
            {
                "type": "scheduling",
                "score": 0.61,
                "symptom": "requests wait in line 61% of E2E",
                "evidence": {"queue_share": {"value": 0.61, "unit": "of e2e"}},
                "suggestions": [
                    {
                        "method": "larger batch",
                        "switch": "--max-num-seqs 64",
                        "expected_effect": "queue time falls",
                    }
                ],
            }
        ],
        "what_if": {},
    }
    summary["variants"][1]["prediction"] = {
        "from": "baseline",
        "tpot_p50_ms": 2.0,
        "measured_tpot_p50_ms": 2.2,
        "error": -0.09,
    }
    (out / "summary.json").write_text(json.dumps(summary))
    write_report(out)
    text = (out / "report.md").read_text()
    assert "## Diagnosis" in text and "requests wait in line 61%" in text
    assert "--max-num-seqs 64" in text and "measured 2.20 ms" in text


def test_compare_shows_every_variant(interrupted_then_resumed: dict[str, Any]) -> None:
    from rich.console import Console

    from experiment.compare import compare_table

    out: Path = interrupted_then_resumed["out"]
    console = Console(width=200, record=True)
    console.print(compare_table(out, out))
    text = console.export_text()
    assert "baseline" in text and "placement=inproc" in text and "(1.00×)" in text


def test_the_diagnosis_reads_the_figures_of_the_table(
    interrupted_then_resumed: dict[str, Any],
) -> None:
    """One definition per figure (issue 31): the diagnosis's TPOT, TTFT, E2E and tokens/s are
    summary.json's pooled figures, the ones the report's measured table prints; and the
    headline and time budget are on stdout without a terminal."""
    from diagnose import diagnose_experiment

    out: Path = interrupted_then_resumed["out"]
    assert "time budget:" in interrupted_then_resumed["resumed_output"]
    diagnose_experiment(out)  # again: a test above wrote a constructed diagnosis into summary.json
    write_report(out)
    summary = json.loads((out / "summary.json").read_text())
    table = (out / "report.md").read_text().split("## Measured values", 1)[1]
    diagnosed = [v for v in summary["variants"] if v.get("diagnosis")]
    assert diagnosed, "no variant was diagnosed"
    for v in diagnosed:
        measured, metrics = v["diagnosis"]["measured"], v["metrics"]
        for key in ("tpot_ms", "ttft_ms", "e2e_ms"):
            assert measured[f"{key.removesuffix('_ms')}_p50_ms"] == pytest.approx(
                metrics[key]["p50"], abs=1e-3
            )
        assert measured["output_tok_s"] == pytest.approx(metrics["output_tok_s"], abs=0.05)
        row = next(line for line in table.splitlines() if line.startswith(f"| {v['name']} |"))
        assert f"{measured['tpot_p50_ms']:.2f} / " in row
        shares = v["diagnosis"]["budget"]["shares"]
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
        assert v["diagnosis"]["primary"] == max(
            (k for k in shares if k != "unattributed"), key=shares.__getitem__
        )
