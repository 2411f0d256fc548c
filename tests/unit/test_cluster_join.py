"""`hopscope cluster up`: a worker node whose `ray start` exits before joining is started once
more (a busy head's GCS answered `Deadline Exceeded` once in CI); a second failure is an error.

Behaviour, not private calls (issue 20, defect 10): the nodes are real child processes, started,
watched and stopped by deploy/cluster.py itself; only the `ray` binary is a stand-in script that
fails the first `failures` starts the way `ray start` does and then reports the runtime started.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from deploy import cluster
from deploy.cluster import READY_MARK, ClusterError, ClusterRecord, LinkSettings


def _fake_ray(tmp_path: Path, failures: int) -> Path:
    """A `ray` that appends one line per start to starts.log; the first `failures` starts exit 1
    with Ray's error, later ones print the ready line and block like `ray start --block`."""
    script = tmp_path / "ray"
    starts = tmp_path / "starts.log"
    script.write_text(
        "#!/bin/sh\n"
        f'echo start >> "{starts}"\n'
        f'if [ "$(wc -l < "{starts}")" -le {failures} ]; then\n'
        "  echo 'RuntimeError: Failed to register node: Deadline Exceeded'\n"
        "  exit 1\n"
        "fi\n"
        f"echo '{READY_MARK}.'\n"
        "exec sleep 120\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return starts


def _starts(starts: Path) -> int:
    return len(starts.read_text().splitlines()) if starts.exists() else 0


def _record(tmp_path: Path) -> ClusterRecord:
    temp_dir = tmp_path / "cluster"
    temp_dir.mkdir()
    return ClusterRecord("127.1.1.1:6379", [], str(temp_dir), LinkSettings(), 0.0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not cluster._has_exited(pid)


def test_a_node_that_exits_before_joining_is_started_once_more(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    starts = _fake_ray(tmp_path, failures=1)
    monkeypatch.setattr(cluster, "_ray_bin", lambda: str(tmp_path / "ray"))
    record = _record(tmp_path)
    try:
        cluster._join(record, "127.1.1.2", "b")
        assert _starts(starts) == 2
        assert [n.label for n in record.nodes] == ["b"]  # the failed first start is gone
        (node,) = record.nodes
        assert node.temp_dir.endswith("b-2") and _alive(node.pid)
    finally:
        cluster.stop_cluster(record)
    assert not _alive(node.pid)  # stopped by pid (its process group), nothing left behind
    assert not Path(record.temp_dir).exists()


def test_a_second_failure_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    starts = _fake_ray(tmp_path, failures=2)
    monkeypatch.setattr(cluster, "_ray_bin", lambda: str(tmp_path / "ray"))
    record = _record(tmp_path)
    try:
        with pytest.raises(ClusterError, match="node b .*failed to start: .*Deadline Exceeded"):
            cluster._join(record, "127.1.1.2", "b")
        assert _starts(starts) == 2  # once more, not forever
        assert len(record.nodes) == 1  # recorded, so start_cluster's cleanup stops it
    finally:
        cluster.stop_cluster(record)


def test_a_nodes_ports_are_distinct_even_when_the_kernel_repeats_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI once failed to start the head: two ports picked one after another were the same, and
    `ray start` refused ("port number N that is used by other components")."""
    import socket

    real_bind = socket.socket.bind
    handed: list[int] = []

    class RepeatingSocket(socket.socket):  # the kernel hands out 40001 twice, then any
        def bind(self, address: tuple[str, int]) -> None:  # type: ignore[override]
            if address[1] == 0 and len(handed) < 2:
                handed.append(40001)
                real_bind(self, (address[0], 0))
                self._fake_port = 40001
                return
            real_bind(self, address)

        def getsockname(self) -> tuple[str, int]:  # type: ignore[override]
            name = super().getsockname()
            return (name[0], getattr(self, "_fake_port", name[1]))

    monkeypatch.setattr(cluster.socket, "socket", RepeatingSocket)
    args = cluster.node_args("", "127.0.0.1", "a", tmp_path, head_port=6379)
    ports = [int(args[i + 1]) for i, a in enumerate(args) if a.endswith("-port") and a != "--port"]
    assert len(ports) == 8 and len(set(ports)) == 8, ports
    assert 6379 not in ports and ports.count(40001) == 1


def test_cluster_env_prints_the_exports_rays_tools_need(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import shlex

    from deploy import cli

    monkeypatch.setenv("HOME", str(tmp_path))
    assert cli.main(["cluster", "env"]) == 1
    assert "no cluster recorded; start one with `hopscope cluster up`" in capsys.readouterr().err
    record = ClusterRecord("127.9.9.2:6379", [], str(tmp_path / "ray"))
    cluster.state_dir().mkdir(parents=True)
    (cluster.state_dir() / "127.9.9.2_6379.json").write_text(record.to_json())
    assert cli.main(["cluster", "env"]) == 0
    exports = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert all(words[0] == "export" for words in exports)
    assert dict(words[1].split("=", 1) for words in exports) == {
        "RAY_ADDRESS": "127.9.9.2:6379",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(tmp_path / ".ray" / "auth_token"),
    }
