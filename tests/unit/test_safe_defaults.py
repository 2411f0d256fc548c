"""Safe by default: every listener binds loopback unless told otherwise, an unprotected
non-loopback front door is warned about, local clusters keep Ray's token auth and its dashboard
on the node's own address, Unix sockets live in private directories, and no hop of ours
pickles (protobuf only)."""

from __future__ import annotations

import argparse
import logging
import re
import stat
from pathlib import Path

import pytest

from deploy.cluster import node_args, ray_env
from deploy.commands import add_parser, resolve_security, spec_from_args
from deploy.local import LocalDeployment
from deploy.ray_actors import _private_dir
from deploy.spec import metrics_address
from services.common.metrics import METRICS_PORTS
from services.common.peer_auth import is_loopback
from services.scheduler.service_config import SchedulerServiceConfig
from services.tokenizer.service_config import TokenizerServiceConfig
from services.worker.service_config import WorkerServiceConfig
from tracing.collector import DEFAULT_LISTEN

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("services", "deploy", "loadgen", "tracing", "protos")


def _serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def _host(address: str) -> str:
    return address.rsplit(":", 1)[0]


def test_every_listener_binds_loopback_by_default() -> None:
    spec = spec_from_args(_serve_args("--metrics", "--placement", "colocated-tcp"))
    listeners = [spec.deploy.front_door, *(metrics_address(spec, s) for s in METRICS_PORTS)]
    listeners += [WorkerServiceConfig().listen, SchedulerServiceConfig().listen]
    listeners += [TokenizerServiceConfig().listen, DEFAULT_LISTEN]
    deployment = LocalDeployment(spec)
    try:
        listeners += [deployment._internal_address(s) for s in ("scheduler", "worker")]
    finally:
        deployment.tmp_dir.rmdir()
    assert all(is_loopback(_host(a)) for a in listeners), listeners


def test_an_unprotected_public_front_door_is_warned_about(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    with caplog.at_level(logging.WARNING):
        resolve_security(spec_from_args(_serve_args("--host", "0.0.0.0")))
    assert "the front door listens on 0.0.0.0:50051" in caplog.text
    caplog.clear()
    from deploy.certs import write_certs

    write_certs(tmp_path / "tls", [])
    with caplog.at_level(logging.WARNING):
        spec = resolve_security(
            spec_from_args(_serve_args("--host", "0.0.0.0", "--tls-dir", str(tmp_path / "tls")))
        )
    assert spec.security.tls_dir == str(tmp_path / "tls") and "without TLS" not in caplog.text


def test_a_missing_tls_file_is_named_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"ca\.crt is missing.*hopscope certs"):
        resolve_security(spec_from_args(_serve_args("--tls-dir", str(tmp_path))))


def test_local_clusters_keep_ray_token_auth_and_a_loopback_dashboard(tmp_path: Path) -> None:
    assert ray_env()["RAY_AUTH_MODE"] == "token"
    args = node_args("", "127.0.0.1", "a", tmp_path, head_port=6379)
    joined = " ".join(args)
    assert "--include-dashboard false" in joined
    assert "--dashboard-host 127.0.0.1" in joined
    assert "--node-ip-address 127.0.0.1" in joined
    # `cluster up` turns it on (Ray's state API needs it): on the node's own loopback address
    with_dashboard = " ".join(node_args("", "127.0.0.1", "a", tmp_path, 6379, has_dashboard=True))
    assert "--include-dashboard true" in with_dashboard
    assert "--dashboard-host 127.0.0.1" in with_dashboard


def test_unix_socket_directories_are_private(tmp_path: Path) -> None:
    deployment = LocalDeployment(spec_from_args(_serve_args("--placement", "colocated")))
    try:
        assert stat.S_IMODE(deployment.tmp_dir.stat().st_mode) == 0o700
    finally:
        deployment.tmp_dir.rmdir()
    ray_dir = tmp_path / "hs-1234"
    _private_dir(ray_dir)
    assert stat.S_IMODE(ray_dir.stat().st_mode) == 0o700


def test_no_hop_of_ours_pickles() -> None:
    """Our hops carry protobuf only. Ray pickles its own actor calls (ServiceHost.info(),
    check_health(), stop(): control, never requests or tokens); that is Ray's business."""
    pattern = re.compile(
        r"^\s*(import|from)\s+(pickle|cloudpickle|dill|marshal|shelve)\b", re.MULTILINE
    )
    offenders = [
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if pattern.search(path.read_text()) or "pickle.loads" in path.read_text()
    ]
    assert offenders == []


def test_a_placement_yaml_can_name_the_tls_dir(tmp_path: Path) -> None:
    from deploy.certs import write_certs

    write_certs(tmp_path / "tls", [])
    yaml_path = tmp_path / "mine.yaml"
    yaml_path.write_text(
        "services: {tokenizer: a, scheduler: a, worker: a}\ntransports: {scheduler->worker: tcp}\n"
        "tls_dir: tls\n"  # relative to the file
    )
    spec = resolve_security(spec_from_args(_serve_args("--placement", str(yaml_path))))
    assert spec.security.tls_dir == str(tmp_path / "tls")
