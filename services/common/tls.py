"""TLS for hopscope's gRPC hops: a TLS directory loaded into server and channel credentials.

A TLS directory (written by `hopscope certs`, or your own files under the same names) holds
`ca.crt` — the only root any hop trusts — and, per identity, `NAME.crt` + `NAME.key`
(tokenizer, scheduler, worker; `client` for generate / bench). Internal hops are mutual TLS:
the server requires a client certificate from the CA, and the client checks the server's
certificate against INTERNAL_SERVER_NAME, a name every service certificate carries, so the check
holds whatever address, relay or node the hop goes through. The front door serves TLS without
client certificates (callers authenticate with the API key).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import grpc

CA_CERT_FILE = "ca.crt"
SERVICE_IDENTITIES = ("tokenizer", "scheduler", "worker", "client")
INTERNAL_SERVER_NAME = "hopscope-internal"


class TlsError(ValueError):
    """A TLS directory or file that cannot be used; says which file and what to do."""


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """One identity's credentials: the CA, its certificate chain and its private key (PEM)."""

    identity: str
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes = field(repr=False)  # never in a log line or a traceback


def identity_files(identity: str) -> tuple[str, str, str]:
    """The file names `identity` needs in a TLS directory: CA, certificate, key."""
    return CA_CERT_FILE, f"{identity}.crt", f"{identity}.key"


def load_tls(tls_dir: str | Path, identity: str) -> TlsMaterial:
    """Read `identity`'s credentials from `tls_dir`; TlsError names a missing or bad file."""
    directory = Path(tls_dir)
    if not directory.is_dir():
        raise TlsError(
            f"TLS directory {directory} does not exist; make one with `hopscope certs --out {directory}`"
        )
    ca, cert, key = (_read(directory / name) for name in identity_files(identity))
    material = TlsMaterial(identity, ca, cert, key)
    check_material(material, str(directory))
    return material


def read_tls_files(tls_dir: str | Path, identities: tuple[str, ...]) -> dict[str, bytes]:
    """The files `identities` need, by name: what a deployer ships to a node (Ray actors get the
    contents, never a path that might not exist on their node)."""
    names = dict.fromkeys(n for i in identities for n in identity_files(i))
    for identity in identities:
        load_tls(tls_dir, identity)  # fail in the driver, with the file's name, not on a node
    return {name: _read(Path(tls_dir) / name) for name in names}


def write_tls_files(files: dict[str, bytes], prefix: str = "hopscope-tls-") -> Path:
    """Materialize shipped files in a new private directory (0700; keys 0600); returns it."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))  # mkdtemp: 0700, owned by us
    for name, data in files.items():
        if "/" in name or name.startswith("."):
            raise TlsError(f"refusing TLS file name {name!r}")
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return directory


def server_credentials(
    material: TlsMaterial, *, require_client_auth: bool = True
) -> grpc.ServerCredentials:
    """Credentials for a listener: the CA as the only root for client certificates."""
    return grpc.ssl_server_credentials(
        [(material.key_pem, material.cert_pem)],
        root_certificates=material.ca_pem,
        require_client_auth=require_client_auth,
    )


def channel_credentials(material: TlsMaterial) -> grpc.ChannelCredentials:
    """Credentials for an internal hop: trust only the CA, present our own certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=material.ca_pem,
        private_key=material.key_pem,
        certificate_chain=material.cert_pem,
    )


def client_credentials(
    ca_path: str | Path, cert_path: str | Path = "", key_path: str | Path = ""
) -> grpc.ChannelCredentials:
    """Credentials for a caller of the front door (generate, bench): the CA it trusts, and a
    client certificate when one is given."""
    if bool(cert_path) != bool(key_path):
        raise TlsError("a client certificate needs both its certificate and its key file")
    ca = _read(Path(ca_path))
    cert = _read(Path(cert_path)) if cert_path else None
    key = _read(Path(key_path)) if key_path else None
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def client_credentials_from_dir(tls_dir: str | Path) -> grpc.ChannelCredentials:
    """A launcher's own client of the front door it started (health waits, Describe): the TLS
    directory's CA and `client` certificate."""
    directory = Path(tls_dir)
    return client_credentials(
        directory / CA_CERT_FILE, directory / "client.crt", directory / "client.key"
    )


def check_material(material: TlsMaterial, where: str) -> None:
    """Parse the PEM files and check that the key belongs to the certificate, so a mistake is a
    clear error at start-up rather than every handshake failing later."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    _, cert_name, key_name = identity_files(material.identity)
    try:
        x509.load_pem_x509_certificates(material.ca_pem)
    except ValueError as exc:
        raise TlsError(f"{where}/{CA_CERT_FILE} is not a PEM certificate: {exc}") from exc
    try:
        cert = x509.load_pem_x509_certificates(material.cert_pem)[0]
    except ValueError as exc:
        raise TlsError(f"{where}/{cert_name} is not a PEM certificate: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(material.key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsError(f"{where}/{key_name} is not an unencrypted PEM private key") from exc
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, public) != cert.public_key().public_bytes(der, public):
        raise TlsError(f"{where}/{key_name} is not the key of {where}/{cert_name}")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsError(
            f"{path} is missing; make a TLS directory with `hopscope certs --out {path.parent}`"
        ) from None
    except OSError as exc:
        raise TlsError(f"cannot read {path}: {exc.strerror}") from None
