"""In-process transport: two queues in one event loop.

Messages still go through :func:`dumps`/:func:`loads`, so a test on
``inproc://`` catches a message that could not cross a real socket.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from ..protocol import dumps, loads
from ._core import (
    Comm,
    CommClosedError,
    CommHandler,
    CommLimits,
    Listener,
    exchange_handshake,
    parse_address,
    register_transport,
)
from ._supervise import spawn

_listeners: dict[str, InProcListener] = {}
_ids = itertools.count(1)
_CLOSED = object()


class InProcComm(Comm):
    def __init__(self, local: str, peer: str, inbox: asyncio.Queue, outbox: asyncio.Queue) -> None:
        self.local_address = local
        self.peer_address = peer
        self._inbox = inbox
        self._outbox = outbox
        self._closed = False

    async def read(self) -> Any:
        if self._closed:
            raise CommClosedError(f"connection to {self.peer_address} closed")
        frames = await self._inbox.get()
        if frames is _CLOSED:
            self._closed = True
            raise CommClosedError(f"connection to {self.peer_address} closed by peer")
        return loads(frames)

    async def write(self, msg: Any) -> None:
        if self._closed:
            raise CommClosedError(f"connection to {self.peer_address} closed")
        self._outbox.put_nowait([bytes(f) for f in dumps(msg)])

    async def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self._outbox.put_nowait(_CLOSED)
            self._inbox.put_nowait(_CLOSED)

    def closed(self) -> bool:
        return self._closed


class InProcListener(Listener):
    def __init__(self, address: str, handler: CommHandler,
                 limits: CommLimits | None = None, connection_args: Any = None) -> None:
        _, name = parse_address(address)
        self.limits = limits or CommLimits()
        self.address = f"inproc://{name or 'server'}/{next(_ids)}"
        self.handler = handler
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        _listeners[self.address] = self

    def stop(self) -> None:
        _listeners.pop(self.address, None)

    def accept(self, comm: Comm) -> None:
        spawn(self._serve(comm), f"serve {comm.peer_address}", self._tasks)

    async def _serve(self, comm: Comm) -> None:
        try:
            await exchange_handshake(comm, self.limits.handshake_timeout)
            await self.handler(comm)
        finally:
            comm.abort()


async def inproc_connect(address: str, timeout: float, limits: CommLimits | None = None,
                         connection_args: Any = None) -> Comm:
    listener = _listeners.get(address)
    if listener is None:
        raise CommClosedError(f"nothing listens on {address}")
    a_to_b: asyncio.Queue = asyncio.Queue()
    b_to_a: asyncio.Queue = asyncio.Queue()
    local = f"inproc://client/{next(_ids)}"
    listener.accept(InProcComm(address, local, a_to_b, b_to_a))
    return InProcComm(local, address, b_to_a, a_to_b)


register_transport("inproc", inproc_connect, InProcListener)
