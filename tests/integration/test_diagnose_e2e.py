"""`hopscope profile` and `hopscope diagnose` against a real colocated serve: traced through a real
OTLP collector, loaded by a real `hopscope bench` child, profiled while the load runs (py-spy on
every service process, torch.profiler on the worker), then diagnosed from the bench result."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.cli import main
from deploy.lifecycle import Child, ServeChild, launch, start_serve
from diagnose.calibrate import Calibration, store_calibration
from diagnose.rules import TYPES
from tracing.collector import OtlpCollector

SERVICES = ("tokenizer", "scheduler", "worker")


@pytest.fixture(scope="module")
def traced_serve(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServeChild, Path, dict[str, str]]]:
    folder = tmp_path_factory.mktemp("diagnose")
    collector = OtlpCollector(folder / "spans.jsonl", listen="127.0.0.1:0").start()
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}"}
    env.pop("HOPSCOPE_TRACE_FILE", None)
    serve = start_serve(
        ["--no-ray", "--placement", "colocated"], log_path=folder / "serve.log", env=env
    )
    try:
        yield serve, folder, env
    finally:
        serve.stop()
        collector.stop()


def _bench(address: str, folder: Path, env: dict[str, str]) -> tuple[Child, Path]:
    out = folder / "bench.json"
    argv = ["-m", "deploy.cli", "bench", "--address", address, "--concurrency", "4"]
    argv += ["--num-requests", "48", "--input-len", "32", "--output-len", "32", "--out", str(out)]
    return launch(argv, name="bench", log_path=folder / "bench.log", env=env), out


def _ptrace_allowed() -> bool:
    try:
        return int(Path("/proc/sys/kernel/yama/ptrace_scope").read_text()) == 0 or os.geteuid() == 0
    except OSError:
        return True  # no Yama: ordinary same-user ptrace rules


def test_profile_then_diagnose_a_colocated_run(
    traced_serve: tuple[ServeChild, Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    if not _ptrace_allowed():
        pytest.skip("py-spy needs ptrace: kernel.yama.ptrace_scope != 0 and not root")
    serve, folder, env = traced_serve
    monkeypatch.setenv("HOPSCOPE_HOME", str(folder))  # a constructed calibration, not ~/.hopscope
    round_trips = {"uds": {1: 200.0, 32: 250.0}, "tcp": {1: 180.0, 32: 230.0}}
    store_calibration(Calibration(round_trips, socket.gethostname(), "test"))
    bench, bench_json = _bench(serve.address, folder, env)
    try:
        profile_dir = folder / "profile"
        args = [
            "profile",
            "--address",
            serve.address,
            "--duration-s",
            "2",
            "--out",
            str(profile_dir),
        ]
        assert main(args) == 0
        assert bench.process.wait(timeout=240) == 0, bench.last_lines()
    finally:
        bench.stop()
    for service in SERVICES:
        assert (profile_dir / f"{service}.svg").read_text().lstrip().startswith("<?xml")
        speedscope = json.loads((profile_dir / f"{service}.speedscope.json").read_text())
        assert "speedscope" in speedscope["$schema"]
    trace = json.loads((profile_dir / "worker.torch_trace.json").read_text())
    names = {event.get("name", "") for event in trace["traceEvents"]}
    assert "hopscope.step" in names  # each step of the window, marked
    assert any(name.startswith("aten::") for name in names)  # and the torch ops inside it

    (folder / "describe.json").write_text(json.dumps(serve.describe()))
    serve.stop()  # flushes every service's spans to the collector
    spans = folder / "spans.jsonl"
    assert main(["diagnose", str(bench_json), "--spans", str(spans), "--link-delay-ms", "1,3"]) == 0
    diagnosis = json.loads((folder / "diagnosis.json").read_text())
    assert diagnosis["primary"] in TYPES
    assert diagnosis["primary"] != "network"  # Unix sockets on one machine
    assert diagnosis["what_if"]["delay_ms"] == [1.0, 3.0]
    tpot = diagnosis["what_if"]["tpot_p50_ms"]
    assert tpot[1] - tpot[0] == pytest.approx(4.0, abs=0.01)  # 2 ms more delay, both ways
    hops = diagnosis["decomposition"]["hops"]
    assert hops["network.scheduler_worker"]["transport"] == "uds"
    assert (folder / "what_if_tpot.png").stat().st_size > 0
    assert diagnosis["hot_functions"]["worker"]  # the profile/ beside the bench JSON is read
