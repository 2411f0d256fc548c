"""`hopscope certs` and services/common/tls.py: files, permissions, and a real mTLS handshake
that accepts the CA's certificates and refuses plaintext and other CAs' certificates."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from deploy.certs import CertsError, write_certs
from services.common.tls import (
    INTERNAL_SERVER_NAME,
    TlsError,
    channel_credentials,
    load_tls,
    read_tls_files,
    server_credentials,
    write_tls_files,
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """Our CA's directory and a second, unrelated CA's directory."""
    ours = tmp_path_factory.mktemp("tls") / "ours"
    other = tmp_path_factory.mktemp("tls") / "other"
    write_certs(ours, ["node-a.example", "10.1.2.3"])
    write_certs(other, [])
    yield ours, other


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_certs_are_private_and_name_the_hosts(certs: tuple[Path, Path]) -> None:
    ours, _ = certs
    assert _mode(ours) == 0o700
    for name in ("ca", "tokenizer", "scheduler", "worker", "client"):
        assert _mode(ours / f"{name}.key") == 0o600
        assert (ours / f"{name}.crt").is_file()
    cert = x509.load_pem_x509_certificate((ours / "worker.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = sans.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    assert {"localhost", "node-a.example", INTERNAL_SERVER_NAME} <= set(dns)
    assert {"127.0.0.1", "10.1.2.3"} <= set(ips)


def test_certs_refuse_to_overwrite(certs: tuple[Path, Path]) -> None:
    with pytest.raises(CertsError, match="--force"):
        write_certs(certs[0], [])


def test_load_names_the_missing_or_mismatched_file(
    certs: tuple[Path, Path], tmp_path: Path
) -> None:
    ours, other = certs
    with pytest.raises(TlsError, match="does not exist"):
        load_tls(tmp_path / "nowhere", "worker")
    for name in ("ca.crt", "worker.crt"):
        (tmp_path / name).write_bytes((ours / name).read_bytes())
    with pytest.raises(TlsError, match=r"worker\.key is missing.*hopscope certs"):
        load_tls(tmp_path, "worker")
    (tmp_path / "worker.key").write_bytes((other / "worker.key").read_bytes())
    with pytest.raises(TlsError, match=r"worker\.key is not the key of"):
        load_tls(tmp_path, "worker")


def test_shipped_files_are_rewritten_privately(certs: tuple[Path, Path]) -> None:
    files = read_tls_files(certs[0], ("scheduler",))
    assert sorted(files) == ["ca.crt", "scheduler.crt", "scheduler.key"]
    directory = write_tls_files(files)
    try:
        assert _mode(directory) == 0o700 and _mode(directory / "scheduler.key") == 0o600
        assert load_tls(directory, "scheduler").cert_pem == files["scheduler.crt"]
    finally:
        for path in directory.iterdir():
            path.unlink()
        directory.rmdir()


# ---------------------------------------------------------------------------- handshakes
async def _check(port: int, credentials: grpc.ChannelCredentials | None) -> str:
    """Health Check on the mTLS server; the status code name, or "OK"."""
    address = f"127.0.0.1:{port}"
    options = [("grpc.ssl_target_name_override", INTERNAL_SERVER_NAME)]
    channel = (
        grpc.aio.secure_channel(address, credentials, options=options)
        if credentials is not None
        else grpc.aio.insecure_channel(address)
    )
    async with channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
    return "OK"


def _foreign_client(ours: Path, other: Path) -> grpc.ChannelCredentials:
    foreign = load_tls(other, "scheduler")
    return grpc.ssl_channel_credentials(
        (ours / "ca.crt").read_bytes(), foreign.key_pem, foreign.cert_pem
    )


async def _handshakes(ours: Path, other: Path) -> dict[str, str]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(load_tls(ours, "worker")))
    await server.start()
    try:
        return {
            "ours": await _check(port, channel_credentials(load_tls(ours, "scheduler"))),
            "plaintext": await _check(port, None),
            # trusts our CA (so only the server can refuse) but presents another CA's certificate
            "other_ca": await _check(port, _foreign_client(ours, other)),
            "no_client_cert": await _check(
                port, grpc.ssl_channel_credentials((ours / "ca.crt").read_bytes())
            ),
        }
    finally:
        await server.stop(None)


def test_mtls_accepts_our_ca_and_refuses_plaintext_and_other_cas(
    certs: tuple[Path, Path],
) -> None:
    results = asyncio.run(_handshakes(*certs))
    assert results == {
        "ours": "OK",
        "plaintext": "UNAVAILABLE",
        "other_ca": "UNAVAILABLE",
        "no_client_cert": "UNAVAILABLE",
    }
