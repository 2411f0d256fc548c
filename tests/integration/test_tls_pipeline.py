"""`serve --no-ray --placement colocated-tcp` with and without --tls-dir: generation works, and the
internal scheduler and worker ports (addresses from Describe) refuse everyone but the pipeline's
own services: plaintext clients and other CAs' certificates with TLS on, callers without the
deployment's internal token always."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy.certs import write_certs
from deploy.client import GenerateError, build_request, stream_generate
from deploy.lifecycle import ServeChild, start_serve
from protos import hopscope_pb2 as pb
from protos import hopscope_pb2_grpc as pb_grpc
from services.common.tls import INTERNAL_SERVER_NAME, client_credentials, load_tls


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    ours, other = tmp_path_factory.mktemp("ours") / "tls", tmp_path_factory.mktemp("other") / "tls"
    write_certs(ours, [])
    write_certs(other, [])
    return ours, other


@pytest.fixture(scope="module")
def served_tls(
    certs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeChild]:
    args = ["--no-ray", "--placement", "colocated-tcp", "--tls-dir", str(certs[0])]
    served = start_serve(args, log_path=tmp_path_factory.mktemp("logs") / "serve.log")
    try:
        yield served
    finally:
        served.stop()


def _internal_addresses(served: ServeChild) -> dict[str, str]:
    services = {s["name"]: s["address"] for s in served.describe()["services"]}
    assert services["scheduler"].startswith("127.0.0.1:"), services
    assert services["worker"].startswith("127.0.0.1:"), services
    return {"scheduler": services["scheduler"], "worker": services["worker"]}


def _call(service: str, address: str, credentials: grpc.ChannelCredentials | None) -> str:
    """One unary call on an internal port; "OK" or the status code's name."""
    options = [("grpc.ssl_target_name_override", INTERNAL_SERVER_NAME)]
    channel = (
        grpc.secure_channel(address, credentials, options=options)
        if credentials is not None
        else grpc.insecure_channel(address)
    )
    with channel:
        try:
            if service == "worker":
                pb_grpc.WorkerStub(channel).Info(pb.InfoRequest(), timeout=5)
            else:
                pb_grpc.SchedulerStub(channel).Describe(pb.DescribeRequest(), timeout=5)
        except grpc.RpcError as exc:
            return exc.code().name  # type: ignore[attr-defined,no-any-return]
    return "OK"


def _generate(address: str, credentials: grpc.ChannelCredentials | None) -> str:
    class Args:
        prompt, max_tokens, temperature, top_p, top_k = "hello", 6, 0.0, 0.0, 0
        ignore_eos, stop, request_id, seed, chat = True, [], "", None, False

    request = build_request(Args())  # type: ignore[arg-type]
    try:
        result = asyncio.run(stream_generate(address, request, 30.0, credentials=credentials))
    except GenerateError as exc:
        return str(exc.code.name if exc.code else exc)
    assert result["usage"]["completion_tokens"] == 6
    return "OK"


def test_generation_works_over_tls_and_internal_ports_refuse_strangers(
    served_tls: ServeChild, certs: tuple[Path, Path]
) -> None:
    ours, other = certs
    assert _generate(served_tls.address, client_credentials(ours / "ca.crt")) == "OK"
    assert _generate(served_tls.address, None) == "UNAVAILABLE"  # plaintext to a TLS front door
    foreign = load_tls(other, "scheduler")  # trusts our CA, presents another CA's certificate
    strangers = {
        "plaintext": None,
        "other_ca": grpc.ssl_channel_credentials(
            (ours / "ca.crt").read_bytes(), foreign.key_pem, foreign.cert_pem
        ),
        # our CA's own certificate, but not the deployment's token: still refused
        "our_ca_no_token": client_credentials(
            ours / "ca.crt", ours / "client.crt", ours / "client.key"
        ),
    }
    results = {
        (service, who): _call(service, address, credentials)
        for service, address in _internal_addresses(served_tls).items()
        for who, credentials in strangers.items()
    }
    assert results == {
        ("scheduler", "plaintext"): "UNAVAILABLE",
        ("scheduler", "other_ca"): "UNAVAILABLE",
        ("scheduler", "our_ca_no_token"): "UNAUTHENTICATED",
        ("worker", "plaintext"): "UNAVAILABLE",
        ("worker", "other_ca"): "UNAVAILABLE",
        ("worker", "our_ca_no_token"): "UNAUTHENTICATED",
    }


def test_bench_reaches_a_tls_front_door_with_tls_ca(
    served_tls: ServeChild, certs: tuple[Path, Path], tmp_path: Path
) -> None:
    import json
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    argv = ["bench", "--address", served_tls.address, "--tls-ca", str(certs[0] / "ca.crt")]
    argv += ["--concurrency", "2", "--num-requests", "4", "--input-len", "16", "--output-len", "4"]
    argv += ["--out", str(out), "--no-plots", "--no-live"]
    result = subprocess.run(
        [sys.executable, "-P", "-m", "deploy.cli", *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(out.read_text())["summary"]
    assert (summary["completed"], summary["failed"]) == (4, 0)


def test_without_tls_internal_ports_need_the_deployment_token(tmp_path: Path) -> None:
    served = start_serve(
        ["--no-ray", "--placement", "colocated-tcp"], log_path=tmp_path / "serve.log"
    )
    try:
        assert _generate(served.address, None) == "OK"
        for service, address in _internal_addresses(served).items():
            assert _call(service, address, None) == "UNAUTHENTICATED", service
            with grpc.insecure_channel(address) as channel:  # probes may still check health
                health = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        # the token is in no command line (`ps` shows those to every user)
        cmdlines = [p.read_bytes() for p in Path("/proc").glob("[0-9]*/cmdline") if _readable(p)]
        ours = [c for c in cmdlines if b"internal_token" in c]
        assert ours and not any(re.search(rb'"internal_token": "[^"]', c) for c in ours)
    finally:
        served.stop()


def _readable(path: Path) -> bool:
    try:
        path.read_bytes()
    except OSError:
        return False
    return True
