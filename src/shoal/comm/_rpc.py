"""Request/response on top of comms: a handler table and a connection pool.

A server reads messages from each connection and dispatches them by
``"op"``.  Ordinary handlers answer each request on the same comm; *stream*
handlers take the comm over for good (the long-lived, batched streams that
workers and clients keep with the scheduler).  A handler that raises, an
unknown op or a malformed message is answered with an error and the server
carries on serving everyone else.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from .._exceptions import RemoteError
from ..protocol import FramingError, MessageError, SerializationError, ToPickle
from ._core import Comm, CommClosedError, Listener, connect, listen

logger = logging.getLogger(__name__)

Handler = Callable[..., Any]
StreamHandler = Callable[..., Awaitable[None]]




class RPCServer:
    """Serves ``handlers`` (answered) and ``stream_handlers`` (take the comm)."""

    def __init__(
        self, handlers: dict[str, Handler], stream_handlers: dict[str, StreamHandler]
    ) -> None:
        self.handlers = handlers
        self.stream_handlers = stream_handlers
        self.listeners: list[Listener] = []
        self._comms: set[Comm] = set()
        self.bad_messages = 0

    async def listen(self, address: str) -> str:
        listener = listen(address, self.handle_comm)
        await listener.start()
        self.listeners.append(listener)
        return listener.address

    async def handle_comm(self, comm: Comm) -> None:
        self._comms.add(comm)
        try:
            while not comm.closed():
                try:
                    msg = await comm.read()
                except CommClosedError:
                    return
                except (FramingError, MessageError) as exc:
                    self.bad_messages += 1
                    logger.warning("closing %s after a malformed message: %s", comm.peer_address, exc)
                    comm.abort()
                    return
                if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
                    self.bad_messages += 1
                    await _reply(comm, _error("a message must be a map with a string 'op'"))
                    continue
                op = msg.pop("op")
                if op in self.stream_handlers:
                    self._comms.discard(comm)
                    await self.stream_handlers[op](comm, **msg)
                    return
                await self._answer(comm, op, msg)
        finally:
            self._comms.discard(comm)

    async def _answer(self, comm: Comm, op: str, msg: dict[str, Any]) -> None:
        handler = self.handlers.get(op)
        reply = msg.pop("reply", True)
        if handler is None:
            self.bad_messages += 1
            result: Any = _error(f"unknown operation {op!r}")
        else:
            try:
                result = handler(**msg)
                if asyncio.iscoroutine(result):
                    result = await result
            except TypeError as exc:
                result = _error(f"bad arguments for {op!r}: {exc}", exc)
            except (CommClosedError, asyncio.CancelledError):
                raise
            except Exception as exc:  # a handler's failure goes back to the caller
                logger.exception("handler %r failed", op)
                result = _error(f"{op!r} failed: {exc!r}", exc)
        if reply:
            await _reply(comm, result)

    def stop(self) -> None:
        for listener in self.listeners:
            listener.stop()
        for comm in list(self._comms):
            comm.abort()


def _error(message: str, exc: BaseException | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"status": "error", "message": message}
    if exc is not None:
        out["traceback"] = "".join(traceback.format_exception(exc))
    return out


async def _reply(comm: Comm, result: Any) -> None:
    try:
        await comm.write(result)
    except SerializationError as exc:
        await comm.write(_error(f"cannot send the answer: {exc}"))
    except CommClosedError:
        pass


def raise_for_error(answer: Any) -> Any:
    if isinstance(answer, dict) and answer.get("status") == "error":
        raise RemoteError(answer.get("message", "remote error"))
    return answer


class ConnectionPool:
    """Reuses idle comms per address for request/response calls."""

    def __init__(self, limit_per_address: int = 8, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.limit = limit_per_address
        self._idle: dict[str, list[Comm]] = defaultdict(list)
        self._closed = False

    async def acquire(self, address: str) -> Comm:
        idle = self._idle[address]
        while idle:
            comm = idle.pop()
            if not comm.closed():
                return comm
        return await connect(address, self.timeout)

    def release(self, address: str, comm: Comm) -> None:
        if self._closed or comm.closed() or len(self._idle[address]) >= self.limit:
            comm.abort()
        else:
            self._idle[address].append(comm)

    async def request(self, address: str, op: str, **kwargs: Any) -> Any:
        """Send ``{"op": op, **kwargs}`` and return the answer."""
        comm = await self.acquire(address)
        try:
            await comm.write({"op": op, **kwargs})
            answer = await comm.read()
        except BaseException:
            comm.abort()
            raise
        self.release(address, comm)
        return raise_for_error(answer)

    def remove(self, address: str) -> None:
        for comm in self._idle.pop(address, []):
            comm.abort()

    def close(self) -> None:
        self._closed = True
        for comms in self._idle.values():
            for comm in comms:
                comm.abort()
        self._idle.clear()


__all__ = ["ConnectionPool", "RPCServer", "RemoteError", "ToPickle", "raise_for_error"]
