"""Certificates for a cluster's own CA, made with the ``cryptography`` package.

A shoal cluster trusts one CA of its own: every process presents a
certificate that CA signed, and accepts only peers that do the same (mutual
TLS).  Nobody outside the cluster needs to trust it, so names do not matter
(hostname checks are off, as in dask); what matters is the signature and the
validity period.  :meth:`shoal.Security.temporary` and the Kubernetes
operator make their CAs here.  Keys are ECDSA P-256: as safe as RSA-3072 and
an order of magnitude cheaper to handshake with.

Nothing here is cryptography of our own: keys, signatures and encodings all
come from ``cryptography``.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

__all__ = ["KeyPair", "new_ca", "new_certificate"]

#: How long a temporary CA and its certificates are valid.
DEFAULT_VALID_DAYS = 365
#: Certificates start being valid a little in the past, for clocks that differ.
CLOCK_SKEW = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str):  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shoal"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key) -> bytes:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def new_ca(common_name: str = "shoal-ca", days: int = DEFAULT_VALID_DAYS) -> KeyPair:
    """A self-signed CA that may sign certificates (and nothing else)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name)).issuer_name(_name(common_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def new_certificate(
    ca: KeyPair,
    common_name: str = "shoal",
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
    days: int = DEFAULT_VALID_DAYS,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> KeyPair:
    """A certificate signed by ``ca`` for both ends of a connection.

    ``hosts`` become subject alternative names (DNS names or IP addresses):
    shoal's own peers do not check them, but a browser opening the dashboard
    over HTTPS with the CA installed does.  ``not_before``/``not_after``
    override the validity period (tests make expired certificates with them).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    start = not_before or now - CLOCK_SKEW
    end = not_after or now + datetime.timedelta(days=days)
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_cert.public_key()), critical=False)  # type: ignore[arg-type]
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))
