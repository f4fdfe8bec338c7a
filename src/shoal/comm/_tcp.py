"""TCP transport on asyncio's buffered protocols.

Bytes arrive straight into our own buffers (``asyncio.BufferedProtocol``):
small messages into a reusable staging area, several per system call; a large
message (a 32 MiB array) into a buffer of exactly its size, allocated once
its header is read, so it is copied once, from the socket to its final place.
An earlier version sat on tornado's IOStream; profiling showed its per-message
bookkeeping (re-registering the socket with epoll on every read and write)
costing two to three times the round trip of this one, so the data path uses
asyncio directly while tornado serves HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import deque
from typing import Any

from ..protocol import FramingError, MessageError, dumps, loads, pack_frames_prelude
from ..protocol._framing import (
    MAX_MESSAGE_BYTES,
    TOTAL_HEADER_BYTES,
    unpack_frame_lengths,
    unpack_total,
)
from ._core import (
    DEFAULT_CONNECT_TIMEOUT,
    Comm,
    CommClosedError,
    CommHandler,
    Listener,
    exchange_handshake,
    parse_address,
    register_transport,
)

logger = logging.getLogger(__name__)

#: Messages up to this size are parsed out of the staging buffer.
STAGING_BYTES = 256 * 1024
#: Frames this large are written without being joined to their neighbours.
LARGE_FRAME_BYTES = 64 * 1024
#: ...and this large, straight from their memory (see TCPComm._send_direct).
DIRECT_SEND_BYTES = 1024 * 1024


def split_host_port(address: str) -> tuple[str, int]:
    _, hostport = parse_address(address)
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r} has no port (expected tcp://host:port)")
    return host.strip("[]") or "0.0.0.0", int(port)


def _address_of(sockname: Any) -> str:
    if not sockname:  # the socket was reset as it opened: asyncio has no address for it
        raise CommClosedError("the connection closed as it opened")
    host, port = sockname[0], sockname[1]
    if ":" in host:
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


class _Protocol(asyncio.BufferedProtocol):
    """Frames incoming bytes into messages; holds them until ``read``."""

    def __init__(self, max_message: int = MAX_MESSAGE_BYTES) -> None:
        self.max_message = max_message
        self.transport: asyncio.Transport | None = None
        self._staging = bytearray(STAGING_BYTES)
        self._staged = 0
        self._big: bytearray | None = None
        self._big_filled = 0
        self._inbox: deque[Any] = deque()
        self._waiter: asyncio.Future | None = None
        self._drain: asyncio.Future | None = None
        self.closed = False
        self.on_connect: Any = None

    # ---------------------------------------------------------- asyncio calls

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.on_connect is not None:
            self.on_connect(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._big is not None:
            return memoryview(self._big)[self._big_filled:]
        return memoryview(self._staging)[self._staged:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._big is not None:
            self._big_filled += nbytes
            if self._big_filled == len(self._big):
                body, self._big = self._big, None
                self._deliver(memoryview(body))
            return
        self._staged += nbytes
        try:
            self._parse_staging()
        except FramingError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(CommClosedError("connection closed while writing"))

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # ---------------------------------------------------------- framing

    def _parse_staging(self) -> None:
        view = memoryview(self._staging)
        pos, end = 0, self._staged
        try:
            while end - pos >= TOTAL_HEADER_BYTES:
                total = unpack_total(view[pos:pos + TOTAL_HEADER_BYTES], self.max_message)
                start = pos + TOTAL_HEADER_BYTES
                if TOTAL_HEADER_BYTES + total > STAGING_BYTES:
                    self._start_big(view[start:end], total)
                    pos = end
                    break
                if end - start < total:
                    break
                self._deliver(memoryview(bytes(view[start:start + total])))
                pos = start + total
            if pos:
                rest = bytes(view[pos:end])
                self._staging[: len(rest)] = rest
                self._staged = len(rest)
        finally:
            view.release()

    def _start_big(self, head: memoryview, total: int) -> None:
        body = bytearray(total)
        body[: len(head)] = head
        self._big, self._big_filled = body, len(head)
        if self._big_filled == total:
            self._big = None
            self._deliver(memoryview(body))

    def _deliver(self, body: memoryview) -> None:
        try:
            lengths, offset = unpack_frame_lengths(body)
            frames = []
            for length in lengths:
                frames.append(body[offset:offset + length])
                offset += length
            self._inbox.append(loads(frames))
        except (FramingError, MessageError) as exc:
            self._fail(exc)
            return
        self._wake()

    def _fail(self, exc: Exception) -> None:
        """Bad bytes: stop reading; the reader gets the error and closes the comm."""
        self._inbox.append(exc)
        self._wake()
        self._staged = 0
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---------------------------------------------------------- for the comm

    async def next_message(self, peer: str) -> Any:
        while not self._inbox:
            if self.closed:
                raise CommClosedError(f"connection to {peer} closed")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        item = self._inbox.popleft()
        if isinstance(item, Exception):
            if self.transport is not None:
                self.transport.abort()
            raise item
        return item

    async def drained(self) -> None:
        if self._drain is not None and not self._drain.done():
            await self._drain


class TCPComm(Comm):
    def __init__(self, protocol: _Protocol) -> None:
        self.protocol = protocol
        transport = protocol.transport
        assert transport is not None
        self.transport = transport
        # Writes wait until asyncio's buffer is empty (see _send_direct).
        transport.set_write_buffer_limits(high=0)
        self.local_address = _address_of(transport.get_extra_info("sockname"))
        self.peer_address = _address_of(transport.get_extra_info("peername"))
        self._write_lock = asyncio.Lock()
        self._direct: socket.socket | None = None

    async def read(self) -> Any:
        return await self.protocol.next_message(self.peer_address)

    async def write(self, msg: Any) -> None:
        frames = dumps(msg)
        async with self._write_lock:
            if self.closed():
                raise CommClosedError(f"connection to {self.peer_address} closed")
            for chunk in _coalesce(pack_frames_prelude(frames), frames):
                if len(chunk) >= DIRECT_SEND_BYTES:
                    await self.protocol.drained()
                    await self._send_direct(chunk)
                else:
                    self.transport.write(chunk)
            await self.protocol.drained()

    async def _send_direct(self, chunk: Any) -> None:
        """Send a large frame from its own memory, without asyncio's buffer.

        Python 3.11's transport copies whatever the kernel does not take at
        once into a bytearray: for a 32 MiB array that copy costs more than
        the transfer.  The frame goes out through a duplicate of the socket's
        descriptor instead, once the transport's own buffer is empty.
        """
        if self._direct is None:
            fd = self.transport.get_extra_info("socket").fileno()
            self._direct = socket.socket(fileno=os.dup(fd))
            self._direct.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_sendall(self._direct, chunk)
        except OSError as exc:
            self.abort()
            raise CommClosedError(f"connection to {self.peer_address} broke: {exc}") from exc

    async def close(self) -> None:
        self._close_direct()
        self.transport.close()

    def abort(self) -> None:
        self._close_direct()
        self.transport.abort()

    def _close_direct(self) -> None:
        if self._direct is not None:
            self._direct.close()
            self._direct = None

    def closed(self) -> bool:
        return self.protocol.closed or self.transport.is_closing()


def _coalesce(prelude: bytes, frames: list) -> list:
    """Small frames joined into few writes; large ones passed on without a copy."""
    chunks: list = []
    small: list = [prelude]
    for frame in frames:
        if len(frame) >= LARGE_FRAME_BYTES:
            chunks.append(b"".join(small))
            chunks.append(frame)
            small = []
        elif len(frame):
            small.append(frame)
    if small:
        chunks.append(b"".join(small))
    return chunks


async def tcp_connect(address: str, timeout: float = DEFAULT_CONNECT_TIMEOUT) -> Comm:
    host, port = split_host_port(address)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            _, protocol = await loop.create_connection(_Protocol, host, port)
    except TimeoutError:
        raise CommClosedError(f"timed out after {timeout}s connecting to {address}") from None
    except OSError as exc:
        raise CommClosedError(f"cannot connect to {address}: {exc}") from exc
    return TCPComm(protocol)


class TCPListener(Listener):
    def __init__(self, address: str, handler: CommHandler) -> None:
        self.host, self.port = split_host_port(address)
        self.handler = handler
        self.address = address
        self.server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._protocol, self.host, self.port,
                                               reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        self.address = f"tcp://{self.host}:{self.port}"

    def _protocol(self) -> _Protocol:
        protocol = _Protocol()
        protocol.on_connect = self._accepted
        return protocol

    def _accepted(self, protocol: _Protocol) -> None:
        try:
            comm = TCPComm(protocol)
        except CommClosedError:
            if protocol.transport is not None:
                protocol.transport.abort()
            return  # gone before it could be served
        task = asyncio.get_running_loop().create_task(self._serve(comm))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, comm: TCPComm) -> None:
        try:
            await exchange_handshake(comm, DEFAULT_CONNECT_TIMEOUT)
        except (ConnectionError, FramingError, MessageError) as exc:
            logger.warning("refused connection from %s: %s", comm.peer_address, exc)
            comm.abort()
            return
        await self.handler(comm)

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._tasks):
            task.cancel()


register_transport("tcp", tcp_connect, TCPListener)
