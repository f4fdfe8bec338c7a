"""Who may talk to a cluster: TLS certificates and the HTTP token.

:class:`Security` holds the paths of a cluster's CA and of each role's
certificate (dask's names: ``tls_ca_file``, ``tls_client_cert``,
``tls_scheduler_key``, ...), whether unencrypted addresses are refused, and
the bearer token that HTTP mutations need.  From it come the standard
library's ``ssl.SSLContext`` objects: both ends present a certificate signed
by the cluster's CA and both check the other's (mutual TLS, TLS 1.2 at
least).  Hostnames are not checked, as in dask: the CA is the cluster's own
and signs only the cluster's processes, so a valid signature is the identity.

A process that is not told otherwise reads the same from the environment
(:meth:`Security.from_env`), which is how Kubernetes pods and the processes a
LocalCluster starts get their credentials.
"""

from __future__ import annotations

import atexit
import os
import shutil
import ssl
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

__all__ = ["ConnectionArgs", "HttpToken", "Role", "Security"]

Role = Literal["client", "scheduler", "worker"]
HttpAuth = Literal["mutations", "all"]
HTTP_AUTH_MODES = ("mutations", "all")
#: The environment variables :meth:`Security.from_env` reads.
ENV_CA_FILE = "SHOAL_TLS_CA_FILE"
ENV_CERT = "SHOAL_TLS_CERT"
ENV_KEY = "SHOAL_TLS_KEY"
ENV_TOKEN = "SHOAL_HTTP_TOKEN"
ENV_TOKEN_FILE = "SHOAL_HTTP_TOKEN_FILE"
ENV_REQUIRE_ENCRYPTION = "SHOAL_REQUIRE_ENCRYPTION"
ENV_HTTP_AUTH = "SHOAL_HTTP_AUTH"
ENV_METRICS_AUTH = "SHOAL_METRICS_AUTH"
#: Every variable above: a LocalCluster clears those it does not set for its children.
ENV_VARIABLES = (ENV_CA_FILE, ENV_CERT, ENV_KEY, ENV_TOKEN, ENV_TOKEN_FILE,
                 ENV_REQUIRE_ENCRYPTION, ENV_HTTP_AUTH, ENV_METRICS_AUTH)
#: A token file is looked at again (for rotation) at most this often.
TOKEN_RECHECK_SECONDS = 1.0
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ConnectionArgs:
    """What one role's connections need: its two contexts and the encryption rule."""

    require_encryption: bool = False
    client_context: ssl.SSLContext | None = None
    server_context: ssl.SSLContext | None = None


