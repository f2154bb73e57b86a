"""Development TLS certificates for the embedded server.

:func:`self_signed` makes a throw-away certificate authority and a server
certificate it signed, valid for ``127.0.0.1``, ``::1`` and ``localhost``.
Clients trust the CA file (``verify=ca_path`` in httpx,
``NODE_EXTRA_CA_CERTS`` for Node); a separate CA (rather than one
self-signed leaf) keeps strict X.509 verifiers happy, which refuse a leaf
certificate that doubles as its own issuer.

Never use these certificates outside development: the key is written to
disk unencrypted.

Owns development certificates; must not import the framework or the client.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DevCertificate", "self_signed"]

_HOSTS = ("localhost",)
_ADDRESSES = ("127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class DevCertificate:
    """Paths of one generated development certificate set (PEM files)."""

    #: The CA certificate clients should trust.
    ca_cert: Path
    #: The server certificate followed by the CA certificate.
    cert: Path
    #: The server's private key (unencrypted).
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "oada-jobs development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def self_signed(
    directory: str | os.PathLike[str] | None = None,
    *,
    hosts: tuple[str, ...] = _HOSTS,
    addresses: tuple[str, ...] = _ADDRESSES,
    days: int = 30,
) -> DevCertificate:
    """Write a development CA and a server certificate signed by it.

    :param directory: Where to write ``ca.pem``, ``cert.pem`` and ``key.pem``; a new
        temporary directory when ``None`` (the caller removes it).
    :param hosts: DNS names and IP addresses the server certificate is valid for.
    :param addresses: DNS names and IP addresses the server certificate is valid for.
    :param days: Validity period.

    >>> cert = self_signed()  # doctest: +SKIP
    >>> httpx.get("https://127.0.0.1:8443/bookmarks", verify=str(cert.ca_cert))  # doctest: +SKIP
    """
    out = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="oada-tls-"))
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    # Backdate a little so a client whose clock lags slightly still accepts it.
    valid = (now - dt.timedelta(minutes=5), now + dt.timedelta(days=days))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_certificate(ca_key, valid)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _server_certificate(key, ca_key, ca_cert, hosts, addresses, valid)
    return _write(out, ca_cert, cert, key)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signing only; a CA also signs certificates and revocation lists."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_certificate(
    ca_key: ec.EllipticCurvePrivateKey, valid: tuple[dt.datetime, dt.datetime]
) -> x509.Certificate:
    """The development CA's own certificate, valid from ``valid[0]`` to ``valid[1]``."""
    ca_name = _name("oada-jobs development CA")
    return (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: tuple[str, ...],
    addresses: tuple[str, ...],
    valid: tuple[dt.datetime, dt.datetime],
) -> x509.Certificate:
    """The server's certificate for *hosts* and *addresses*, signed by the CA."""
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    alt_names: list[x509.GeneralName] = [x509.DNSName(h) for h in hosts]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    return (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0] if hosts else addresses[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _write(
    out: Path,
    ca_cert: x509.Certificate,
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
) -> DevCertificate:
    """Write the PEM files into *out*: the CA, the server's chain, its private key."""
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    paths = DevCertificate(ca_cert=out / "ca.pem", cert=out / "cert.pem", key=out / "key.pem")
    paths.ca_cert.write_bytes(ca_pem)
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca_pem)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # The key file is private to the user who runs the server.
    fd = os.open(paths.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    return paths
