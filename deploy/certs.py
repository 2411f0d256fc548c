"""`hopscope certs --out DIR`: a development CA and one certificate per service, to try TLS
without any other tool.

DIR gets `ca.crt` / `ca.key` (the CA), `tokenizer`, `scheduler`, `worker` (`NAME.crt` /
`NAME.key`: each a server and a client certificate, since every service is both) and `client`
(for `generate` / `bench`). Every certificate names the hosts it was made for (`--hosts`, plus
localhost / 127.0.0.1 / ::1) and the internal name the services check each other by
(services/common/tls.py: INTERNAL_SERVER_NAME), so an internal hop verifies whatever address,
relay or 127.x.y.z node it goes through. Keys are EC P-256, files 0600, DIR 0700.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.tls import CA_CERT_FILE, INTERNAL_SERVER_NAME, SERVICE_IDENTITIES

CA_KEY_FILE = "ca.key"
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
VALID_DAYS = 365
SAN = x509.DNSName | x509.IPAddress


class CertsError(RuntimeError):
    """The certificates could not be written; says what to change."""


@dataclass(frozen=True, slots=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "certs", help="make a development CA and per-service TLS certificates (for --tls-dir)"
    )
    p.add_argument("--out", required=True, help="directory to create (0700; keys 0600)")
    p.add_argument(
        "--hosts",
        nargs="*",
        default=[],
        help="extra DNS names / IP addresses the front door is reached at "
        "(localhost, 127.0.0.1 and ::1 are always included)",
    )
    p.add_argument("--force", action="store_true", help="overwrite certificates already in --out")
    p.add_argument("--days", type=int, default=VALID_DAYS, help="validity in days")
    p.set_defaults(func=run_certs)


def run_certs(args: argparse.Namespace) -> int:
    try:
        written = write_certs(Path(args.out), args.hosts, is_forced=args.force, days=args.days)
    except (CertsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote a development CA and {len(written) - 1} certificates to {args.out}")
    print(f"  serve with:    hopscope serve --tls-dir {args.out} ...")
    print(f"  connect with:  hopscope generate --tls-ca {Path(args.out) / CA_CERT_FILE} ...")
    return 0


def write_certs(
    out: Path, hosts: Sequence[str], *, is_forced: bool = False, days: int = 365
) -> list[str]:
    """Write the CA and every identity's certificate into `out`; returns the identities."""
    if days < 1:
        raise ValueError(f"--days must be >= 1, got {days}")
    sans = _sans([*DEFAULT_HOSTS, *hosts, INTERNAL_SERVER_NAME])
    if (out / CA_CERT_FILE).exists() and not is_forced:
        raise CertsError(f"{out} already holds certificates; pass --force to replace them")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    out.chmod(0o700)
    ca = _issue_ca(days)
    _write(out, "ca", ca)
    names = ["ca"]
    for identity in SERVICE_IDENTITIES:
        _write(out, identity, _issue_leaf(ca, identity, sans, days))
        names.append(identity)
    return names


def _sans(hosts: Sequence[str]) -> list[SAN]:
    sans: list[SAN] = []
    for host in dict.fromkeys(h.strip() for h in hosts if h.strip()):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    return sans


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hopscope development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: object, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # small clock skew between nodes
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _issue_ca(days: int) -> Issued:
    key = _new_key()
    name = _name("hopscope development CA")
    cert = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def _issue_leaf(ca: Issued, identity: str, sans: list[SAN], days: int) -> Issued:
    key = _new_key()
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        _builder(_name(f"hopscope-{identity}"), ca.cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(cert, key)


def _write(out: Path, name: str, issued: Issued) -> None:
    cert_pem = issued.cert.public_bytes(serialization.Encoding.PEM)
    key_pem = issued.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_file(out / f"{name}.crt", cert_pem, 0o644)
    _write_file(out / f"{name}.key", key_pem, 0o600)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Create with `mode` from the start: a key is never readable by others, not even briefly."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    path.chmod(mode)  # the umask may have narrowed it
