"""`hopscope bench` end to end against real gRPC servers (benchmarks/instant_server.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.instant_server import start_subprocess
from loadgen.metrics import ALL_METRICS, STAT_KEYS
from tests.harness import wait_for

REPO = Path(__file__).resolve().parents[2]
SUMMARY_KEYS = {
    "completed",
    "failed",
    "incomplete",
    "duration_s",
    "request_throughput",
    "output_token_throughput",
    "total_token_throughput",
    "goodput",
    "goodput_requests",
    "slo_attainment",
    "slo",
    "client_cpu_s",
    "client_cpu_us_per_token",
    *ALL_METRICS,
}


def start_server(*flags: str) -> tuple[subprocess.Popen[str], str]:
    return start_subprocess(*flags)


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def instant() -> Iterator[str]:
    proc, address = start_server()
    try:
        yield address
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def slow_failing() -> Iterator[str]:
    """Every message 0.2 s apart, every 5th request refused with RESOURCE_EXHAUSTED."""
    proc, address = start_server("--message-interval-s", "0.2", "--fail-every", "5")
    try:
        yield address
    finally:
        stop_server(proc)


def bench(*argv: str) -> int:
    try:
        from deploy.cli import main
    except Exception:  # noqa: BLE001 - other packages mid-edit: the loadgen parser alone is enough here
        return _bench_without_deploy(list(argv))
    return main(["bench", *argv])


def _bench_without_deploy(argv: list[str]) -> int:
    import argparse

    from loadgen import cli

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", *argv])
    return args.func(args)


def assert_contract(document: dict) -> None:
    assert set(document["summary"]) == SUMMARY_KEYS
    for name in ALL_METRICS:
        stats = document["summary"][name]
        assert list(stats) == list(STAT_KEYS)
        ordered = [stats[k] for k in ("min", "p50", "p90", "p95", "p99", "p999", "max")]
        assert ordered == sorted(ordered), name
    assert document["config"]["git_sha"]
    assert Path(document["requests_file"]).is_file()


def test_open_loop_run_writes_the_contract_records_and_plots(instant: str, tmp_path: Path) -> None:
    out = tmp_path / "open.json"
    code = bench(
        "--address",
        instant,
        "--rate",
        "50",
        "--num-requests",
        "60",
        "--warmup-requests",
        "5",
        "--output-len",
        "12",
        "--label",
        "open",
        "--slo",
        "ttft_ms=1000",
        "--out",
        str(out),
        "--no-live",
    )
    assert code == 0
    document = json.loads(out.read_text())
    assert_contract(document)
    summary = document["summary"]
    assert (summary["completed"], summary["failed"], summary["incomplete"]) == (55, 0, 0)
    assert summary["goodput"] == pytest.approx(summary["request_throughput"])
    # the client's own cost over all 60 requests' 720 tokens (warm-up sent too), never zero
    assert summary["client_cpu_us_per_token"] == pytest.approx(summary["client_cpu_s"] * 1e6 / 720)
    assert summary["client_cpu_s"] > 0
    assert document["config"]["label"] == "open" and document["config"]["rate"] == [50.0]
    rows = [json.loads(line) for line in Path(document["requests_file"]).read_text().splitlines()]
    assert len(rows) == 60 and sum(r["is_measured"] for r in rows) == 55
    assert all(re.fullmatch(r"[0-9a-f]{32}", r["trace_id"]) for r in rows)
    assert len({r["trace_id"] for r in rows}) == 60
    assert all(r["n_out"] == 12 and r["n_in"] == 128 for r in rows)
    plots = tmp_path / "open-plots"
    for name in ("ttft_cdf.png", "tpot_cdf.png", "itl_cdf.png", "e2e_cdf.png"):
        assert (plots / name).stat().st_size > 0, name  # one figure per metric
    assert document["deployment"]["placement"] == "instant-fixture"  # Describe, recorded


def test_closed_loop_with_two_workers_and_compare(
    instant: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "closed.json"
    code = bench(
        "--address",
        instant,
        "--concurrency",
        "4",
        "--workers",
        "2",
        "--num-requests",
        "40",
        "--label",
        "closed",
        "--out",
        str(out),
        "--no-live",
        "--no-plots",
    )
    assert code == 0
    document = json.loads(out.read_text())
    assert_contract(document)
    assert document["summary"]["completed"] == 40
    # both worker processes' CPU is summed; a real cost, never zero (their gRPC reads)
    assert document["summary"]["client_cpu_s"] > 0
    assert document["summary"]["client_cpu_us_per_token"] > 0
    rows = [json.loads(line) for line in Path(document["requests_file"]).read_text().splitlines()]
    assert {r["worker"] for r in rows} == {0, 1}
    assert sorted(r["index"] for r in rows) == list(range(40))
    capsys.readouterr()
    other = tmp_path / "closed-again.json"
    bench(
        "--address",
        instant,
        "--concurrency",
        "2",
        "--num-requests",
        "20",
        "--label",
        "again",
        "--out",
        str(other),
        "--no-live",
        "--no-plots",
    )
    capsys.readouterr()
    overlays = tmp_path / "compare-plots"
    assert bench("compare", str(out), str(other), "--plots", str(overlays)) == 0
    table = capsys.readouterr().out
    assert "closed" in table and "again" in table and "Δ vs first" in table
    assert "warning" not in table  # two closed loops: like with like
    assert {p.name for p in overlays.iterdir()} == {
        "ttft_cdf.png", "tpot_cdf.png", "itl_cdf.png", "e2e_cdf.png"
    }  # fmt: skip


def test_failed_requests_are_counted_by_status_and_kept_out_of_latency(
    slow_failing: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fail.json"
    args = ["--address", slow_failing, "--concurrency", "5", "--num-requests", "10"]
    args += ["--output-len", "4", "--out", str(out), "--no-live", "--no-plots"]
    code = bench(*args)
    assert code == 1  # 2 of 10 failed: a run with failures is not a success by default
    assert "2 of 10 requests failed (20.0% > --max-failed-frac 0)" in capsys.readouterr().out
    document = json.loads(out.read_text())
    assert document["summary"]["failed"] == 2 and document["summary"]["completed"] == 8
    assert document["failed_by_status"] == {"RESOURCE_EXHAUSTED": 2}
    # a refused request answers at once; the successful ones take 4 x 0.2 s
    assert document["summary"]["e2e_ms"]["min"] > 500
    assert bench(*args, "--max-failed-frac", "0.2") == 0  # at the limit: accepted


def test_unreachable_address_exits_non_zero_and_sends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "none.json"
    code = bench(
        "--address",
        "127.0.0.1:1",
        "--rate",
        "5",
        "--connect-timeout-s",
        "0.5",
        "--out",
        str(out),
        "--no-live",
    )
    assert code != 0
    assert "no server answers at 127.0.0.1:1" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_ctrl_c_stops_sending_counts_incomplete_and_still_writes(
    slow_failing: str, tmp_path: Path
) -> None:
    out = tmp_path / "cut.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-P",
            "-m",
            "deploy.cli",
            "bench",
            "--address",
            slow_failing,
            "--rate",
            "20",
            "--num-requests",
            "400",
            "--output-len",
            "8",
            "--grace-s",
            "0.3",
            "--out",
            str(out),
            "--no-plots",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    lines: list[str] = []  # what a user piping bench to a log sees, as it comes
    reader = threading.Thread(target=lines.extend, args=(iter(proc.stdout.readline, ""),))
    try:
        reader.start()
        # the progress line (printed once a second off a terminal): some done, some in flight
        wait_for(lambda: any(_done_and_in_flight(line) for line in lines), 60, "no request done")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(lines)
    assert proc.returncode == 130, output
    summary = json.loads(out.read_text())["summary"]
    assert summary["incomplete"] > 0 and summary["completed"] > 0
    assert summary["completed"] + summary["failed"] + summary["incomplete"] < 400
    assert "interrupted" in output


def _done_and_in_flight(progress_line: str) -> bool:
    match = re.search(r"in flight +(\d+) +done +(\d+)", progress_line)
    return match is not None and int(match[1]) > 0 and int(match[2]) > 0
