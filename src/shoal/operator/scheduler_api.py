"""The operator's client of the scheduler HTTP API (docs/http-api.md).

Every call the operator makes to a scheduler goes through here, so there is
one place that knows the paths, the JSON shapes and the error translation:
an unreachable or failing scheduler becomes :class:`SchedulerUnavailable`, a
subclass of ``kopf.TemporaryError`` (kopf retries the handler later).

Inside Kubernetes the scheduler is reached through its Service DNS name; tests
and out-of-cluster runs replace that mapping with :func:`set_url_resolver`.

A secured cluster (the default) serves HTTPS with a certificate of its own CA
and wants ``Authorization: Bearer TOKEN`` on mutations: the reconcile round
hands both over with :func:`use_credentials` before it calls anything here,
and every request then verifies the server against that CA and carries the
token (on reads too; the scheduler may be configured to protect them).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

from shoal.operator.builders import HTTP_PORT, scheduler_host

DEFAULT_TIMEOUT = 10.0
RETRY_DELAY = 10.0

UrlResolver = Callable[[str, str], str]


class SchedulerUnavailable(kopf.TemporaryError):
    """The scheduler could not be reached or answered with an error."""


@dataclass(frozen=True)
class Access:
    """How to call one cluster's scheduler: its token and, with TLS, its CA."""

    token: str | None = None
    ca_pem: bytes | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.ca_pem is None:
            return None
        context = ssl.create_default_context(cadata=self.ca_pem.decode("ascii"))
        # The certificate names the Service; the CA, not the name, is the
        # identity (test and port-forward URLs say 127.0.0.1 or localhost).
        context.check_hostname = False
        return context


_access: dict[tuple[str, str], Access] = {}
_contexts: dict[bytes, ssl.SSLContext] = {}


def use_credentials(cluster: str, namespace: str, token: str | None,
                    ca_pem: bytes | None) -> None:
    """Call this cluster's scheduler with ``token`` and, when given, over TLS verified
    against ``ca_pem``; both None forgets the cluster."""
    if token is None and ca_pem is None:
        _access.pop((namespace, cluster), None)
    else:
        _access[(namespace, cluster)] = Access(token, ca_pem)


def _in_cluster_url(cluster: str, namespace: str) -> str:
    scheme = "https" if access(cluster, namespace).ca_pem is not None else "http"
    return f"{scheme}://{scheduler_host(cluster, namespace)}:{HTTP_PORT}"


def access(cluster: str, namespace: str) -> Access:
    return _access.get((namespace, cluster)) or Access()


def _ssl(found: Access) -> ssl.SSLContext | None:
    if found.ca_pem is None:
        return None
    if found.ca_pem not in _contexts:
        if len(_contexts) > 256:  # rotated CAs: keep the cache bounded
            _contexts.clear()
        context = found.ssl_context()
        assert context is not None
        _contexts[found.ca_pem] = context
    return _contexts[found.ca_pem]


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
    found = access(cluster, namespace)
    headers = {"Authorization": f"Bearer {found.token}"} if found.token else {}
    context = _ssl(found) if url.startswith("https:") else None
    try:
        async with (aiohttp.ClientSession(timeout=timeout) as session,
                    session.request(method, url, json=body, headers=headers,
                                    ssl=context if context is not None else True) as response):
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
