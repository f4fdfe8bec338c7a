"""Limits shared by the scheduler's and the workers' HTTP servers.

Bodies are streamed in (tornado's ``stream_request_body``) and refused with
413 as soon as they pass ``max_body_bytes``: a declared Content-Length over
the limit is refused before a byte of the body is read, so a large body
neither fills memory nor blocks the event loop while it is parsed.  JSON too
deeply nested for the parser is a 400, like any other bad JSON.  Idle
connections and slow bodies time out.

Who may call what (:class:`HttpAuth`, docs/security.md): ``/health`` is
always open; a request that is not a GET or HEAD changes something and needs
``Authorization: Bearer <token>`` when a token is configured (401 without
one, 403 with a wrong one, compared in constant time, checked before the
body is read); with TLS on and no token, such requests are refused
outright.  The other pages are open unless ``http_auth="all"``, and
``/metrics`` unless ``metrics_auth``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import ssl
from typing import Any, Literal

from tornado.httpserver import HTTPServer
from tornado.web import Application, HTTPError, RequestHandler, stream_request_body

from ._security import HttpToken, Security

__all__ = ["DEFAULT_MAX_BODY_BYTES", "HttpAuth", "LimitedBodyHandler", "authorize", "challenge",
           "http_server", "max_body_bytes"]

Access = Literal["health", "metrics", "read", "mutation"]
#: Methods that only read; any other one is a mutation.
READ_METHODS = ("GET", "HEAD", "OPTIONS")
#: The cookie a browser keeps the token in after opening ``/?token=...``
#: (read-only pages only: mutations need the header, so no CSRF).
TOKEN_COOKIE = "shoal-token"

#: Largest request body accepted by default (the JSON API's bodies are tiny).
#: ``SHOAL_HTTP_MAX_BODY_BYTES`` or ``--http-max-body`` change it.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
#: Bodies larger than this are parsed off the event loop.
PARSE_ON_THREAD_BYTES = 256 * 1024
#: A chunked body (no declared length) this many times the limit is cut off
#: by closing the connection; up to there it is discarded and answered 413.
CHUNKED_SLACK = 8
#: A connection with no request for this long is closed.
HTTP_IDLE_TIMEOUT = 60.0
#: A request body that takes longer than this to arrive is abandoned.
HTTP_BODY_TIMEOUT = 30.0


def max_body_bytes(configured: int | None = None) -> int:
    """The limit to use: the one given, else the environment's, else the default."""
    if configured is not None:
        return configured
    text = os.environ.get("SHOAL_HTTP_MAX_BODY_BYTES")
    return int(text) if text else DEFAULT_MAX_BODY_BYTES


