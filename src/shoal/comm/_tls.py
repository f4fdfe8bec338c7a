"""``tls://``: the TCP transport inside the standard library's TLS.

The comm is the TCP one (:mod:`._tcp`) with asyncio's TLS layer between it
and the socket, so framing, buffering and limits are the same; only the two
things that would bypass the encryption change: large frames are not sent
straight from their memory to the socket, and asyncio's own write buffer is
used as it is.

A listener accepts plain TCP connections and upgrades each with
``loop.start_tls`` itself, rather than handing the context to
``create_server``: that way a handshake that fails (no certificate, one
from another CA, an expired one, a peer speaking plain ``tcp://``, or none
within the handshake timeout) reaches us, is logged once with its reason,
and the listener goes on serving everyone else.  On the connecting side the
same failures raise :class:`TLSError` with a message saying which it was; in
TLS 1.3 a server's refusal of the *client's* certificate arrives after the
client's handshake has finished, so it surfaces on the first read instead.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from .._exceptions import TLSError
from ..protocol._framing import HANDSHAKE_MAX_BYTES
from ._core import (
    DEFAULT_CONNECT_TIMEOUT,
    Comm,
    CommClosedError,
    CommHandler,
    CommLimits,
    register_transport,
)
from ._security import ConnectionArgs
from ._supervise import spawn
from ._tcp import TCPComm, TCPListener, _Protocol, split_host_port

logger = logging.getLogger(__name__)

#: Large frames enter the TLS layer this much at a time (see TLSComm._send_direct).
TLS_WRITE_SLICE_BYTES = 256 * 1024
#: Distinct (peer host, reason) refusals remembered to log each only once.
MAX_REMEMBERED_REFUSALS = 1024

#: OpenSSL's reason codes, said in words.
_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "it presented no certificate",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires a certificate and this process "
                                         "has none to present",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust this process's certificate (signed by "
                              "another CA)",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the peer says this process's certificate has expired",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer refused this process's certificate",
    "WRONG_VERSION_NUMBER": "it does not speak TLS (a plain tcp:// peer?)",
    "HTTP_REQUEST": "it sent a plain HTTP request, not TLS",
    "UNKNOWN_PROTOCOL": "it does not speak TLS (a plain tcp:// peer?)",
    "RECORD_LAYER_FAILURE": "it does not speak TLS (a plain tcp:// peer?)",
    "UNSUPPORTED_PROTOCOL": "it offered a TLS version below this process's minimum",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the peer refused this TLS version",
    "UNEXPECTED_EOF_WHILE_READING": "the peer closed the connection during the TLS handshake",
}
#: What a server can say about a client that hung up mid-handshake, and the reverse.
_HUNG_UP = {
    "server": "the client closed the connection during the TLS handshake (it may not trust "
              "this server's certificate)",
    "client": "the server closed the connection during the TLS handshake (a plain tcp:// "
              "server, or one that refused this process's certificate?)",
}
#: asyncio drops the TLS alert a server sends when it refuses a client's
#: certificate, so a TLS 1.3 client only sees the connection close after its
#: own handshake finished; this says what that almost always means.
_CLOSED_AFTER_HANDSHAKE = (
    "the server closed the connection right after the TLS handshake: it refused this "
    "process's certificate (none, one signed by another CA, or an expired one)")


def describe(exc: BaseException, side: str = "client") -> str:
    """Why a TLS handshake failed, in words (``side`` is the one that saw it fail)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or str(exc)
        if "issuer" in detail or "self-signed" in detail or "self signed" in detail:
            detail += " (signed by another CA)"
        whose = "the server's" if side == "client" else "the client's"
        return f"{whose} certificate was refused: {detail}"
    if isinstance(exc, ssl.SSLError):
        if exc.reason == "UNEXPECTED_EOF_WHILE_READING":
            return _HUNG_UP[side]
        return _REASONS.get(exc.reason or "", f"{exc.reason or exc}")
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)) or (
            isinstance(exc, OSError) and not str(exc)):
        return _HUNG_UP[side]
    return str(exc) or type(exc).__name__


class _TLSProtocol(_Protocol):
    """Keeps the error the TLS layer closed the connection with, to report it."""

    lost: Exception | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc
        super().connection_lost(exc)


