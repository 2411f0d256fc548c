"""The one channel factory (issue 20, defect 4): the load client's channel, the launchers'
synchronous channel and the services' aio channel carry the same options (message limits,
keepalive matching the servers', reconnect backoff) and make the same TLS choices."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from deploy import lifecycle
from deploy.certs import write_certs
from loadgen.channel import open_channel
from services.common.channels import create_channel, create_sync_channel
from services.common.grpc_options import Keepalive, channel_options
from services.common.tls import INTERNAL_SERVER_NAME, load_tls, server_credentials


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls") / "certs"
    write_certs(directory, [])
    return directory


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every channel grpc is asked for: which face, secure or not, its options, interceptors."""
    calls: list[dict[str, Any]] = []

    def recorder(face: str, secure: bool) -> Any:
        def make(address: str, *args: Any, **kwargs: Any) -> str:
            credentials = args[0] if secure and args else kwargs.get("credentials")
            calls.append(
                {
                    "face": face,
                    "secure": secure and credentials is not None,
                    "options": list(kwargs.get("options") or []),
                    "interceptors": kwargs.get("interceptors"),
                }
            )
            return "channel"

        return make

    monkeypatch.setattr(grpc, "insecure_channel", recorder("sync", False))
    monkeypatch.setattr(grpc, "secure_channel", recorder("sync", True))
    monkeypatch.setattr(grpc.aio, "insecure_channel", recorder("aio", False))
    monkeypatch.setattr(grpc.aio, "secure_channel", recorder("aio", True))
    return calls


def test_the_load_client_channel_has_the_factorys_options_and_keepalive(
    made: list[dict[str, Any]], tls_dir: Path
) -> None:
    open_channel("127.0.0.1:1")
    open_channel("127.0.0.1:1", str(tls_dir / "ca.crt"), is_traced=True)
    plain, tls = made
    assert plain == {
        "face": "aio",
        "secure": False,
        "options": channel_options(),
        "interceptors": None,
    }
    assert ("grpc.keepalive_time_ms", 10_000) in plain["options"]
    assert tls["secure"] and tls["options"] == channel_options()
    assert tls["interceptors"]  # traced: OpenTelemetry's client interceptors


def test_an_unreadable_ca_is_named() -> None:
    with pytest.raises(ValueError, match="--tls-ca /no/such/ca.crt: cannot read it"):
        open_channel("127.0.0.1:1", "/no/such/ca.crt")


@pytest.mark.parametrize("address", ["127.0.0.1:1", "unix:/tmp/x.sock"])
@pytest.mark.parametrize("how", ["plain", "tls", "credentials"])
def test_the_sync_face_equals_the_aio_face(
    made: list[dict[str, Any]], tls_dir: Path, address: str, how: str
) -> None:
    keepalive = Keepalive(time_ms=7_000, timeout_ms=3_000)
    kwargs: dict[str, Any] = {"keepalive": keepalive}
    if how == "tls":
        kwargs["tls"] = load_tls(tls_dir, "scheduler")
    if how == "credentials":
        kwargs["credentials"] = grpc.ssl_channel_credentials((tls_dir / "ca.crt").read_bytes())
    create_channel(address, **kwargs)
    create_sync_channel(address, **kwargs)
    aio, sync = made
    assert (aio["face"], sync["face"]) == ("aio", "sync")
    assert (
        sync["secure"]
        == aio["secure"]
        == (how == "credentials" or (how == "tls" and address[:5] != "unix:"))
    )
    assert sync["options"] == aio["options"]
    assert channel_options(keepalive) == aio["options"][: len(channel_options(keepalive))]
    override = ("grpc.ssl_target_name_override", INTERNAL_SERVER_NAME)
    assert (override in aio["options"]) == (how == "tls" and not address.startswith("unix:"))


def test_the_launchers_sync_channel_is_the_factorys(made: list[dict[str, Any]]) -> None:
    lifecycle._sync_channel("127.0.0.1:1")
    assert made == [
        {"face": "sync", "secure": False, "options": channel_options(), "interceptors": None}
    ]


def test_the_sync_face_speaks_mutual_tls(tls_dir: Path) -> None:
    async def serve_and_check() -> int:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        material = load_tls(tls_dir, "worker")
        port = server.add_secure_port("127.0.0.1:0", server_credentials(material))
        await server.start()
        try:
            with create_sync_channel(
                f"127.0.0.1:{port}", tls=load_tls(tls_dir, "scheduler")
            ) as channel:
                check = health_pb2_grpc.HealthStub(channel).Check
                response = await asyncio.to_thread(
                    check, health_pb2.HealthCheckRequest(), timeout=5
                )
            return int(response.status)
        finally:
            await server.stop(None)

    assert asyncio.run(serve_and_check()) == health_pb2.HealthCheckResponse.SERVING
