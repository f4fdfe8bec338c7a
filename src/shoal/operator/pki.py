"""The certificates of one ShoalCluster: what the operator issues and checks.

Each cluster gets a CA of its own (made by :mod:`shoal.comm._certs`, on the
``cryptography`` package), so a certificate of one cluster is worth nothing
at another. The CA signs two certificates:

- the *pod* certificate, shared by the scheduler and every worker; its names
  are the scheduler Service's DNS names (peers check the CA, not names:
  workers listen on pod IPs nobody knows in advance, as in dask);
- the *client* certificate, for notebooks, job runners and the operator.

What is added here is what the operator needs to decide whether the Secrets
it finds are still good: a fingerprint (the name of a CA, carried by every
pod so that new credentials roll them), the expiry, and the signature check.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from shoal.comm._certs import KeyPair, new_ca, new_certificate

CA_DAYS = 3650
CERT_DAYS = 365
RENEW_BEFORE = datetime.timedelta(days=30)
"""Certificates this close to expiry are renewed (a rotation) by the operator."""


@dataclass(frozen=True)
class ClusterPki:
    """A cluster's CA and the two certificates it signed."""

    ca: KeyPair
    pod: KeyPair
    client: KeyPair

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.ca.cert_pem)


MAX_COMMON_NAME = 64  # X.509's upper bound (RFC 5280, ub-common-name)


def common_name(text: str) -> str:
    """``text`` cut to fit a certificate's common name (names are for people to read)."""
    return text[:MAX_COMMON_NAME]


def issue(cluster: str, namespace: str, dns_names: list[str]) -> ClusterPki:
    """A fresh CA for one cluster and its pod and client certificates."""
    ca = new_ca(common_name(f"shoal CA {namespace}/{cluster}"), days=CA_DAYS)
    pod = new_certificate(ca, common_name(f"shoal pods {cluster}"),
                          hosts=(*dns_names, "127.0.0.1"), days=CERT_DAYS)
    client = new_certificate(ca, common_name(f"shoal client {cluster}"), hosts=(),
                             days=CERT_DAYS)
    return ClusterPki(ca, pod, client)


def fingerprint(cert: bytes) -> str:
    """A short, stable name of a certificate (SHA-256 of its DER, 16 hex digits)."""
    der = x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()[:16]


def not_after(cert: bytes) -> datetime.datetime:
    return x509.load_pem_x509_certificate(cert).not_valid_after_utc


def needs_renewal(cert: bytes, now: datetime.datetime | None = None) -> bool:
    """True when ``cert`` expires within :data:`RENEW_BEFORE` (or already has)."""
    return not_after(cert) - (now or datetime.datetime.now(datetime.UTC)) < RENEW_BEFORE


def signed_by(cert: bytes, ca: bytes) -> bool:
    """True when ``ca`` issued ``cert`` (the signature; the dates are checked apart)."""
    try:
        leaf = x509.load_pem_x509_certificate(cert)
        leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
