"""Transports behind one ``Comm`` interface, batched streams and RPC.

Importing this package registers the ``tcp://`` and ``inproc://`` transports.
"""

from . import _inproc, _tcp  # noqa: F401  (register transports)
from ._batched import BatchedSend
from ._core import Comm, CommClosedError, CommLimits, Listener, connect, listen, parse_address
from ._rpc import ConnectionPool, RemoteError, RPCServer, Strikes, raise_for_error
from ._supervise import spawn
from ._tcp import split_host_port

__all__ = [
    "BatchedSend",
    "Comm",
    "CommClosedError",
    "CommLimits",
    "ConnectionPool",
    "Listener",
    "RPCServer",
    "RemoteError",
    "Strikes",
    "connect",
    "listen",
    "parse_address",
    "raise_for_error",
    "spawn",
    "split_host_port",
]
