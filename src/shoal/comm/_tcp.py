"""TCP transport on asyncio's buffered protocols.

Bytes arrive straight into our own buffers (``asyncio.BufferedProtocol``):
small messages into a staging area, several per system call; a large message
(a 32 MiB array) into a buffer of its own, so it is copied once, from the
socket to its final place.  An earlier version sat on tornado's IOStream;
profiling showed its per-message bookkeeping (re-registering the socket with
epoll on every read and write) costing two to three times the round trip of
this one, so the data path uses asyncio directly while tornado serves HTTP.

Memory is committed as bytes arrive, never because a header claims it: the
staging area starts small and grows only while a message needs it.  A large
message is received frame by frame: each frame of ``OWN_BUFFER_BYTES`` or
more into a buffer of its own (the value unpickled from it lives there, no
copy), runs of smaller frames into a shared one.  A buffer is made only when
its first byte arrives; one of ``EAGER_MAX_BYTES`` or more is a mapping of a
sparse memfd (``_pool.py``: warm pages reused, new ones committed by the
kernel only as bytes are written into them).
A header declaring a gigabyte therefore costs nothing until the gigabyte is
sent, an idle connection costs a few kilobytes, and a peer that stops
sending in the middle of a message is dropped after
``CommLimits.read_idle_timeout``.

``tls://`` (:mod:`._tls`) is this transport inside asyncio's TLS layer; the
three hooks it overrides (``_limit_write_buffer``, ``_send_direct``,
``write_threadsafe``) are the only places where the plain path knows it
exists.

To a peer on the same host that offered a shared-memory channel in the
handshake, frames of ``SHARED_MIN_BYTES`` or more go through memfds instead
of the socket (see ``_shared.py``); the message carries their tokens.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import socket
import threading
import time
from collections import deque
from typing import Any

from ..protocol import FramingError, MessageError, dumps, loads, pack_frames_prelude
from ..protocol._framing import (
    HANDSHAKE_MAX_BYTES,
    TOTAL_HEADER_BYTES,
    frame_nbytes,
    table_bytes,
    unpack_count,
    unpack_frame_words,
    unpack_total,
)
from ..protocol._memory import bytes_buffer
from ._core import (
    DEFAULT_CONNECT_TIMEOUT,
    Comm,
    CommClosedError,
    CommHandler,
    CommLimits,
    Listener,
    exchange_handshake,
    parse_address,
    register_transport,
)
from ._inplace import locate
from ._local import connect_locally, peer_pid, serve_locally
from ._pool import map_buffer
from ._security import ConnectionArgs
from ._shared import SHARED_MIN_BYTES, channel
from ._supervise import spawn

logger = logging.getLogger(__name__)

#: Messages up to this size are parsed out of the staging buffer.
STAGING_BYTES = 256 * 1024
#: The staging buffer's size when a connection starts (and after a large burst).
STAGING_MIN_BYTES = 4 * 1024
#: A staging buffer grown beyond this is dropped once it is empty.
STAGING_KEEP_BYTES = 64 * 1024
#: A large message's frames this large are received into buffers of their own.
OWN_BUFFER_BYTES = 64 * 1024
#: Receive buffers smaller than this are allocated whole when their first byte
#: arrives; larger ones are anonymous mappings, committed page by page.
EAGER_MAX_BYTES = 1024 * 1024
#: Shared frames adding up to this much are copied off the event loop's thread.
SHARE_IN_THREAD_BYTES = 4 * 1024 * 1024
#: Frames this large are written without being joined to their neighbours.
LARGE_FRAME_BYTES = 64 * 1024
#: ...and this large, straight from their memory (see TCPComm._send_direct).
DIRECT_SEND_BYTES = 1024 * 1024
#: A message with a frame this large is never written by ``write_nowait``.
NOWAIT_FRAME_BYTES = min(DIRECT_SEND_BYTES, SHARED_MIN_BYTES)


def split_host_port(address: str) -> tuple[str, int]:
    _, hostport = parse_address(address)
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r} has no port (expected tcp://host:port)")
    return host.strip("[]") or "0.0.0.0", int(port)


def _address_of(sockname: Any, scheme: str = "tcp") -> str:
    if not sockname:  # the socket was reset as it opened: asyncio has no address for it
        raise CommClosedError("the connection closed as it opened")
    host, port = sockname[0], sockname[1]
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def _grow(buf: bytearray, size: int) -> bytearray:
    """``buf`` enlarged to ``size`` bytes (in place when nothing views it)."""
    try:
        buf.extend(bytes(size - len(buf)))
        return buf
    except BufferError:  # a memoryview of it is still alive: copy instead
        new = bytearray(size)
        new[: len(buf)] = buf
        return new


def _allocate(size: int) -> bytearray | mmap.mmap | memoryview:
    """A receive buffer of ``size`` bytes; a large one over warm pooled pages
    where the pool has some, else committed page by page as it is written."""
    if size < EAGER_MAX_BYTES:
        return bytearray(size)
    return map_buffer(size)


class _LargeMessage:
    """A message too large for the staging buffer, received into its frames' buffers.

    Frames of ``OWN_BUFFER_BYTES`` or more get a buffer each; each run of
    smaller frames between them shares one.  A buffer is allocated when its
    first byte is about to arrive, so what a message costs follows what it
    sent.
    """

    __slots__ = ("buffers", "filled", "index", "layout", "owners", "shared", "sizes", "wire")

    def __init__(self, wire: list[int], shared: list[int], whole: list[int]) -> None:
        self.wire, self.shared = wire, shared
        self.sizes: list[int] = []  # the buffers' sizes, in arrival order
        self.layout: list[tuple[int, int]] = []  # each frame's buffer and offset in it
        #: buffers that are bytes objects (frames flagged BYTES_FRAME): index -> the
        #: object, None until its first byte arrives
        self.owners: dict[int, bytes | None] = {}
        run = 0
        for i, length in enumerate(wire):
            if length >= OWN_BUFFER_BYTES:
                if run:
                    self.sizes.append(run)
                    run = 0
                self.layout.append((len(self.sizes), 0))
                if i in whole and not shared[i]:
                    self.owners[len(self.sizes)] = None
                self.sizes.append(length)
            else:
                self.layout.append((len(self.sizes), run))
                run += length
        if run:
            self.sizes.append(run)
        self.buffers: list[bytearray | mmap.mmap | memoryview | None] = [None] * len(self.sizes)
        self.index = self.filled = 0

    @property
    def complete(self) -> bool:
        return self.index == len(self.sizes)

    def buffer(self) -> memoryview:
        """Where the next bytes go."""
        buf = self.buffers[self.index]
        if buf is None:
            if self.index in self.owners:  # the value itself, written through a view
                self.owners[self.index], buf = bytes_buffer(self.sizes[self.index])
            else:
                buf = _allocate(self.sizes[self.index])
            self.buffers[self.index] = buf
        return memoryview(buf)[self.filled:]

    def advance(self, nbytes: int) -> None:
        self.filled += nbytes
        while self.index < len(self.sizes) and self.filled == self.sizes[self.index]:
            self.index += 1
            self.filled = 0

    def take(self, data: memoryview) -> None:
        """Bytes of the message that arrived in the staging buffer."""
        pos = 0
        while pos < len(data) and not self.complete:
            with self.buffer() as view:
                n = min(len(view), len(data) - pos)
                view[:n] = data[pos:pos + n]
            self.advance(n)
            pos += n

    def frames(self) -> list[memoryview | bytes]:
        out: list[memoryview | bytes] = []
        for length, (index, offset) in zip(self.wire, self.layout, strict=True):
            owner = self.owners.get(index)
            buf = self.buffers[index] if length else None
            if owner is not None:
                out.append(owner)
            else:
                out.append(memoryview(buf)[offset:offset + length] if buf is not None
                           else memoryview(b""))
        return out

    def committed(self) -> int:
        """Bytes of memory its buffers hold (a mapping only the pages written to)."""
        held = 0
        for i, buf in enumerate(self.buffers):
            if isinstance(buf, bytearray):
                held += len(buf)
            elif buf is not None:
                held += self.sizes[i] if i < self.index else self.filled + mmap.PAGESIZE
        return held


class _Protocol(asyncio.BufferedProtocol):
    """Frames incoming bytes into messages; holds them until ``read``."""

    def __init__(self, limits: CommLimits) -> None:
        self.limits = limits
        #: The first message is the handshake: only a handshake-sized one is accepted.
        self.max_message = HANDSHAKE_MAX_BYTES
        self.transport: asyncio.Transport | None = None
        self._staging = bytearray()
        self._staged = 0
        self._pending = 0  # size of the incomplete message at the start of staging
        self._big: _LargeMessage | None = None
        self._last_bytes = 0.0
        self._stall_timer: asyncio.TimerHandle | None = None
        self._inbox: deque[Any] = deque()
        self._waiter: asyncio.Future | None = None
        self._drain: asyncio.Future | None = None
        self.closed = False
        self.on_connect: Any = None

    def committed_bytes(self) -> int:
        """Memory this connection's receive buffers hold right now."""
        return len(self._staging) + (self._big.committed() if self._big is not None else 0)

    # ---------------------------------------------------------- asyncio calls

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.on_connect is not None:
            self.on_connect(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._big is not None:
            return self._big.buffer()
        size = len(self._staging)
        small_pending = size < self._pending <= STAGING_BYTES
        if self._staged == size or small_pending:
            # room for a whole small message at once; a large message's frame
            # table (up to 800 kB) only as it fills the buffer
            wanted = max(2 * size, STAGING_MIN_BYTES, self._pending if small_pending else 0)
            self._staging = _grow(self._staging, min(wanted, max(STAGING_BYTES, self._pending)))
        return memoryview(self._staging)[self._staged:]

    def buffer_updated(self, nbytes: int) -> None:
        self._last_bytes = time.monotonic()
        big = self._big
        if big is not None:
            big.advance(nbytes)
            if big.complete:
                self._big = None
                self._deliver(big.frames(), big.shared)
            else:
                self._watch_stall()
            return
        self._staged += nbytes
        try:
            self._parse_staging()
        except FramingError as exc:
            self._fail(exc)
            return
        if self._staged or self._big is not None:
            self._watch_stall()
        elif len(self._staging) > STAGING_KEEP_BYTES:
            self._staging = bytearray()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._big = None
        self._staging = bytearray()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
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
        self._pending = 0
        try:
            while end - pos >= TOTAL_HEADER_BYTES:
                total = unpack_total(view[pos:pos + TOTAL_HEADER_BYTES], self.max_message)
                start = pos + TOTAL_HEADER_BYTES
                if TOTAL_HEADER_BYTES + total > STAGING_BYTES:
                    if self._start_big(view[start:end], total):
                        pos = end
                    elif end - start >= 4:  # wait for the frame table
                        self._pending = TOTAL_HEADER_BYTES + table_bytes(
                            unpack_count(view[start:end]))
                    break
                if end - start < total:
                    self._pending = TOTAL_HEADER_BYTES + total
                    break
                body = memoryview(bytes(view[start:start + total]))
                wire, shared, _, offset = unpack_frame_words(body, total, self.max_message)
                frames: list[memoryview | bytes] = []
                for length in wire:
                    frames.append(body[offset:offset + length])
                    offset += length
                self._deliver(frames, shared)
                self.max_message = self.limits.max_message_bytes
                pos = start + total
            if pos:
                rest = bytes(view[pos:end])
                self._staging[: len(rest)] = rest
                self._staged = len(rest)
        finally:
            view.release()

    def _start_big(self, head: memoryview, total: int) -> bool:
        """Switch to receiving a large message, once its frame table has arrived."""
        if len(head) < 4 or len(head) < table_bytes(unpack_count(head)):
            return False
        wire, shared, whole, offset = unpack_frame_words(head, total, self.max_message)
        big = _LargeMessage(wire, shared, whole)
        big.take(head[offset:])
        if big.complete:
            self._deliver(big.frames(), big.shared)
        else:
            self._big = big
        return True

    def _deliver(self, frames: list[memoryview | bytes], shared: list[int]) -> None:
        try:
            if any(shared):
                _map_shared(frames, shared)
            self._inbox.append(loads(frames))
        except (FramingError, MessageError) as exc:
            self._fail(exc)
            return
        self._wake()

    def _fail(self, exc: Exception) -> None:
        """Bad bytes: stop reading; the reader gets the error and closes the comm.

        The error is passed on without its traceback: the frames it holds
        would keep views of the receive buffers exported.
        """
        self._inbox.append(type(exc)(str(exc)))
        self._wake()
        self._staged = 0
        self._big = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---------------------------------------------------------- stalls

    def _watch_stall(self) -> None:
        """A message is half read: make sure a timer checks that bytes keep coming."""
        if self._stall_timer is None and not self.closed:
            loop = asyncio.get_running_loop()
            self._stall_timer = loop.call_later(self.limits.read_idle_timeout, self._check_stall)

    def _check_stall(self) -> None:
        self._stall_timer = None
        if self.closed or (self._big is None and not self._staged):
            return
        quiet = time.monotonic() - self._last_bytes
        timeout = self.limits.read_idle_timeout
        if quiet < timeout:
            loop = asyncio.get_running_loop()
            self._stall_timer = loop.call_later(timeout - quiet, self._check_stall)
            return
        peer = "peer"
        if self.transport is not None:
            peer = _address_of(self.transport.get_extra_info("peername") or ("?", 0))
        logger.warning("closing the connection from %s: it sent nothing for %.0fs in the "
                       "middle of a message", peer, timeout)
        self._fail(CommClosedError(f"{peer} stalled for {timeout:.0f}s in the middle of a "
                                   "message"))
        if self.transport is not None:
            self.transport.abort()

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

    def writable(self) -> bool:
        """Whether a write would go out without waiting for the peer to read."""
        return self._drain is None or self._drain.done()

    async def drained(self) -> None:
        if self._drain is not None and not self._drain.done():
            await self._drain


def _map_shared(frames: list[memoryview | bytes], shared: list[int]) -> None:
    """Replace each shared frame's token by the memory it stands for."""
    own = channel()
    if own is None:
        raise FramingError("the peer sent frames through shared memory, which is off here")
    for i, size in enumerate(shared):
        if size:
            try:
                frames[i] = own.claim(bytes(frames[i]), size)
            except (ValueError, OSError) as exc:
                raise FramingError(f"a shared frame could not be mapped: {exc}") from None


class TCPComm(Comm):
    #: The scheme of the addresses this comm reports.
    scheme = "tcp"

    def __init__(self, protocol: _Protocol, peer_address: str | None = None) -> None:
        self.protocol = protocol
        transport = protocol.transport
        assert transport is not None
        self.transport = transport
        self._limit_write_buffer()
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:  # see _local.py
            self.local_address = f"{self.scheme}://local-process-{os.getpid()}"
            self.peer_address = peer_address or (
                f"{self.scheme}://local-process-{peer_pid(sock)}")
        else:
            self.local_address = _address_of(transport.get_extra_info("sockname"), self.scheme)
            self.peer_address = _address_of(transport.get_extra_info("peername"), self.scheme)
        self._write_lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()
        #: held around every write to the socket, on the loop or from another
        #: thread (``write_threadsafe``), and around the duplicate descriptor's life
        self._socket_lock = threading.Lock()
        #: what a write from another thread left unsent: the loop writes it
        #: before anything else
        self._tail: list[memoryview] = []
        self._direct: socket.socket | None = None
        self._shared_reachable: bool | None = None  # tried on the first large frame

    def _limit_write_buffer(self) -> None:
        """Writes wait until asyncio's buffer is empty (see _send_direct)."""
        self.transport.set_write_buffer_limits(high=0)

    async def read(self) -> Any:
        return await self.protocol.next_message(self.peer_address)

    async def write(self, msg: Any) -> None:
        frames = dumps(msg)
        async with self._write_lock:
            if self.closed():
                raise CommClosedError(f"connection to {self.peer_address} closed")
            self._flush_tail()
            shared = await self._share(frames) if self.peer_channel is not None else None
            for chunk in _coalesce(pack_frames_prelude(frames, shared), frames):
                if len(chunk) >= DIRECT_SEND_BYTES:
                    await self.protocol.drained()
                    await self._send_direct(chunk)
                else:
                    self._put([chunk])
            await self.protocol.drained()

    def write_nowait(self, msg: Any) -> bool:
        chunks = self._chunks_now(msg)
        if chunks is None:
            return False
        self._put(chunks)
        return True

    def write_threadsafe(self, msg: Any) -> bool:
        """``write_nowait`` from a thread other than the loop's (a client's caller).

        The chunks go straight to the socket, through a duplicate of its
        descriptor (closed only under the socket lock, so never written once
        reused), under the lock the loop writes under too.  What the kernel
        does not take at once waits in ``_tail`` for the loop, which writes
        it before anything else.  False, with nothing sent, as for
        ``write_nowait``.
        """
        chunks = self._chunks_now(msg)
        if chunks is None:
            return False
        with self._socket_lock:
            if not self._can_write_now() or self._tail:
                return False
            try:
                sent = self._duplicate().sendmsg(chunks)
            except BlockingIOError:
                sent = 0
            except OSError:  # closed or broken: nothing was sent; the loop finds out why
                return False
            self._tail = _unsent(chunks, sent)
        if self._tail:
            try:
                self._loop.call_soon_threadsafe(self._flush_tail)
            except RuntimeError:  # the loop is closed, and with it this comm
                pass
        return True

    def _chunks_now(self, msg: Any) -> list | None:
        """``msg`` as the chunks to write now, or None if it must wait for ``write``:
        a write in flight, the peer slow to read, or a large frame (shared
        memory, or a direct send: ``write``'s work)."""
        if not self._can_write_now():
            return None
        frames = dumps(msg)
        if any(frame_nbytes(frame) >= NOWAIT_FRAME_BYTES for frame in frames):
            return None
        return _coalesce(pack_frames_prelude(frames, None), frames)

    def _can_write_now(self) -> bool:
        return not (self._write_lock.locked() or self.closed()
                    or self.transport.get_write_buffer_size() or not self.protocol.writable())

    def _put(self, chunks: list) -> None:
        """On the loop: hand ``chunks`` to the transport, after any tail."""
        with self._socket_lock:
            for chunk in (*self._tail, *chunks):
                self.transport.write(chunk)
            self._tail = []

    def _flush_tail(self) -> None:
        if self._tail and not self.closed():
            self._put([])

    async def _share(self, frames: list) -> dict[int, int] | None:
        """Send the large frames through shared memory if the peer is on this host:
        each is replaced by its token; returns the sizes of those replaced."""
        large = [i for i, f in enumerate(frames) if memoryview(f).nbytes >= SHARED_MIN_BYTES]
        own = channel()
        if not large or own is None or self._shared_reachable is False:
            return None
        peer = self.peer_channel
        assert peer is not None
        if self._shared_reachable is None:
            self._shared_reachable = own.reachable(peer)
            if not self._shared_reachable:
                logger.debug("%s is not on this host: large frames go over the socket",
                             self.peer_address)
                return None
        chosen = [frames[i] for i in large]
        sizes = [memoryview(f).nbytes for f in chosen]
        spots = [locate(f) for f in chosen]  # those in shared memory already: no copy
        copied = sum(size for size, spot in zip(sizes, spots, strict=True) if spot is None)
        if copied >= SHARE_IN_THREAD_BYTES:  # the copy lets go of the GIL
            tokens = await asyncio.to_thread(own.send, peer, chosen, spots)
        else:
            tokens = own.send(peer, chosen, spots)
        if tokens is None:
            return None
        for i, token in zip(large, tokens, strict=True):
            frames[i] = token
        return dict(zip(large, sizes, strict=True))

    async def _send_direct(self, chunk: Any) -> None:
        """Send a large frame from its own memory, without asyncio's buffer.

        Python 3.11's transport copies whatever the kernel does not take at
        once into a bytearray: for a 32 MiB array that copy costs more than
        the transfer.  The frame goes out through a duplicate of the socket's
        descriptor instead, once the transport's own buffer is empty.
        """
        try:
            with self._socket_lock:
                direct = self._duplicate()
            await asyncio.get_running_loop().sock_sendall(direct, chunk)
        except OSError as exc:
            self.abort()
            raise CommClosedError(f"connection to {self.peer_address} broke: {exc}") from exc

    async def close(self) -> None:
        self._close_direct()
        self.transport.close()

    def abort(self) -> None:
        self._close_direct()
        self.transport.abort()

    def _duplicate(self) -> socket.socket:
        """The duplicate of the socket's descriptor (under the socket lock)."""
        if self._direct is None:
            fd = self.transport.get_extra_info("socket").fileno()
            self._direct = socket.socket(fileno=os.dup(fd))
            self._direct.setblocking(False)
        return self._direct

    def _close_direct(self) -> None:
        with self._socket_lock:
            if self._direct is not None:
                self._direct.close()
                self._direct = None

    def closed(self) -> bool:
        return self.protocol.closed or self.transport.is_closing()


def _unsent(chunks: list, sent: int) -> list[memoryview]:
    """What is left of ``chunks`` once their first ``sent`` bytes are written."""
    left = []
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        if sent >= view.nbytes:
            sent -= view.nbytes
            continue
        left.append(view[sent:])
        sent = 0
    return left


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


async def tcp_connect(address: str, timeout: float = DEFAULT_CONNECT_TIMEOUT,
                      limits: CommLimits | None = None,
                      connection_args: ConnectionArgs | None = None) -> Comm:
    host, port = split_host_port(address)
    loop = asyncio.get_running_loop()
    chosen = limits or CommLimits.from_env()
    try:
        async with asyncio.timeout(timeout):
            local = await connect_locally(lambda: _Protocol(chosen), host, port)
            if local is not None:
                return TCPComm(local[1], peer_address=f"tcp://{host}:{port}")
            _, protocol = await loop.create_connection(lambda: _Protocol(chosen), host, port)
    except TimeoutError:
        raise CommClosedError(f"timed out after {timeout}s connecting to {address}") from None
    except OSError as exc:
        raise CommClosedError(f"cannot connect to {address}: {exc}") from exc
    return TCPComm(protocol)


class TCPListener(Listener):
    comm_class: type[TCPComm] = TCPComm

    def __init__(self, address: str, handler: CommHandler,
                 limits: CommLimits | None = None,
                 connection_args: ConnectionArgs | None = None) -> None:
        self.host, self.port = split_host_port(address)
        self.connection_args = connection_args
        self.handler = handler
        self.limits = limits or CommLimits.from_env()
        self.address = address
        self.server: asyncio.AbstractServer | None = None
        #: the same, on this host's Unix socket for host:port (see _local.py)
        self.local_server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._protocol, self.host, self.port,
                                               reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        self.address = f"{self.comm_class.scheme}://{self.host}:{self.port}"
        self.local_server = await serve_locally(self._protocol, self.host, self.port)

    def _protocol(self) -> _Protocol:
        protocol = _Protocol(self.limits)
        protocol.on_connect = self._accepted
        return protocol

    def _accepted(self, protocol: _Protocol) -> None:
        try:
            comm = self.comm_class(protocol)
        except CommClosedError:
            if protocol.transport is not None:
                protocol.transport.abort()
            return  # gone before it could be served
        spawn(self._serve(comm), f"serve {comm.peer_address}", self._tasks)

    async def _serve(self, comm: Comm) -> None:
        try:
            await exchange_handshake(comm, self.limits.handshake_timeout)
        except (ConnectionError, FramingError, MessageError) as exc:
            logger.warning("refused connection from %s: %s", comm.peer_address, exc)
            comm.abort()
            return
        try:
            await self.handler(comm)
        finally:
            comm.abort()

    def stop(self) -> None:
        for server in (self.server, self.local_server):
            if server is not None:
                server.close()
        for task in list(self._tasks):
            task.cancel()


register_transport("tcp", tcp_connect, TCPListener)
