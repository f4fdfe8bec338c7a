"""The operator's client of the scheduler HTTP API (docs/http-api.md).

Every call the operator makes to a scheduler goes through here, so there is
one place that knows the paths, the JSON shapes and the error translation:
an unreachable or failing scheduler becomes :class:`SchedulerUnavailable`, a
subclass of ``kopf.TemporaryError`` (kopf retries the handler later).

Inside Kubernetes the scheduler is reached through its Service DNS name; tests
and out-of-cluster runs replace that mapping with :func:`set_url_resolver`.

A cluster with TLS serves HTTPS and wants a bearer token for mutations
(docs/security.md): each call takes ``token`` and ``ca_file``, and when they
are not given, :func:`set_credentials_resolver`'s function is asked for the
cluster's. By default that is what the reconcile round registered with
:func:`use_credentials` (the token and CA from the cluster's own Secrets),
else ``SHOAL_HTTP_TOKEN_FILE``/``SHOAL_HTTP_TOKEN`` and ``SHOAL_TLS_CA_FILE``
of the operator's own environment. With a CA the URL becomes ``https://`` and
the server's certificate is checked against it.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

from shoal.comm._security import Security, http_client_context
from shoal.operator.builders import HTTP_PORT, scheduler_host

DEFAULT_TIMEOUT = 10.0
RETRY_DELAY = 10.0

UrlResolver = Callable[[str, str], str]


@dataclass(frozen=True)
class Credentials:
    """How to call one cluster's scheduler: its bearer token and its CA (a PEM file,
    or the PEM itself as the operator reads it from the cluster's Secret)."""

    token: str | None = None
    ca_file: str | None = None
    ca_pem: bytes | None = None


CredentialsResolver = Callable[[str, str], Credentials]


def _env_credentials(cluster: str, namespace: str) -> Credentials:
    security = Security.from_env()
    token = security.token()
    current = token.current() if token is not None else None
    return Credentials(current.decode() if current else None, security.tls_ca_file)


_registered: dict[tuple[str, str], Credentials] = {}
_contexts: dict[bytes, ssl.SSLContext] = {}


def use_credentials(cluster: str, namespace: str, credentials: Credentials | None) -> None:
    """Call this cluster's scheduler with ``credentials`` from now on; None forgets it."""
    if credentials is None:
        _registered.pop((namespace, cluster), None)
    else:
        _registered[(namespace, cluster)] = credentials


def registered_credentials(cluster: str, namespace: str) -> Credentials:
    """What :func:`use_credentials` registered, else the operator's environment."""
    return _registered.get((namespace, cluster)) or _env_credentials(cluster, namespace)


_credentials: CredentialsResolver = registered_credentials


def set_credentials_resolver(resolver: CredentialsResolver | None) -> None:
    """Map (cluster, namespace) to its :class:`Credentials`; None restores the default."""
    global _credentials
    _credentials = resolver or registered_credentials


def _pem_context(ca_pem: bytes) -> ssl.SSLContext:
    """A context trusting the CA ``ca_pem`` (names not checked), made once per CA."""
    if ca_pem not in _contexts:
        if len(_contexts) > 256:  # rotated CAs: keep the cache bounded
            _contexts.clear()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False  # as http_client_context: the CA is the identity
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(cadata=ca_pem.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError) as exc:
            raise ValueError(f"the cluster's CA is not a usable PEM certificate: {exc}") from exc
        _contexts[ca_pem] = context
    return _contexts[ca_pem]


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


def _request_options(cluster: str, namespace: str, token: str | None,
                     ca_file: str | None) -> tuple[str, dict[str, Any]]:
    """The base URL and aiohttp's keywords (headers, ssl) for one call."""
    ca_pem = None
    if token is None and ca_file is None:
        found = _credentials(cluster, namespace)
        token, ca_file, ca_pem = found.token, found.ca_file, found.ca_pem
    base = base_url(cluster, namespace)
    options: dict[str, Any] = {}
    if token:
        options["headers"] = {"Authorization": f"Bearer {token}"}
    if ca_file or ca_pem:
        context: ssl.SSLContext = (_pem_context(ca_pem) if ca_pem
                                   else http_client_context(ca_file))
        options["ssl"] = context
        if base.startswith("http://"):
            base = "https://" + base[len("http://"):]
    return base, options


async def _call(cluster: str, namespace: str, method: str, path: str,
                body: dict[str, Any] | None = None, *, token: str | None = None,
                ca_file: str | None = None) -> Any:
    try:
        base, options = _request_options(cluster, namespace, token, ca_file)
    except ValueError as exc:  # an unreadable CA or token file
        raise SchedulerUnavailable(f"scheduler of {namespace}/{cluster}: {exc}",
                                   delay=RETRY_DELAY) from exc
    url = base + path
    timeout = aiohttp.ClientTimeout(total=DEFAULT_TIMEOUT)
    try:
        async with (aiohttp.ClientSession(timeout=timeout) as session,
                    session.request(method, url, json=body, **options) as response):
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


async def workers(cluster: str, namespace: str, *, token: str | None = None,
                  ca_file: str | None = None) -> list[dict[str, Any]]:
    answer = await _call(cluster, namespace, "GET", "/api/v1/workers", token=token,
                         ca_file=ca_file)
    return list(answer.get("workers", []))


async def adaptive_target(cluster: str, namespace: str, *, token: str | None = None,
                          ca_file: str | None = None) -> int:
    answer = await _call(cluster, namespace, "GET", "/api/v1/adaptive_target", token=token,
                         ca_file=ca_file)
    return int(answer["workers"])


async def idle(cluster: str, namespace: str, *, token: str | None = None,
               ca_file: str | None = None) -> tuple[bool, float | None]:
    """(idle, idle_since as unix seconds or None)."""
    answer = await _call(cluster, namespace, "GET", "/api/v1/idle", token=token,
                         ca_file=ca_file)
    since = answer.get("idle_since")
    return bool(answer["idle"]), None if since is None else float(since)


async def retire_workers(cluster: str, namespace: str, *, n: int | None = None,
                         names: list[str] | None = None, token: str | None = None,
                         ca_file: str | None = None) -> list[str]:
    """Ask the scheduler to retire workers; answers the names it actually retired."""
    body: dict[str, Any] = {"n": n} if names is None else {"workers": names}
    answer = await _call(cluster, namespace, "POST", "/api/v1/retire_workers", body,
                         token=token, ca_file=ca_file)
    return [w["name"] for w in answer.get("retired", []) if w.get("name")]
