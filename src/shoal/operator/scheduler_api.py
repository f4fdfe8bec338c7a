"""The operator's client of the scheduler HTTP API (docs/http-api.md).

Every call the operator makes to a scheduler goes through here, so there is
one place that knows the paths, the JSON shapes and the error translation:
an unreachable or failing scheduler becomes :class:`SchedulerUnavailable`, a
subclass of ``kopf.TemporaryError`` (kopf retries the handler later).

Inside Kubernetes the scheduler is reached through its Service DNS name; tests
and out-of-cluster runs replace that mapping with :func:`set_url_resolver`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import kopf

from shoal.operator.builders import HTTP_PORT, scheduler_host

DEFAULT_TIMEOUT = 10.0
RETRY_DELAY = 10.0

UrlResolver = Callable[[str, str], str]


class SchedulerUnavailable(kopf.TemporaryError):
    """The scheduler could not be reached or answered with an error."""


def _in_cluster_url(cluster: str, namespace: str) -> str:
    return f"http://{scheduler_host(cluster, namespace)}:{HTTP_PORT}"


_resolver: UrlResolver = _in_cluster_url


def set_url_resolver(resolver: UrlResolver | None) -> None:
    """Map (cluster, namespace) to the scheduler's base HTTP URL; None restores DNS."""
    global _resolver
    _resolver = resolver or _in_cluster_url


def base_url(cluster: str, namespace: str) -> str:
    return _resolver(cluster, namespace).rstrip("/")


async def _call(cluster: str, namespace: str, method: str, path: str,
                body: dict[str, Any] | None = None) -> Any:
    url = base_url(cluster, namespace) + path
    timeout = aiohttp.ClientTimeout(total=DEFAULT_TIMEOUT)
    try:
        async with (aiohttp.ClientSession(timeout=timeout) as session,
                    session.request(method, url, json=body) as response):
            if response.status >= 400:
                text = await response.text()
                raise SchedulerUnavailable(
                    f"scheduler of {namespace}/{cluster}: {method} {path} answered "
                    f"{response.status}: {text[:500]}", delay=RETRY_DELAY)
            return await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise SchedulerUnavailable(
            f"scheduler of {namespace}/{cluster} is unreachable at {url}: {exc!r}",
            delay=RETRY_DELAY) from exc


async def workers(cluster: str, namespace: str) -> list[dict[str, Any]]:
    answer = await _call(cluster, namespace, "GET", "/api/v1/workers")
    return list(answer.get("workers", []))


async def adaptive_target(cluster: str, namespace: str) -> int:
    answer = await _call(cluster, namespace, "GET", "/api/v1/adaptive_target")
    return int(answer["workers"])


async def idle(cluster: str, namespace: str) -> tuple[bool, float | None]:
    """(idle, idle_since as unix seconds or None)."""
    answer = await _call(cluster, namespace, "GET", "/api/v1/idle")
    since = answer.get("idle_since")
    return bool(answer["idle"]), None if since is None else float(since)


async def retire_workers(cluster: str, namespace: str, *, n: int | None = None,
                         names: list[str] | None = None) -> list[str]:
    """Ask the scheduler to retire workers; answers the names it actually retired."""
    body: dict[str, Any] = {"n": n} if names is None else {"workers": names}
    answer = await _call(cluster, namespace, "POST", "/api/v1/retire_workers", body)
    return [w["name"] for w in answer.get("retired", []) if w.get("name")]