class HttpAuth:
    """The rules above for one server, from its :class:`Security`."""

    def __init__(self, security: Security | None = None) -> None:
        security = security or Security()
        self.token: HttpToken | None = security.token()
        self.tls = security.tls
        self.all_pages = security.http_auth == "all"
        self.metrics = security.metrics_auth

    def check(self, handler: RequestHandler, access: Access) -> None:
        """Return if the request may proceed; raise 401/403 if not."""
        if handler.request.method not in READ_METHODS:
            access = "mutation"
        if access == "health":
            return
        if (access == "read" and not self.all_pages) or (access == "metrics" and not self.metrics):
            return
        expected = self.token.current() if self.token is not None else None
        if expected is None:
            if access == "mutation" and not self.tls:
                return  # no TLS, no token: the comm port is open anyway (docs/security.md)
            raise HTTPError(403, "this server has no HTTP token configured, so this request "
                            "is refused: give --http-token-file or SHOAL_HTTP_TOKEN_FILE")
        given = self._bearer(handler)
        if given is None and access != "mutation":
            given = self._from_browser(handler, expected)
        if given is None:
            raise HTTPError(401, "this request needs 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(given, expected):
            raise HTTPError(403, "the bearer token is not this server's")

    @staticmethod
    def _bearer(handler: RequestHandler) -> bytes | None:
        header = handler.request.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, value = header.partition(" ")
        return value.strip().encode() if scheme.lower() == "bearer" else b""

    def _from_browser(self, handler: RequestHandler, expected: bytes) -> bytes | None:
        """A token in ``?token=`` (kept in a cookie when right) or in that cookie."""
        query = handler.get_query_argument("token", None)
        if query is not None:
            given = query.encode()
            if hmac.compare_digest(given, expected):
                handler.set_cookie(TOKEN_COOKIE, query, httponly=True, samesite="Strict",
                                   secure=self.tls, path="/")
            return given
        cookie = handler.get_cookie(TOKEN_COOKIE)
        return cookie.encode() if cookie is not None else None


def challenge(handler: RequestHandler, status_code: int) -> None:
    """In ``write_error``: a 401 says which scheme to authenticate with."""
    if status_code == 401:
        handler.set_header("WWW-Authenticate", 'Bearer realm="shoal"')


def authorize(handler: RequestHandler, access: Access) -> None:
    """Apply the application's :class:`HttpAuth` (its ``auth`` setting) to a request."""
    auth = handler.settings.get("auth")
    if auth is not None:
        auth.check(handler, access)


@stream_request_body
class LimitedBodyHandler(RequestHandler):
    """A handler whose body arrives in chunks and is refused past the limit
    (the application's ``max_body_bytes`` setting)."""

    @property
    def max_body_bytes(self) -> int:
        return int(self.settings.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES))

    #: What this handler's GET serves, for :class:`HttpAuth`.
    access: Access = "read"

    def prepare(self) -> None:
        authorize(self, self.access)
        self._chunks: list[bytes] = []
        self._received = 0
        declared = self.request.headers.get("Content-Length")
        if declared is not None:
            if not declared.isdigit():
                raise HTTPError(400, f"Content-Length {declared[:40]!r} is not a number")
            if int(declared) > self.max_body_bytes:
                raise HTTPError(413, f"a body of {declared} bytes exceeds the limit of "
                                f"{self.max_body_bytes} bytes")

    def data_received(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received <= self.max_body_bytes:
            self._chunks.append(chunk)
        else:
            self._chunks.clear()  # a chunked body past the limit: refused once complete

    def body(self) -> bytes:
        if self._received > self.max_body_bytes:
            raise HTTPError(413, f"the body exceeds the limit of {self.max_body_bytes} bytes")
        return b"".join(self._chunks)

    async def json_body(self) -> dict[str, Any]:
        """The body as a JSON object (``{}`` when empty); 400 or 413 when it is not one.

        A large body is parsed on a thread, so the event loop keeps serving.
        """
        raw = self.body()
        if not raw:
            return {}
        try:
            if len(raw) > PARSE_ON_THREAD_BYTES:
                body = await asyncio.get_running_loop().run_in_executor(None, json.loads, raw)
            else:
                body = json.loads(raw)
        except RecursionError:
            raise HTTPError(400, "the body is not JSON: nested too deeply") from None
        except ValueError as exc:
            raise HTTPError(400, f"the body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise HTTPError(400, "the body must be a JSON object")
        return body


def http_server(app: Application, ssl_context: ssl.SSLContext | None = None) -> HTTPServer:
    """An HTTPServer for ``app`` with the timeouts above and its ``max_body_bytes``
    (HTTPS when given a context)."""
    limit = int(app.settings.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES))
    # Past the limit a body is discarded as it arrives (and answered 413);
    # tornado itself drops connections whose body is far past it.
    return HTTPServer(app, idle_connection_timeout=HTTP_IDLE_TIMEOUT,
                      body_timeout=HTTP_BODY_TIMEOUT,
                      max_body_size=CHUNKED_SLACK * max(limit, 1024),
                      max_buffer_size=max(limit, 1024 * 1024), ssl_options=ssl_context)
