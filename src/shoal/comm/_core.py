"""The one interface every transport implements, and the address registry.

A :class:`Comm` moves whole messages (see :mod:`shoal.protocol`) between two
peers.  Transports register themselves under a URI scheme (``tcp://``,
``inproc://``); :func:`connect` and :func:`listen` pick one by address.
Whatever goes wrong underneath (a reset socket, a closed stream) surfaces as
one :class:`CommClosedError`, raised where the foreign error enters.
"""

from __future__ import annotations

import abc
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._exceptions import CommClosedError, EncryptionRequiredError
from ..protocol import MAX_MESSAGE_BYTES, PROTOCOL_VERSION, VersionMismatchError
from ._inplace import note_same_host_peer
from ._shared import channel, valid_name

if TYPE_CHECKING:
    from ._security import ConnectionArgs

__all__ = [
    "Comm",
    "CommClosedError",
    "CommLimits",
    "Listener",
    "connect",
    "listen",
    "parse_address",
    "register_transport",
]

DEFAULT_CONNECT_TIMEOUT = 10.0
#: A peer that has not completed the handshake this long after connecting is dropped.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: A peer that stops sending in the middle of a message this long is dropped.
#: (Between messages a connection may stay quiet: clients idle for hours,
#: and a worker's silence is caught by the scheduler's ``worker_ttl``.)
DEFAULT_READ_IDLE_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class CommLimits:
    """What a process accepts from its peers on every connection.

    The defaults can be set per process through the environment
    (``SHOAL_MAX_MESSAGE_BYTES``, ``SHOAL_HANDSHAKE_TIMEOUT``,
    ``SHOAL_READ_IDLE_TIMEOUT``), which child processes inherit; the
    ``shoal scheduler`` and ``shoal worker`` commands take the same as flags.
    """

    max_message_bytes: int = MAX_MESSAGE_BYTES
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    read_idle_timeout: float = DEFAULT_READ_IDLE_TIMEOUT

    def __post_init__(self) -> None:
        if not isinstance(self.max_message_bytes, int) or self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be an integer of at least 1024, "
                             f"got {self.max_message_bytes!r}")
        for name in ("handshake_timeout", "read_idle_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> CommLimits:
        """The defaults, as overridden by ``SHOAL_*`` environment variables."""
        fields = (("max_message_bytes", "SHOAL_MAX_MESSAGE_BYTES", int),
                  ("handshake_timeout", "SHOAL_HANDSHAKE_TIMEOUT", float),
                  ("read_idle_timeout", "SHOAL_READ_IDLE_TIMEOUT", float))
        values: dict[str, Any] = {}
        for name, variable, kind in fields:
            text = environ.get(variable)
            if text:
                try:
                    values[name] = kind(text)
                except ValueError:
                    raise ValueError(f"{variable}={text!r} is not a {kind.__name__}") from None
        return cls(**values)




class Comm(abc.ABC):
    """A message-oriented, bidirectional connection."""

    local_address: str
    peer_address: str
    #: The peer's shared-memory channel, if it offered one in the handshake
    #: (see ``_shared.py``); transports that can use it do.
    peer_channel: str | None = None

    @abc.abstractmethod
    async def read(self) -> Any:
        """The next message; raises CommClosedError when the peer is gone."""

    @abc.abstractmethod
    async def write(self, msg: Any) -> None:
        """Send one message (a batch is one message holding a list)."""

    def write_nowait(self, msg: Any) -> bool:
        """Send ``msg`` now, from this callback, if that needs no waiting.

        False, with nothing sent, when it would have to wait (a write is in
        flight, the peer is slow to read, a frame is large, or the transport
        cannot): then ``write`` sends it.  Saves a small message the turn of
        the event loop that waking a writer task costs.
        """
        return False

    def write_threadsafe(self, msg: Any) -> bool:
        """``write_nowait``, called from a thread other than the loop's.

        For a caller whose message would otherwise wait for the loop to wake
        up (a client's ``submit`` from the user's thread); False, with
        nothing sent, whenever ``write_nowait`` would be, or the comm cannot
        be written from another thread.
        """
        return False

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush and close politely."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Close at once, dropping anything unsent."""

    @abc.abstractmethod
    def closed(self) -> bool: ...

    def __repr__(self) -> str:
        state = "closed" if self.closed() else "open"
        return f"<{type(self).__name__} {self.local_address} -> {self.peer_address} {state}>"


class Listener(abc.ABC):
    """Accepts connections and hands each (after the handshake) to a handler."""

    address: str

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...


CommHandler = Callable[[Comm], Awaitable[None]]
Connector = Callable[[str, float, CommLimits, "ConnectionArgs | None"], Awaitable[Comm]]
ListenerFactory = Callable[[str, CommHandler, CommLimits, "ConnectionArgs | None"], Listener]
#: Schemes whose bytes never leave the process or are encrypted.
ENCRYPTED_SCHEMES = ("tls", "inproc")
_transports: dict[str, tuple[Connector, ListenerFactory]] = {}


def register_transport(scheme: str, connector: Connector, listener: ListenerFactory) -> None:
    _transports[scheme] = (connector, listener)


def parse_address(address: str) -> tuple[str, str]:
    """``"tcp://host:port"`` -> ``("tcp", "host:port")``; no scheme means tcp."""
    if "://" not in address:
        return "tcp", address
    scheme, _, rest = address.partition("://")
    return scheme, rest


def _transport(address: str,
               connection_args: ConnectionArgs | None) -> tuple[Connector, ListenerFactory]:
    scheme, _ = parse_address(address)
    if (connection_args is not None and connection_args.require_encryption
            and scheme not in ENCRYPTED_SCHEMES):
        raise EncryptionRequiredError(
            f"encryption is required (require_encryption=True), so {address!r} is refused: "
            "use its tls:// address")
    try:
        return _transports[scheme]
    except KeyError:
        known = ", ".join(sorted(_transports))
        raise ValueError(f"unknown transport {scheme!r} in {address!r} (known: {known})") from None


def handshake_message() -> dict[str, Any]:
    msg: dict[str, Any] = {
        "op": "handshake",
        "protocol": PROTOCOL_VERSION,
        "python": ".".join(map(str, sys.version_info[:3])),
    }
    own = channel()
    if own is not None:
        msg["shm"] = own.name
    return msg


async def exchange_handshake(comm: Comm, timeout: float) -> dict[str, Any]:
    """Both sides send theirs and check the other's; mismatches are refused."""
    await comm.write(handshake_message())
    try:
        async with asyncio.timeout(timeout):
            theirs = await comm.read()
    except TimeoutError:
        comm.abort()
        raise CommClosedError(f"no handshake from {comm.peer_address} in {timeout}s") from None
    except CommClosedError as exc:
        if type(exc) is CommClosedError and comm.peer_address.startswith("tcp://"):
            raise CommClosedError(
                f"{comm.peer_address} closed the connection before its handshake (a tls:// "
                "server refuses plain connections: use its tls:// address and credentials)"
            ) from None
        raise
    if not isinstance(theirs, dict) or theirs.get("op") != "handshake":
        comm.abort()
        raise VersionMismatchError(
            f"{comm.peer_address} is not a shoal peer (first message: {str(theirs)[:80]!r})"
        )
    if theirs.get("protocol") != PROTOCOL_VERSION:
        comm.abort()
        raise VersionMismatchError(
            f"{comm.peer_address} speaks shoal protocol {theirs.get('protocol')!r}, "
            f"this process speaks {PROTOCOL_VERSION}; upgrade one side so they match"
        )
    comm.peer_channel = valid_name(theirs.get("shm"))
    own = channel() if comm.peer_channel is not None else None
    if own is not None and own.reachable(comm.peer_channel):  # type: ignore[arg-type]
        note_same_host_peer()  # results are worth putting into shared memory (_inplace.py)
    return theirs


async def connect(address: str, timeout: float = DEFAULT_CONNECT_TIMEOUT,
                  limits: CommLimits | None = None,
                  connection_args: ConnectionArgs | None = None) -> Comm:
    """Open a connection to ``address`` and complete the handshake.

    ``connection_args`` (from :meth:`Security.connection_args`) carries the
    TLS context a ``tls://`` address needs and the ``require_encryption`` rule.
    """
    connector, _ = _transport(address, connection_args)
    try:
        async with asyncio.timeout(timeout):
            comm = await connector(address, timeout, limits or CommLimits.from_env(),
                                   connection_args)
    except TimeoutError:
        raise CommClosedError(f"timed out after {timeout}s connecting to {address}") from None
    await exchange_handshake(comm, timeout)
    return comm


def listen(address: str, handler: CommHandler, limits: CommLimits | None = None,
           connection_args: ConnectionArgs | None = None) -> Listener:
    """A listener on ``address`` (port 0 picks a free one); call ``start()``."""
    _, factory = _transport(address, connection_args)
    return factory(address, handler, limits or CommLimits.from_env(), connection_args)
