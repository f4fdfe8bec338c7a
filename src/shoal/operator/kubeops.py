"""Asynchronous, idempotent Kubernetes operations for the handlers.

The handlers need a handful of calls (create-if-absent, delete-if-present,
list by labels, merge-patch); this module runs them through
:class:`shoal.cluster.kube.KubeApi` in a thread (the official client is
synchronous) and translates failures where they enter: an unreachable API
or a 5xx/403/429 becomes ``kopf.TemporaryError`` (retry later), a refused
object (400/422) becomes :class:`ObjectRefused`, which the handlers report
as an invalid spec.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import kopf

from shoal.cluster.kube import KubeApi, KubeApiError, api_path

RETRY_DELAY = 5.0
PLURALS = {"Pod": "pods", "Service": "services", "Deployment": "deployments",
           "ShoalCluster": "shoalclusters", "ShoalJob": "shoaljobs", "Event": "events",
           "Secret": "secrets", "NetworkPolicy": "networkpolicies"}

_api: KubeApi | None = None


class ObjectRefused(kopf.PermanentError):
    """The API server refused an object we built (a bad template, most likely)."""


def configure(api: KubeApi | None) -> None:
    """Use ``api`` for every call (tests point it at an emulator); None: from environment."""
    global _api
    _api = api


def api() -> KubeApi:
    global _api
    if _api is None:
        _api = KubeApi.from_environment()
    return _api


def object_path(obj: Mapping[str, Any], with_name: bool = True) -> str:
    meta = obj["metadata"]
    return api_path(obj["apiVersion"], PLURALS[obj["kind"]], meta.get("namespace"),
                    meta["name"] if with_name else None)


async def _run(method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None,
               content_type: str | None = None) -> Any:
    try:
        return await asyncio.to_thread(api().request, method, path, body, query, content_type)
    except KubeApiError as exc:
        if exc.status in (400, 422):
            raise ObjectRefused(str(exc)) from exc
        if exc.status in (404, 409) or namespace_terminating(exc):
            raise
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc


def namespace_terminating(exc: KubeApiError) -> bool:
    """The API server's 403 for objects created in a namespace that is being deleted."""
    return exc.status == 403 and "because it is being terminated" in str(exc)


async def create(obj: Mapping[str, Any]) -> bool:
    """Create ``obj``; False when it already exists (a retry, a restart).

    Also False in a namespace being deleted: the owner goes with it, and so
    would anything created now.
    """
    try:
        await _run("POST", object_path(obj, with_name=False), obj)
    except KubeApiError as exc:
        if exc.status == 409 or namespace_terminating(exc):
            return False
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc
    return True


async def get(path: str) -> dict[str, Any] | None:
    try:
        return dict(await _run("GET", path))
    except KubeApiError as exc:
        if exc.status == 404:
            return None
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc


async def delete(path: str) -> bool:
    """Delete; False when it was already gone."""
    try:
        await _run("DELETE", path)
    except KubeApiError as exc:
        if exc.status == 404:
            return False
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc
    return True


async def patch(path: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
    """Merge-patch; None when the object is gone."""
    try:
        return dict(await _run("PATCH", path, body, content_type="application/merge-patch+json"))
    except KubeApiError as exc:
        if exc.status == 404:
            return None
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc


async def list_labelled(api_version: str, plural: str, namespace: str,
                        labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """Objects carrying all ``labels`` (also checked here, not only by the server)."""
    selector = ",".join(f"{k}={v}" for k, v in labels.items())
    try:
        answer = await _run("GET", api_path(api_version, plural, namespace),
                            query={"labelSelector": selector})
    except KubeApiError as exc:
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc
    items = answer.get("items", []) if isinstance(answer, Mapping) else []
    return [item for item in items
            if all(item.get("metadata", {}).get("labels", {}).get(k) == v
                   for k, v in labels.items())]
