"""Request/response on top of comms: a handler table and a connection pool.

A server reads messages from each connection and dispatches them by
``"op"``.  Ordinary handlers answer each request on the same comm; *stream*
handlers take the comm over for good (the long-lived, batched streams that
workers and clients keep with the scheduler).  Each request is checked
against its op's shape (``protocol._ops``) before its handler runs.  A
handler that raises, an unknown op or a malformed message is answered with
an error naming the field, and the server carries on serving everyone else;
a peer that keeps sending bad messages is disconnected (:class:`Strikes`).
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .._exceptions import RemoteError
from ..protocol import FramingError, MessageError, SerializationError, ToPickle
from ..protocol._ops import check_message
from ..protocol._schema import InvalidMessage, Record
from ._core import Comm, CommClosedError, CommLimits, Listener, connect, listen
from ._security import ConnectionArgs

logger = logging.getLogger(__name__)

#: A peer whose messages are refused this many times on one connection is dropped.
MAX_BAD_MESSAGES = 10

Handler = Callable[..., Any]
StreamHandler = Callable[..., Awaitable[None]]




class Strikes:
    """A peer's refused messages on one connection: the first is logged, and
    after ``limit`` of them the peer is to be disconnected."""

    __slots__ = ("count", "limit", "peer")

    def __init__(self, peer: str, limit: int = MAX_BAD_MESSAGES) -> None:
        self.peer = peer
        self.limit = limit
        self.count = 0

    def refuse(self, exc: Exception) -> bool:
        """Note one bad message; True when the peer has used up its allowance."""
        self.count += 1
        if self.count == 1:
            logger.warning("refused a message from %s (further ones are logged at debug "
                           "level): %s", self.peer, exc)
        else:
            logger.debug("refused a message from %s: %s", self.peer, exc)
        if self.count >= self.limit:
            logger.warning("disconnecting %s after %d refused messages", self.peer, self.count)
            return True
        return False


class RPCServer:
    """Serves ``handlers`` (answered) and ``stream_handlers`` (take the comm).

    ``schemas`` gives the shape of each op's message; ops it does not list
    are refused.  Without it only the handlers' signatures are checked.
    """

    def __init__(
        self, handlers: dict[str, Handler], stream_handlers: dict[str, StreamHandler],
        schemas: Mapping[str, Record] | None = None, limits: CommLimits | None = None,
        connection_args: ConnectionArgs | None = None,
    ) -> None:
        self.handlers = handlers
        self.connection_args = connection_args
        self.stream_handlers = stream_handlers
        self.schemas = schemas
        self.limits = limits
        self.listeners: list[Listener] = []
        self._comms: set[Comm] = set()
        self.bad_messages = 0

    async def listen(self, address: str) -> str:
        listener = listen(address, self.handle_comm, self.limits, self.connection_args)
        await listener.start()
        self.listeners.append(listener)
        return listener.address

    def _check(self, msg: Any) -> tuple[str, dict[str, Any]]:
        if self.schemas is not None:
            return check_message(self.schemas, msg)
        if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
            raise InvalidMessage("op", "a message must be a map with a string 'op'")
        fields = dict(msg)
        return fields.pop("op"), fields

    async def handle_comm(self, comm: Comm) -> None:
        self._comms.add(comm)
        strikes = Strikes(comm.peer_address)
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
                reply = not isinstance(msg, dict) or msg.get("reply", True) is not False
                try:
                    op, fields = self._check(msg)
                except InvalidMessage as exc:
                    self.bad_messages += 1
                    await _reply(comm, _error(f"refused: {exc}", field=exc.field))
                    if strikes.refuse(exc):
                        comm.abort()
                        return
                    continue
                if op in self.stream_handlers:
                    self._comms.discard(comm)
                    await self._run_stream(comm, op, fields)
                    return
                await self._answer(comm, op, fields, reply)
        finally:
            self._comms.discard(comm)

    async def _run_stream(self, comm: Comm, op: str, fields: dict[str, Any]) -> None:
        """A stream handler owns the comm until it returns; if it fails the peer is told."""
        try:
            await self.stream_handlers[op](comm, **fields)
        except (CommClosedError, asyncio.CancelledError):
            raise
        except Exception as exc:  # any failure: answer, close, keep serving
            logger.exception("%r from %s failed", op, comm.peer_address)
            await _reply(comm, _error(f"{op!r} failed: {exc!r}", exc))
        finally:
            comm.abort()

    async def _answer(self, comm: Comm, op: str, msg: dict[str, Any], reply: bool) -> None:
        handler = self.handlers.get(op)
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


def _error(message: str, exc: BaseException | None = None,
           field: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"status": "error", "message": message}
    if field is not None:
        out["field"] = field
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

    def __init__(self, limit_per_address: int = 8, timeout: float = 10.0,
                 connection_args: ConnectionArgs | None = None) -> None:
        self.timeout = timeout
        #: The TLS contexts (and encryption rule) new connections are made with.
        self.connection_args = connection_args
        self.limit = limit_per_address
        self._idle: dict[str, list[Comm]] = defaultdict(list)
        self._closed = False

    async def acquire(self, address: str) -> Comm:
        idle = self._idle[address]
        while idle:
            comm = idle.pop()
            if not comm.closed():
                return comm
        return await connect(address, self.timeout, connection_args=self.connection_args)

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


__all__ = ["ConnectionPool", "RPCServer", "RemoteError", "Strikes", "ToPickle",
           "raise_for_error"]
