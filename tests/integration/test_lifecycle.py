"""`hopscope serve` as a user starts it (through deploy/lifecycle.py): every server is SERVING
while it serves, the user's working directory never becomes hopscope's code, a taken port is
refused before the model loads, metrics ports and kept logs are the user's to choose, and a
service that dies is reported with its last lines."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy.lifecycle import START_TIMEOUT_S, LaunchError, launch, start_serve, wait_serving
from tests.harness import generate, serve


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status


@pytest.mark.parametrize("placement", ["colocated", "colocated-tcp"])
def test_every_server_is_serving_while_it_serves(placement: str) -> None:
    with serve(placement) as served:  # fails unless the front door reports SERVING
        ids, _, _ = generate(served.address, prompt="hello", max_tokens=3, ignore_eos=True)
        services = {s.name: s.address for s in served.describe().services}
        statuses = {name: _health(address) for name, address in services.items()}
    assert len(ids) == 3
    assert set(services) == {"tokenizer", "scheduler", "worker"}
    assert statuses == dict.fromkeys(services, health_pb2.HealthCheckResponse.SERVING)


def _poisoned_dir(tmp_path: Path) -> Path:
    """A user's directory whose `tracing.py` and `grpc.py` would say so if ever imported."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    marker = tmp_path / "imported.txt"
    for module in ("tracing", "grpc", "loadgen", "torch"):
        (tmp_path / f"{module}.py").write_text(
            f"open({str(marker)!r}, 'a').write('{module} imported\\n')\n"
            "raise SystemExit('the user\\'s own module was imported')\n"
        )
    return tmp_path


def test_no_child_imports_from_the_users_working_directory(tmp_path: Path) -> None:
    cwd = _poisoned_dir(tmp_path / "user")
    # `hopscope serve` run from that directory; it starts the worker and the scheduler there too
    child = start_serve(
        ["--no-ray", "--placement", "colocated"],
        log_path=tmp_path / "serve.log",
        cwd=cwd,
        timeout_s=START_TIMEOUT_S,
    )
    try:
        ids, _, _ = generate(child.address, prompt="hi", max_tokens=2, ignore_eos=True)
        assert child.stop() == 0
    finally:
        child.stop(0)
    assert not (cwd / "imported.txt").exists(), (cwd / "imported.txt").read_text()
    assert len(ids) == 2


def test_a_child_that_exits_early_is_a_launch_error_naming_it(tmp_path: Path) -> None:
    child = launch(
        ["-c", "import sys; print('error: no model here', file=sys.stderr); sys.exit(3)"],
        name="worker",
        log_path=tmp_path / "worker.log",
    )
    with pytest.raises(LaunchError, match=r"(?s)worker exited with code 3.*no model here"):
        child.wait_for_line(re.compile("READY"), 30)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_no_ray_actor_imports_from_the_users_working_directory(tmp_path: Path) -> None:
    """Ray puts the driver's cwd on its workers' sys.path unless serve joins from elsewhere."""
    cwd = _poisoned_dir(tmp_path / "user")
    child = start_serve(["--placement", "colocated"], log_path=tmp_path / "serve.log", cwd=cwd)
    try:
        ids, _, _ = generate(child.address, prompt="hi", max_tokens=2, ignore_eos=True)
        assert child.stop(60) == 0
    finally:
        child.stop(0)
    assert not (cwd / "imported.txt").exists(), (cwd / "imported.txt").read_text()
    assert len(ids) == 2


def _serve_fails(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "deploy.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("placement", ["inproc", "colocated"])
def test_a_taken_port_is_refused_before_the_model_loads(placement: str) -> None:
    """The model does not even exist: the port is what serve must complain about, first."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = _serve_fails(
            "--no-ray", "--placement", placement, "--port", str(port), "--model", "/no/such/model"
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr and "already in use" in result.stderr
    assert "/no/such/model" not in result.stderr, result.stderr


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


@pytest.mark.parametrize("placement", ["inproc", "colocated"])
def test_metrics_port_zero_gives_each_service_its_own_free_port(placement: str) -> None:
    with serve(placement, "--metrics-port", "0") as served:
        match = re.search(r"hopscope metrics: (.+)", served.log())
        assert match, served.log()
        urls = dict(part.split(" ") for part in match.group(1).split(", "))
        pages = {name: _scrape(url) for name, url in urls.items()}
    assert set(urls) == {"tokenizer", "scheduler", "worker"}
    assert len(set(urls.values())) == 3
    for name, page in pages.items():
        assert f'service="{name}"' in page


def test_log_dir_keeps_the_logs_and_a_dead_service_is_reported_with_its_last_lines(
    tmp_path: Path,
) -> None:
    log_dir = tmp_path / "logs"
    with serve("colocated", "--log-dir", str(log_dir)) as served:
        worker_pid = next(s.pid for s in served.describe().services if s.name == "worker")
        os.kill(worker_pid, signal.SIGKILL)
        wait_serving(served.address, 120.0)  # restarted by serve's supervisor
        ids, _, _ = generate(served.address, prompt="again", max_tokens=2, ignore_eos=True)
        console = served.log()
    assert len(ids) == 2
    assert "worker killed by SIGKILL; restarting" in console, console
    assert {p.name for p in log_dir.iterdir()} == {"worker.log", "scheduler.log", "tokenizer.log"}
    assert "HOPSCOPE_READY" in (log_dir / "worker.log").read_text()  # kept after the exit


def test_a_chatty_child_never_blocks_on_its_output(tmp_path: Path) -> None:
    """1 MiB after the ready line: a pipe nobody reads (64 KiB) would block the child forever."""
    script = (
        "import sys; print('READY', flush=True); "
        "sys.stdout.write('x' * (1 << 20) + '\\n'); sys.stderr.write('y' * (1 << 20) + '\\n'); "
        "print('finished', flush=True)"
    )
    child = launch(["-c", script], name="chatty", log_path=tmp_path / "chatty.log")
    try:
        child.wait_for_line(re.compile("^READY$"), 30)
        child.wait_for_line(re.compile("^finished$"), 30)
        code = child.wait(30)
    finally:
        child.stop(0)
    assert code == 0
    assert (tmp_path / "chatty.log").stat().st_size > 2 << 20
