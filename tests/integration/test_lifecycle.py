"""`hopscope serve` as a user starts it: every server is SERVING while it serves, and the user's
working directory never becomes hopscope's code."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy.lifecycle import START_TIMEOUT_S, LaunchError, launch, start_serve
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