class TLSComm(TCPComm):
    scheme = "tls"
    protocol: _TLSProtocol

    def _limit_write_buffer(self) -> None:
        """asyncio's TLS layer keeps its own buffer: its default limits apply."""

    async def read(self) -> Any:
        try:
            return await self.protocol.next_message(self.peer_address)
        except CommClosedError:
            lost = self.protocol.lost
            if isinstance(lost, ssl.SSLError):
                raise TLSError(f"{self.peer_address} ended the TLS connection: "
                               f"{describe(lost)}") from None
            if self.protocol.max_message == HANDSHAKE_MAX_BYTES:  # nothing received yet
                raise TLSError(f"{self.peer_address}: {_CLOSED_AFTER_HANDSHAKE}") from None
            raise

    def write_threadsafe(self, msg: Any) -> bool:
        """Never: the socket must see only the TLS layer's ciphertext, made on the loop."""
        return False

    async def _send_direct(self, chunk: Any) -> None:
        """Through the TLS layer like every other frame (the socket must see only
        ciphertext), in slices: asyncio would otherwise encrypt a 32 MiB frame
        into one new 32 MiB buffer, copy it out, and copy what the socket does
        not take at once into a third; slices reuse warm memory instead."""
        view = memoryview(chunk)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        for start in range(0, len(view), TLS_WRITE_SLICE_BYTES):
            self.transport.write(view[start:start + TLS_WRITE_SLICE_BYTES])
            await self.protocol.drained()


async def tls_connect(address: str, timeout: float = DEFAULT_CONNECT_TIMEOUT,
                      limits: CommLimits | None = None,
                      connection_args: ConnectionArgs | None = None) -> Comm:
    context = connection_args.client_context if connection_args is not None else None
    if context is None:
        raise TLSError(f"{address} is a tls:// address but this process has no TLS "
                       "credentials: give security=Security(...) or set SHOAL_TLS_CA_FILE, "
                       "SHOAL_TLS_CERT and SHOAL_TLS_KEY")
    host, port = split_host_port(address)
    chosen = limits or CommLimits.from_env()
    loop = asyncio.get_running_loop()
    try:
        _, protocol = await loop.create_connection(
            lambda: _TLSProtocol(chosen), host, port, ssl=context, server_hostname=host,
            ssl_handshake_timeout=timeout)
    except ssl.SSLError as exc:
        raise TLSError(f"TLS handshake with {address} failed: {describe(exc)}") from None
    except (ConnectionResetError, BrokenPipeError) as exc:
        raise TLSError(f"TLS handshake with {address} failed: {describe(exc)}") from None
    except OSError as exc:
        raise CommClosedError(f"cannot connect to {address}: {exc}") from exc
    return TLSComm(protocol)


class _AwaitingUpgrade(asyncio.Protocol):
    """A connection accepted in plain TCP, not read from until TLS takes it over."""

    def __init__(self, listener: TLSListener) -> None:
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.pause_reading()  # type: ignore[attr-defined]  # the ClientHello is for TLS
        self.listener.upgrade(transport)  # type: ignore[arg-type]


class TLSListener(TCPListener):
    comm_class = TLSComm

    def __init__(self, address: str, handler: CommHandler, limits: CommLimits | None = None,
                 connection_args: ConnectionArgs | None = None) -> None:
        super().__init__(address, handler, limits, connection_args)
        context = connection_args.server_context if connection_args is not None else None
        if context is None:
            raise ValueError(f"listening on {address} needs a CA, a certificate and its key: "
                             "give security=Security(...) or set SHOAL_TLS_CA_FILE, "
                             "SHOAL_TLS_CERT and SHOAL_TLS_KEY")
        self.context: ssl.SSLContext = context
        #: Connections refused during the TLS handshake (see :meth:`_refused`).
        self.refused = 0
        self._reasons_logged: set[tuple[str, str]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _AwaitingUpgrade(self), self.host,
                                               self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        self.address = f"tls://{self.host}:{self.port}"

    def upgrade(self, transport: asyncio.Transport) -> None:
        spawn(self._upgrade(transport), "TLS handshake", self._tasks)

    async def _upgrade(self, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        protocol = self._protocol()
        loop = asyncio.get_running_loop()
        try:
            tls_transport = await loop.start_tls(
                transport, protocol, self.context, server_side=True,
                ssl_handshake_timeout=self.limits.handshake_timeout)
        except (OSError, TimeoutError, RuntimeError) as exc:  # ssl.SSLError is an OSError
            transport.abort()
            self._refused(peer, exc)
            return
        if tls_transport is None:  # closed as the handshake finished
            return
        protocol.connection_made(tls_transport)

    def _protocol(self) -> _TLSProtocol:
        protocol = _TLSProtocol(self.limits)
        protocol.on_connect = self._accepted
        return protocol

    def _refused(self, peer: Any, exc: BaseException) -> None:
        """One warning per peer host and reason; repeats at debug level."""
        self.refused += 1
        host = str(peer[0]) if peer else "?"
        reason = describe(exc, "server")
        if isinstance(exc, ConnectionAbortedError) and "longer" in str(exc):
            reason = f"no TLS handshake within {self.limits.handshake_timeout}s"
        key = (host, reason)
        if key in self._reasons_logged:
            logger.debug("refused a TLS connection from %s: %s", host, reason)
            return
        if len(self._reasons_logged) < MAX_REMEMBERED_REFUSALS:
            self._reasons_logged.add(key)
        logger.warning("refused a TLS connection from %s: %s (repeats are logged at debug "
                       "level)", host, reason)


register_transport("tls", tls_connect, TLSListener)
