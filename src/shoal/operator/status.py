"""Writing ShoalCluster/ShoalJob status: conditions, phase, the status patch.

Status is written by a merge-patch of the ``status`` subresource (not the
handler's ``patch`` object), because the periodic reconcile loop runs outside
any kopf handler. Conditions follow the Kubernetes convention: one entry per
type, ``lastTransitionTime`` only moves when the status flips.

Optional fields with nothing to say are left out (or set to None, which a
merge-patch turns into "remove the field"), never written as empty strings:
a Kubernetes 1.20 API server built with Go 1.19 or newer (as the test tier's
was, until its build patched the validator) takes ``""`` in a custom
resource for null and refuses it against the CRD's ``type: string``. That
was the 422 of the first status patch; leaving the field out works on every
server.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from shoal.cluster.kube import api_path
from shoal.operator import kubeops
from shoal.operator.crds import API_VERSION, CLUSTER_PLURAL

Condition = dict[str, Any]


def now_iso(now: float | None = None) -> str:
    moment = (datetime.datetime.now(datetime.UTC) if now is None
              else datetime.datetime.fromtimestamp(now, datetime.UTC))
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_iso(value: str) -> float:
    return datetime.datetime.fromisoformat(value).timestamp()


def set_condition(conditions: list[Condition] | None, kind: str, ok: bool | None,
                  reason: str, message: str = "") -> list[Condition]:
    """``conditions`` with the condition ``kind`` set; other types are kept."""
    status = "Unknown" if ok is None else ("True" if ok else "False")
    result = [dict(c) for c in conditions or [] if c.get("type") != kind]
    previous = next((c for c in conditions or [] if c.get("type") == kind), None)
    moved = previous is None or previous.get("status") != status
    condition = {
        "type": kind, "status": status, "reason": reason,
        "lastTransitionTime": now_iso() if moved or previous is None
        else previous.get("lastTransitionTime", now_iso()),
    }
    if message:  # an optional field: absent rather than "" (see the module docstring)
        condition["message"] = message
    result.append(condition)
    return sorted(result, key=lambda c: str(c["type"]))


def condition_true(conditions: list[Condition] | None, kind: str) -> bool:
    return condition_status(conditions, kind) == "True"


def condition_status(conditions: list[Condition] | None, kind: str) -> str | None:
    """"True", "False", "Unknown", or None when there is no such condition."""
    return next((str(c.get("status")) for c in conditions or [] if c.get("type") == kind), None)


def phase_of(conditions: list[Condition]) -> str:
    for condition in conditions:
        if condition.get("type") == "SpecValid" and condition.get("status") == "False":
            return "Failed"
    return "Running" if condition_true(conditions, "SchedulerReady") else "Pending"


async def write_cluster_status(namespace: str, name: str, status: Mapping[str, Any]) -> None:
    path = api_path(API_VERSION, CLUSTER_PLURAL, namespace, name, "status")
    await kubeops.patch(path, {"status": dict(status)})


async def write_status(api_version: str, plural: str, namespace: str, name: str,
                       status: Mapping[str, Any]) -> None:
    path = api_path(api_version, plural, namespace, name, "status")
    await kubeops.patch(path, {"status": dict(status)})


def pod_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in status.get("conditions") or [])


def pod_finished(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def terminating(obj: Mapping[str, Any]) -> bool:
    return bool(obj.get("metadata", {}).get("deletionTimestamp"))
