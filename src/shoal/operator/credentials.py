"""A cluster's credentials in Secrets: made once, checked every round, rotated on request.

Each reconcile round lists the cluster's credential Secrets (one labelled
LIST) and keeps them if they are whole and current: all four present, made
from one CA (the ``shoal.dev/credentials`` annotation is the CA's
fingerprint), for the current ``spec.security.rotation``, the certificates
signed by that CA and not about to expire. Otherwise it issues a new set
(a new CA, certificates and token) and writes all four Secrets. The new
fingerprint goes into every pod template (``ClusterSpec.credentials``), so the
pods are rolled onto the new credentials by the usual rollout.

A Secret of one of those names that the cluster does not own is never
overwritten: the cluster is refused instead (it would otherwise hand someone
else's Secret to its pods, or clobber it).
"""

from __future__ import annotations

import base64
import datetime
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import kopf

from shoal.cluster.kube import api_path
from shoal.operator import builders, kubeops, pki
from shoal.operator.spec import ClusterSpec

logger = logging.getLogger("shoal.operator")
TOKEN_BYTES = 32


@dataclass(frozen=True)
class Credentials:
    """What the operator itself needs of a cluster's credentials."""

    fingerprint: str
    token: str
    ca_pem: bytes
    not_after: datetime.datetime
    issued: bool = False  # made in this round (a first issue or a rotation)


def _names(cluster: str) -> list[str]:
    return [builders.ca_secret_name(cluster), builders.pod_secret_name(cluster),
            builders.client_secret_name(cluster), builders.token_secret_name(cluster)]


def _data(secret: Mapping[str, Any], key: str) -> bytes:
    return base64.b64decode((secret.get("data") or {}).get(key) or "")


def current(spec: ClusterSpec, found: Mapping[str, Mapping[str, Any]],
            now: datetime.datetime | None = None) -> Credentials | None:
    """The credentials in ``found`` (Secrets by name) if whole and current, else None."""
    ca_name, pod_name, client_name, token_name = _names(spec.name)
    if any(name not in found for name in (ca_name, pod_name, client_name, token_name)):
        return None
    try:
        ca = _data(found[ca_name], "tls.crt")
        ca_print = pki.fingerprint(ca)
        for name in (ca_name, pod_name, client_name, token_name):
            annotations = found[name]["metadata"].get("annotations") or {}
            if annotations.get(builders.ANNOTATION_CREDENTIALS) != ca_print or \
                    annotations.get(builders.ANNOTATION_ROTATION, "") != spec.security.rotation:
                return None
        for name in (pod_name, client_name):
            cert = _data(found[name], "tls.crt")
            if not pki.signed_by(cert, ca) or pki.needs_renewal(cert, now):
                return None
        token = _data(found[token_name], "token").decode()
    except ValueError:  # not PEM, not base64, not UTF-8: someone edited it
        return None
    if not token:
        return None
    return Credentials(ca_print, token, ca, pki.not_after(_data(found[pod_name], "tls.crt")))


async def _write(obj: dict[str, Any], owner: Mapping[str, Any]) -> None:
    """Create the Secret, or replace the data of the one the cluster already owns."""
    kopf.adopt(obj, owner=kopf.Body(cast(kopf.RawBody, dict(owner))))
    if await kubeops.create(obj):
        return
    path = kubeops.object_path(obj)
    existing = await kubeops.get(path) or {}
    uid = owner["metadata"].get("uid")
    owners = [ref.get("uid") for ref in existing.get("metadata", {}).get("ownerReferences") or []]
    if existing and uid not in owners:
        raise kubeops.ObjectRefused(
            f"Secret {obj['metadata']['name']} exists and is not owned by this ShoalCluster; "
            "the operator will not overwrite it (rename the cluster or delete the Secret)")
    await kubeops.patch(path, {"metadata": {"labels": obj["metadata"]["labels"],
                                            "annotations": obj["metadata"]["annotations"]},
                               "data": obj["data"]})


async def ensure(spec: ClusterSpec, owner: Mapping[str, Any]) -> Credentials:
    """The cluster's credentials, made (or remade) when they are missing or not current."""
    labels = builders.labels(spec.name, "credentials")
    found = {s["metadata"]["name"]: s
             for s in await kubeops.list_labelled("v1", "secrets", spec.namespace, labels)}
    existing = current(spec, found)
    if existing is not None:
        return existing
    for name in _names(spec.name):
        if name not in found and await kubeops.get(
                api_path("v1", "secrets", spec.namespace, name)) is not None:
            found[name] = {}  # unlabelled: _write decides whether it is ours
    why = "issuing" if not found else "rotating"
    logger.info(f"{spec.namespace}/{spec.name}: {why} the cluster's CA, certificates and token")
    made = pki.issue(spec.name, spec.namespace,
                     builders.scheduler_dns_names(spec.name, spec.namespace))
    token = secrets.token_urlsafe(TOKEN_BYTES)
    for obj in builders.credential_secrets(spec, made, token.encode()):
        await _write(obj, owner)
    return Credentials(made.fingerprint, token, made.ca.cert_pem,
                       pki.not_after(made.pod.cert_pem), issued=True)
