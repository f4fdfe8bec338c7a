"""Plain ``tcp://`` connections between processes of one host, over Unix sockets.

Over loopback a TCP message costs both ends the kernel's whole TCP path: the
sender's ``send`` runs the receiver's side of the protocol too, then wakes
it.  A Unix stream socket only queues the bytes and wakes the peer.
Measured here with asyncio echoes between two processes, a round trip took
115 us over loopback TCP and 90 us over a Unix socket; a task's round trip
is four such messages.

So a ``tcp://`` listener also listens on an abstract Unix socket named after
the host and port it listens on (:func:`name_for`), and a connection to a
``tcp://`` address first tries the names that address can be reached under
(:func:`names_to_try`): the name of that very host and port, and, for a
loopback address, the names of a listener on every interface at that port
(which loopback reaches too).  Abstract names belong to one kernel and one
network namespace, like the loopback addresses they stand for, so a name
found is the process the TCP address would have reached in this namespace;
a name not found (another host, another pod, a listener that could not bind
its name) means the connection goes over TCP, as before.  Only a listener
of the same user is accepted (``SO_PEERCRED``).  The bytes on the socket are
exactly those of the TCP connection, handshake and all; ``tls://`` never
takes this path.

``SHOAL_UNIX_SOCKETS=0`` (inherited by the processes a cluster starts) turns
it off, as between hosts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ENV", "connect_locally", "local_sockets_enabled", "name_for", "names_to_try",
           "peer_pid", "serve_locally"]

logger = logging.getLogger(__name__)

#: The environment variable that turns the path off ("0", "false", "no", "off").
ENV = "SHOAL_UNIX_SOCKETS"
_PREFIX = "shoal-tcp-"
#: What a listener on every interface is named after (see name_for).
_WILDCARDS = ("0.0.0.0", "::")
_UCRED = struct.Struct("3i")


def local_sockets_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``tcp://`` listeners offer, and connections try, Unix sockets."""
    if not sys.platform.startswith("linux"):
        return False  # abstract socket names are Linux's
    return environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def name_for(host: str, port: int) -> str:
    """The abstract socket name of a ``tcp://`` listener on ``host:port``."""
    return f"\0{_PREFIX}{host.strip('[]') or '0.0.0.0'}-{port}"


def names_to_try(host: str, port: int) -> list[str]:
    """The names under which ``host:port`` may be listened for on this host."""
    names = [name_for(host, port)]
    if _is_loopback(host):  # loopback reaches a listener on every interface too
        names += [name_for(w, port) for w in _WILDCARDS]
    return names


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")


async def serve_locally(factory: Callable[[], asyncio.BaseProtocol], host: str,
                        port: int) -> asyncio.AbstractServer | None:
    """Also listen for ``host:port`` on its Unix socket name; None if the name is
    taken (another listener of that host and port) or the path is off."""
    if not local_sockets_enabled():
        return None
    try:
        return await asyncio.get_running_loop().create_unix_server(factory, name_for(host, port))
    except OSError as exc:
        logger.debug("no Unix socket beside tcp://%s:%d: %s", host, port, exc)
        return None


async def connect_locally(factory: Callable[[], Any], host: str,
                          port: int) -> tuple[asyncio.BaseTransport, Any] | None:
    """A connection to the listener of ``host:port`` on this host through its
    Unix socket, or None (no such listener here, or not one of ours)."""
    if not local_sockets_enabled():
        return None
    loop = asyncio.get_running_loop()
    for name in names_to_try(host, port):
        try:
            transport, protocol = await loop.create_unix_connection(factory, name)
        except OSError:
            continue  # nothing listens under this name: the next, or TCP
        creds = _credentials(transport.get_extra_info("socket"))
        uid = creds[1] if creds is not None else None
        if uid == os.getuid():
            return transport, protocol
        logger.warning("the Unix socket for tcp://%s:%d belongs to uid %s, not to this "
                       "user: connecting over TCP", host, port, uid)
        transport.abort()
    return None


def peer_pid(sock: socket.socket | None) -> int | None:
    """The process at the other end of a Unix socket."""
    creds = _credentials(sock)
    return creds[0] if creds is not None else None


def _credentials(sock: socket.socket | None) -> tuple[int, int, int] | None:
    """The peer's pid, uid and gid (``SO_PEERCRED``); None if they cannot be read."""
    if sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    return _UCRED.unpack(raw)  # type: ignore[return-value]
