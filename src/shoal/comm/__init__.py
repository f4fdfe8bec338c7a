"""Transports behind one ``Comm`` interface, batched streams and RPC.

Importing this package registers the ``tcp://``, ``tls://`` and ``inproc://``
transports.
"""

from . import _inproc, _tcp, _tls  # noqa: F401  (register transports)
from ._batched import BatchedSend
from ._core import Comm, CommClosedError, CommLimits, Listener, connect, listen, parse_address
from ._rpc import ConnectionPool, RemoteError, RPCServer, Strikes, raise_for_error
from ._security import ConnectionArgs, Security
from ._supervise import spawn, wait_event
from ._tcp import split_host_port

__all__ = [
    "BatchedSend",
    "Comm",
    "CommClosedError",
    "CommLimits",
    "ConnectionArgs",
    "ConnectionPool",
    "Listener",
    "RPCServer",
    "RemoteError",
    "Security",
    "Strikes",
    "connect",
    "listen",
    "parse_address",
    "raise_for_error",
    "spawn",
    "split_host_port",
    "wait_event",
]
