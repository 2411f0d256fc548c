"""`split` on a local 2-node Ray cluster with --tls-dir: the actors get their TLS files by content
from the driver, generation works over a TLS front door, and the worker's TCP port on the other
node refuses plaintext clients, other CAs' certificates and callers without the deployment's
token."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from deploy.certs import write_certs
from deploy.client import stream_generate
from deploy.cluster import start_cluster, stop_cluster
from deploy.placement import resolve_placement
from deploy.ray_serve import RayDeployment, connect
from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc
from services.common.tls import client_credentials, load_tls
from services.config import HopscopeConfig
from tests.integration.test_tls_pipeline import _call

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    ours, other = tmp_path_factory.mktemp("ours") / "tls", tmp_path_factory.mktemp("other") / "tls"
    write_certs(ours, [])
    write_certs(other, [])
    return ours, other


@pytest.fixture(scope="module")
def split_tls(certs: tuple[Path, Path]) -> Iterator[str]:
    record = start_cluster(2, is_recorded=False)
    try:
        connect(record.address)
        spec = HopscopeConfig.of(placement="split", port=0, tls_dir=str(certs[0]))
        deployment = RayDeployment(spec, resolve_placement("split"))
        try:
            yield deployment.start()
        finally:
            deployment.stop()
    finally:
        import ray

        ray.shutdown()
        stop_cluster(record)


def _describe(address: str, credentials: grpc.ChannelCredentials) -> pb.DescribeResponse:
    with grpc.secure_channel(address, credentials) as channel:
        return pb_grpc.TokenizerStub(channel).Describe(pb.DescribeRequest(), timeout=30)


def test_split_on_ray_with_tls(split_tls: str, certs: tuple[Path, Path]) -> None:
    ours, other = certs
    trusting = client_credentials(ours / "ca.crt")
    request = pb.GenerateRequest(prompt="over TLS on Ray", max_tokens=6, ignore_eos=True)
    result = asyncio.run(stream_generate(split_tls, request, 120.0, credentials=trusting))
    assert result["usage"]["completion_tokens"] == 6
    described = _describe(split_tls, trusting)
    addresses = {s.name: s.address for s in described.services}
    nodes = {s.name: s.node_id for s in described.services}
    assert addresses["scheduler"].startswith("unix:") and not addresses["worker"].startswith("unix")
    assert nodes["worker"] != nodes["tokenizer"]
    foreign = load_tls(other, "scheduler")
    strangers = {
        "plaintext": None,
        "other_ca": grpc.ssl_channel_credentials(
            (ours / "ca.crt").read_bytes(), foreign.key_pem, foreign.cert_pem
        ),
        "our_ca_no_token": client_credentials(
            ours / "ca.crt", ours / "client.crt", ours / "client.key"
        ),
    }
    results = {who: _call("worker", addresses["worker"], c) for who, c in strangers.items()}
    assert results == {
        "plaintext": "UNAVAILABLE",
        "other_ca": "UNAVAILABLE",
        "our_ca_no_token": "UNAUTHENTICATED",
    }
    # the scheduler's Unix socket (same node as the tokenizer) is plaintext in a private
    # directory, and still wants the deployment's token
    socket_dir = Path(addresses["scheduler"].removeprefix("unix:")).parent
    assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
    assert _call("scheduler", addresses["scheduler"], None) == "UNAUTHENTICATED"
