"""The hop echo children (diagnose/calibrate.py, benchmarks/tls_cost.py) run under the lifecycle
kit: their own process group, stopped however the block that uses them ends, and a child that
cannot start is a LaunchError naming it with its last lines (issue 20, defect 5)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks import tls_cost
from deploy.lifecycle import LaunchError
from diagnose.calibrate import echo_process


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_calibration_echo_child_has_its_own_group_and_is_stopped_on_failure(
    tmp_path: Path,
) -> None:
    pid = 0
    args = ["serve", "--uds", str(tmp_path / "echo.sock")]
    with (
        pytest.raises(RuntimeError, match="the block failed"),
        echo_process(args) as (child, addresses),
    ):
        pid = child.pid
        assert os.getpgid(pid) == pid  # its own process group, stopped as a whole
        assert set(addresses) == {"uds", "tcp"}
        raise RuntimeError("the block failed")
    assert pid and _gone(pid)  # reaped: no zombie, no orphan


def test_an_echo_child_that_cannot_start_is_a_launch_error_naming_it() -> None:
    with (
        pytest.raises(LaunchError, match="the hop echo child exited with code 2"),
        echo_process(["no-such-command"]),
    ):
        pass


def test_the_tls_cost_echo_child_without_certificates_is_a_launch_error(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    with (
        pytest.raises(LaunchError, match="the tls_cost echo child exited"),
        tls_cost._echo_child(tmp_path / "tls"),
    ):
        pass
    assert (tmp_path / "echo.log").read_text()  # its output kept in a log file