@dataclass(eq=False)
class Security:
    """TLS credentials and HTTP authentication for one process (dask's names).

    ``Security()`` is no security (plain ``tcp://``, open HTTP); give the CA
    and each role's certificate and key (PEM files) for ``tls://``.  A
    process uses its own role's pair both when it listens and when it
    connects.  ``http_token`` (or ``http_token_file``, read again when it
    changes) is what ``Authorization: Bearer`` must carry on the HTTP API;
    ``http_auth`` says whether only mutations need it (``"mutations"``) or
    every page but ``/health`` (``"all"``); ``metrics_auth`` protects
    ``/metrics`` too.
    """

    tls_ca_file: str | None = None
    tls_client_cert: str | None = None
    tls_client_key: str | None = None
    tls_scheduler_cert: str | None = None
    tls_scheduler_key: str | None = None
    tls_worker_cert: str | None = None
    tls_worker_key: str | None = None
    require_encryption: bool = False
    tls_min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    http_token: str | None = None
    http_token_file: str | None = None
    http_auth: HttpAuth = "mutations"
    metrics_auth: bool = False
    _contexts: dict[str, ConnectionArgs] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.http_auth not in HTTP_AUTH_MODES:
            raise ValueError(f"http_auth must be one of {HTTP_AUTH_MODES}, got {self.http_auth!r}")
        if self.tls_min_version < ssl.TLSVersion.TLSv1_2:
            raise ValueError("tls_min_version below TLS 1.2 is not supported")

    def __repr__(self) -> str:  # never show the token
        shown = {f.name: getattr(self, f.name) for f in fields(self)
                 if f.repr and getattr(self, f.name) not in (None, False)}
        if shown.pop("http_token", None):
            shown["http_token"] = "***"
        return "Security(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    # ------------------------------------------------------------ making one

    @classmethod
    def temporary(cls, **kwargs: Any) -> Security:
        """A fresh CA and one certificate for every role, plus a random HTTP token.

        The PEM files live in a private temporary directory (mode 0700)
        removed when this interpreter exits; child processes read them there.
        """
        import secrets

        from ._certs import new_ca, new_certificate

        ca = new_ca()
        pair = new_certificate(ca)
        directory = tempfile.mkdtemp(prefix="shoal-tls-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        paths = {}
        for name, data in (("ca.pem", ca.cert_pem), ("tls.crt", pair.cert_pem),
                           ("tls.key", pair.key_pem)):
            path = os.path.join(directory, name)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
                out.write(data)
            paths[name] = path
        cert, key = paths["tls.crt"], paths["tls.key"]
        defaults: dict[str, Any] = {
            "tls_ca_file": paths["ca.pem"], "require_encryption": True,
            "http_token": secrets.token_urlsafe(32),
            **{f"tls_{role}_{part}": path for role in ("client", "scheduler", "worker")
               for part, path in (("cert", cert), ("key", key))},
        }
        return cls(**{**defaults, **kwargs})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Security:
        """The ``SHOAL_TLS_*`` / ``SHOAL_HTTP_*`` variables; unset ones mean off.

        ``SHOAL_TLS_CA_FILE``, ``SHOAL_TLS_CERT`` and ``SHOAL_TLS_KEY`` (one
        pair for every role), ``SHOAL_HTTP_TOKEN`` or ``SHOAL_HTTP_TOKEN_FILE``,
        ``SHOAL_REQUIRE_ENCRYPTION`` (1/true), ``SHOAL_HTTP_AUTH``
        (mutations/all), ``SHOAL_METRICS_AUTH`` (1/true: ``/metrics`` needs the token).
        """
        def get(name: str) -> str | None:
            return environ.get(name) or None

        cert, key = get(ENV_CERT), get(ENV_KEY)
        return cls(
            tls_ca_file=get(ENV_CA_FILE),
            tls_client_cert=cert, tls_client_key=key,
            tls_scheduler_cert=cert, tls_scheduler_key=key,
            tls_worker_cert=cert, tls_worker_key=key,
            require_encryption=(get(ENV_REQUIRE_ENCRYPTION) or "").lower() in _TRUE,
            http_token=get(ENV_TOKEN), http_token_file=get(ENV_TOKEN_FILE),
            http_auth=(get(ENV_HTTP_AUTH) or "mutations"),  # type: ignore[arg-type]
            metrics_auth=(get(ENV_METRICS_AUTH) or "").lower() in _TRUE,
        )

    def as_client(self, role: Role) -> Security:
        """A copy whose client certificate is ``role``'s (a worker's task that
        opens a Client connects with the worker's own credentials)."""
        cert, key = self.cert_pair(role)
        if cert is None:
            return self
        return replace(self, tls_client_cert=cert, tls_client_key=key, _contexts={})

    def with_http(self, **changes: Any) -> Security:
        """A copy with other HTTP settings (the certificates stay)."""
        return replace(self, _contexts={}, **changes)

    # ------------------------------------------------------------ what it says

    @property
    def tls(self) -> bool:
        """Whether this names a CA, i.e. whether connections use ``tls://``."""
        return self.tls_ca_file is not None

    def cert_pair(self, role: Role) -> tuple[str | None, str | None]:
        return getattr(self, f"tls_{role}_cert"), getattr(self, f"tls_{role}_key")

    def token(self) -> HttpToken | None:
        """The HTTP token as configured (a file is followed as it changes), or None."""
        if self.http_token is None and self.http_token_file is None:
            return None
        return HttpToken(self.http_token, self.http_token_file)

    # ------------------------------------------------------------ contexts

    def connection_args(self, role: Role) -> ConnectionArgs:
        """The contexts ``role``'s connections use (made once, then cached)."""
        args = self._contexts.get(role)
        if args is None:
            args = ConnectionArgs(self.require_encryption)
            if self.tls:
                # a role without a certificate may still connect (and be refused):
                # it just cannot listen
                has_cert = self.cert_pair(role)[0] is not None
                args = ConnectionArgs(self.require_encryption, self._context(role, False),
                                      self._context(role, True) if has_cert else None)
            self._contexts[role] = args
        return args

    def _context(self, role: Role, server_side: bool) -> ssl.SSLContext:
        purpose = ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT
        ctx = ssl.SSLContext(purpose)
        ctx.minimum_version = self.tls_min_version
        ctx.check_hostname = False  # the cluster's own CA is the identity (see above)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ca = self.tls_ca_file
        _load(lambda: ctx.load_verify_locations(ca), "tls_ca_file", ca)
        cert, key = self.cert_pair(role)
        if cert is not None:
            _load(lambda: ctx.load_cert_chain(cert, key), f"tls_{role}_cert", cert)
        return ctx

    def http_server_context(self, role: Role) -> ssl.SSLContext | None:
        """HTTPS with the role's certificate; callers are not asked for one
        (browsers, Prometheus, probes): the token is what authenticates them."""
        if not self.tls:
            return None
        cert, key = self.cert_pair(role)
        if cert is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = self.tls_min_version
        _load(lambda: ctx.load_cert_chain(cert, key), f"tls_{role}_cert", cert)
        return ctx

    def http_client_context(self) -> ssl.SSLContext | None:
        """For calling a cluster's HTTPS API: trust the cluster's CA, no hostname check."""
        if not self.tls:
            return None
        return http_client_context(self.tls_ca_file)

    def cli_args(self, role: Role) -> list[str]:
        """The ``shoal scheduler``/``shoal worker`` flags that give ``role`` these
        credentials (the token travels in the environment: see :meth:`child_env`)."""
        args: list[str] = []
        cert, key = self.cert_pair(role)
        for flag, value in (("--tls-ca-file", self.tls_ca_file), ("--tls-cert", cert),
                            ("--tls-key", key), ("--http-token-file", self.http_token_file)):
            if value is not None:
                args += [flag, value]
        if self.require_encryption:
            args.append("--require-encryption")
        args += ["--http-auth", self.http_auth]
        if self.metrics_auth:
            args.append("--metrics-auth")
        return args

    def child_env(self) -> dict[str, str]:
        """Environment for a child process: the token, and nothing inherited
        from this process's own ``SHOAL_TLS_*`` (the flags say what is meant)."""
        env = dict.fromkeys(ENV_VARIABLES, "")
        if self.http_token is not None:
            env[ENV_TOKEN] = self.http_token
        return env


def http_client_context(ca_file: str | None) -> ssl.SSLContext:
    """Verify a cluster's HTTPS server against its CA file (names not checked)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load(lambda: ctx.load_verify_locations(ca_file), "tls_ca_file", ca_file)
    return ctx


def _load(load: Any, what: str, path: str | None) -> None:
    """Run ``load()``; a missing or unreadable PEM file becomes a ValueError naming it."""
    try:
        load()
    except FileNotFoundError:
        raise ValueError(f"{what}: no such file {path!r}") from None
    except ssl.SSLError as exc:
        raise ValueError(f"{what}: {path!r} is not a usable PEM certificate/key: "
                         f"{exc.reason or exc}") from None


class HttpToken:
    """The bearer token, from the value given or a file followed as it changes
    (a rotated Kubernetes Secret is seen within about a second)."""

    def __init__(self, value: str | None, path: str | None = None) -> None:
        self._value = value.strip() if value else None
        self._path = path
        self._mtime: float | None = None
        self._checked = 0.0
        if path is not None:
            self._reload()

    def _reload(self) -> None:
        assert self._path is not None
        try:
            mtime = os.stat(self._path).st_mtime
            if mtime != self._mtime:
                with open(self._path, encoding="utf-8") as f:
                    self._value = f.read().strip() or None
                self._mtime = mtime
        except OSError as exc:
            raise ValueError(f"the HTTP token file {self._path!r} cannot be read: {exc}") from None

    def current(self) -> bytes | None:
        if self._path is not None and time.monotonic() - self._checked > TOKEN_RECHECK_SECONDS:
            self._checked = time.monotonic()
            try:
                self._reload()
            except ValueError:
                pass  # mid-rotation: keep the last token we read
        return self._value.encode() if self._value else None
