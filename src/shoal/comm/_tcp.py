"""TCP transport on tornado's IOStream.

Small messages are read with one ``read_bytes``; large ones are read
straight into a preallocated buffer so a 32 MiB array is copied once, from
the socket into its final place.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient
from tornado.tcpserver import TCPServer

from ..protocol import FramingError, MessageError, dumps, loads, pack_frames_prelude
from ..protocol._framing import MAX_MESSAGE_BYTES, TOTAL_HEADER_BYTES, unpack_frame_lengths, unpack_total
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

_READ_INTO_MIN = 64 * 1024
_BUFFER_LIMIT = MAX_MESSAGE_BYTES + 1024


def split_host_port(address: str) -> tuple[str, int]:
    _, hostport = parse_address(address)
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r} has no port (expected tcp://host:port)")
    return host.strip("[]") or "0.0.0.0", int(port)


class TCPComm(Comm):
    def __init__(self, stream: IOStream, local: str, peer: str, max_message: int) -> None:
        self.stream = stream
        self.local_address = local
        self.peer_address = peer
        self.max_message = max_message
        stream.set_nodelay(True)

    async def read(self) -> Any:
        stream = self.stream
        try:
            total = unpack_total(await stream.read_bytes(TOTAL_HEADER_BYTES), self.max_message)
            if total < _READ_INTO_MIN:
                body: bytes | bytearray = await stream.read_bytes(total)
            else:
                body = bytearray(total)
                await stream.read_into(body)
        except StreamClosedError as exc:
            raise CommClosedError(f"connection to {self.peer_address} closed") from exc
        except FramingError:
            self.abort()
            raise
        view = memoryview(body)
        lengths, offset = unpack_frame_lengths(view)
        frames = []
        for length in lengths:
            frames.append(view[offset : offset + length])
            offset += length
        if frames and len(frames[0]) < _READ_INTO_MIN:
            frames[0] = bytes(frames[0])
        return loads(frames)

    async def write(self, msg: Any) -> None:
        frames = dumps(msg)
        stream = self.stream
        if stream.closed():
            raise CommClosedError(f"connection to {self.peer_address} closed")
        try:
            future = None
            for chunk in _coalesce(pack_frames_prelude(frames), frames):
                future = stream.write(chunk)
            await future  # type: ignore[misc]
        except StreamClosedError as exc:
            raise CommClosedError(f"connection to {self.peer_address} closed") from exc

    async def close(self) -> None:
        self.stream.close()

    def abort(self) -> None:
        self.stream.close()

    def closed(self) -> bool:
        return self.stream.closed()


def _coalesce(prelude: bytes, frames: list) -> list:
    """Small frames joined into few writes; large ones passed on without a copy."""
    chunks: list = []
    small: list = [prelude]
    for frame in frames:
        if len(frame) >= _READ_INTO_MIN:
            chunks.append(b"".join(small))
            chunks.append(frame)
            small = []
        elif len(frame):
            small.append(frame)
    if small:
        chunks.append(b"".join(small))
    return chunks


def _address_of(sockname: tuple[Any, ...], scheme: str) -> str:
    host, port = sockname[0], sockname[1]
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


async def tcp_connect(address: str, timeout: float = DEFAULT_CONNECT_TIMEOUT) -> Comm:
    scheme, _ = parse_address(address)
    host, port = split_host_port(address)
    try:
        stream = await TCPClient().connect(
            host, port, max_buffer_size=_BUFFER_LIMIT, timeout=timeout
        )
    except (StreamClosedError, OSError) as exc:
        raise CommClosedError(f"cannot connect to {address}: {exc}") from exc
    local = _address_of(stream.socket.getsockname(), scheme)
    return TCPComm(stream, local, f"{scheme}://{host}:{port}", MAX_MESSAGE_BYTES)


class _Server(TCPServer):
    def __init__(self, listener: TCPListener, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.listener = listener

    async def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        await self.listener.accept(stream, address)


class TCPListener(Listener):
    def __init__(self, address: str, handler: CommHandler) -> None:
        self.scheme, _ = parse_address(address)
        self.host, self.port = split_host_port(address)
        self.handler = handler
        self.server = _Server(self, max_buffer_size=_BUFFER_LIMIT)
        self.address = address

    async def start(self) -> None:
        sockets = _bind(self.host, self.port)
        self.server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self.address = f"{self.scheme}://{self.host}:{self.port}"

    async def accept(self, stream: IOStream, peer: tuple[Any, ...]) -> None:
        comm = TCPComm(stream, self.address, _address_of(peer, self.scheme), MAX_MESSAGE_BYTES)
        try:
            await exchange_handshake(comm, DEFAULT_CONNECT_TIMEOUT)
        except (ConnectionError, FramingError, MessageError) as exc:
            logger.warning("refused connection from %s: %s", comm.peer_address, exc)
            comm.abort()
            return
        await self.handler(comm)

    def stop(self) -> None:
        self.server.stop()


def _bind(host: str, port: int) -> list[socket.socket]:
    from tornado.netutil import bind_sockets

    return bind_sockets(port, address=host, reuse_port=False)


register_transport("tcp", tcp_connect, TCPListener)
