"""Certificates for tests: a cluster's CA and the credentials of would-be intruders."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from shoal import Security
from shoal.comm._certs import KeyPair, new_ca, new_certificate


def write_security(directory: Path, ca: KeyPair, pair: KeyPair | None,
                   **kwargs: Any) -> Security:
    """A Security whose every role uses ``pair`` (None: no certificate at all)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.pem").write_bytes(ca.cert_pem)
    roles: dict[str, str] = {}
    if pair is not None:
        (directory / "tls.crt").write_bytes(pair.cert_pem)
        (directory / "tls.key").write_bytes(pair.key_pem)
        for role in ("client", "scheduler", "worker"):
            roles[f"tls_{role}_cert"] = str(directory / "tls.crt")
            roles[f"tls_{role}_key"] = str(directory / "tls.key")
    return Security(tls_ca_file=str(directory / "ca.pem"), **roles, **kwargs)


def make_pki(root: Path, **cluster_kwargs: Any) -> dict[str, Security]:
    """``cluster``: the cluster's own; ``no-cert``: its CA but no certificate;
    ``other-ca``: a valid pair from another CA; ``expired``: the cluster's CA,
    expired nine days ago."""
    ca, other_ca = new_ca(), new_ca("another-ca")
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    expired = new_certificate(ca, not_before=past, not_after=past + datetime.timedelta(days=1))
    return {
        "cluster": write_security(root / "cluster", ca, new_certificate(ca), **cluster_kwargs),
        "no-cert": write_security(root / "no-cert", ca, None),
        "other-ca": write_security(root / "other-ca", other_ca, new_certificate(other_ca)),
        "expired": write_security(root / "expired", ca, expired),
    }
