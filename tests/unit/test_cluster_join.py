"""`hopscope cluster up`: a worker node whose `ray start` exits before joining is started once
more (a busy head's GCS answered `Deadline Exceeded` once in CI); a second failure is an error."""

from __future__ import annotations

import pytest

from deploy import cluster
from deploy.cluster import ClusterError, ClusterRecord, LinkSettings, NodeRecord


def _fake(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[int]:
    attempts: list[int] = []

    def start_node(record: object, ip: str, label: str, head_port: int = 0, attempt: int = 1):  # type: ignore[no-untyped-def]
        attempts.append(attempt)
        return NodeRecord(ip, label, 100 + attempt, f"/tmp/x/{label}-{attempt}", "/dev/null")

    def wait_ready(nodes: list[NodeRecord], timeout_s: float = 0) -> None:
        if len(attempts) <= failures:
            raise ClusterError(f"node {nodes[0].label} failed to start: Deadline Exceeded")

    monkeypatch.setattr(cluster, "_start_node", start_node)
    monkeypatch.setattr(cluster, "_wait_ready", wait_ready)
    monkeypatch.setattr(cluster, "_has_exited", lambda pid: True)
    monkeypatch.setattr(cluster, "_signal_group", lambda pgid, sig: None)
    monkeypatch.setattr(cluster, "_reap", lambda nodes: None)
    return attempts


def test_a_node_that_exits_before_joining_is_started_once_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts = _fake(monkeypatch, failures=1)
    record = ClusterRecord("127.1.1.1:6379", [], "/tmp/x", LinkSettings(), 0.0)
    cluster._join(record, "127.1.1.2", "b")
    assert attempts == [1, 2]
    assert [(n.label, n.pid) for n in record.nodes] == [("b", 102)]  # the first one is gone


def test_a_second_failure_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = _fake(monkeypatch, failures=2)
    record = ClusterRecord("127.1.1.1:6379", [], "/tmp/x", LinkSettings(), 0.0)
    with pytest.raises(ClusterError, match="Deadline Exceeded"):
        cluster._join(record, "127.1.1.2", "b")
    assert attempts == [1, 2]
    assert len(record.nodes) == 1  # recorded, so start_cluster's cleanup stops it
