"""Large frames between processes of one host, through memfds instead of the socket.

Over loopback TCP a frame is copied twice (into the kernel's socket buffer
and out of it) in many small system calls.  Between two processes of one
kernel it need not be: the sender copies the frame once into an anonymous
memory file (``memfd_create``, taken warm from its pool, see ``_pool.py``)
and passes the file descriptor to the receiver over a Unix datagram socket;
the receiver maps it, and the value it unpickles (a numpy array, a bytes
buffer) lives in that mapping.  The message itself still goes over the
connection, carrying only a 16-byte token per shared frame.

Lifetime is the kernel's: a memfd has no name (nothing in ``/dev/shm`` to
leak) and lives while a descriptor or a mapping of it does.  The sender
closes its descriptor once it is sent; the receiver keeps its own while the
value lives in the mapping, and when the value is released it passes the
descriptor back to the sender, whose pool reuses the pages (or closes it
when the sender is gone).  When either process dies (SIGKILL included) the
kernel closes its descriptors and unmaps its mappings, and the memory goes
with the last of them.  Descriptors that arrive but are never claimed by a
message (the connection broke in between) are closed after
:data:`ORPHAN_SECONDS`.  Every memfd is sealed against shrinking, so a peer
can never make a mapping fault by truncating it.

"Same host" is decided by reachability, not by comparing names: every
process binds its channel in the abstract Unix namespace, which exists only
within one kernel and one network namespace, and advertises the channel's
name in the connection handshake.  A peer elsewhere (another machine,
another pod) cannot be reached, and the connection keeps using the socket.
Only descriptors from processes of the same user are accepted, and only
sealed memory files.

A frame that already lies in a private memfd mapping of this process (a
value put into shared memory, or one received through it) is not copied:
its own descriptor is passed with the frame's offset, and the receiver maps
that range copy-on-write and never gives it back (``_inplace.py`` says why
that is safe).  Received frames are always mapped ``MAP_PRIVATE``; a
datagram's offset and size are checked against the memory file's sealed
size before anything is mapped.

``SHOAL_SHARED_MEMORY=0`` (inherited by the processes a cluster starts)
turns the path off.
"""

from __future__ import annotations

import array
import fcntl
import logging
import mmap
import os
import secrets
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from ..protocol._framing import SHARED_TOKEN_BYTES
from ._inplace import Spot, locate
from ._pool import CAPACITY, SIZE_SEALS, map_memfd, new_memfd, pool

__all__ = ["SHARED_MIN_BYTES", "Channel", "channel", "shared_memory_enabled"]

logger = logging.getLogger(__name__)

#: Frames at least this large go through shared memory to a peer on this host.
SHARED_MIN_BYTES = 1024 * 1024
#: A received descriptor no message claimed within this long is closed.
ORPHAN_SECONDS = 60.0
#: How long a message waits for a descriptor its sender sent just before it.
CLAIM_TIMEOUT = 10.0
#: Most descriptors in one datagram (the kernel allows 253).
_FDS_PER_DATAGRAM = 64
#: Most unclaimed descriptors held; beyond, the oldest are closed.
MAX_PENDING = 1024
#: The environment variable that turns the path off ("0", "false", "no", "off").
ENV = "SHOAL_SHARED_MEMORY"
_NAME_PREFIX = "shoal-shm-"
_UCRED = struct.Struct("3i")
#: The first byte of a datagram: frames copied for the peer, frames passed in
#: place (each token followed by the frame's offset in its memfd), or a
#: descriptor given back.
_FRAMES, _IN_PLACE, _RETURNED = b"F", b"P", b"R"
_PLACE = struct.Struct(f"<{SHARED_TOKEN_BYTES}sQ")
#: Tokens of frames lent to peers that we still accept back (the newest ones).
_MAX_LENT = 4096


def shared_memory_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process offers and uses shared memory with its peers."""
    if not sys.platform.startswith("linux") or not hasattr(os, "memfd_create"):
        return False
    return environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def valid_name(name: object) -> str | None:
    """A channel name a peer advertised, if it looks like one."""
    if (isinstance(name, str) and name.startswith(_NAME_PREFIX) and len(name) <= 80
            and name.replace("-", "").isalnum()):
        return name
    return None


class Channel:
    """This process's end: sends frames to peers' channels, keeps what arrives.

    One per process (see :func:`channel`); a daemon thread receives
    descriptors, so they are taken off the socket whichever event loop, if
    any, is running.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.name = f"{_NAME_PREFIX}{self.pid}-{secrets.token_hex(8)}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.bind("\0" + self.name)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.settimeout(ORPHAN_SECONDS / 4)
        # token: fd, sender, when, offset of a frame passed in place (-1: copied for us)
        self._pending: dict[bytes, tuple[int, bytes, float, int]] = {}
        self._lent: dict[bytes, None] = {}  # tokens of frames sent, oldest first
        self._arrived = threading.Condition()
        self.sent = self.received = self.returned = 0
        #: Frames passed without a copy (they lay in shared memory already), and received so.
        self.in_place = self.received_in_place = 0
        threading.Thread(target=self._receive_forever, name="shoal-shared-memory",
                         daemon=True).start()

    # ------------------------------------------------------------ sending

    def reachable(self, peer: str) -> bool:
        """Whether ``peer``'s channel exists in this kernel and network namespace."""
        try:
            self._sock.sendto(b"", socket.MSG_DONTWAIT, "\0" + peer)
        except BlockingIOError:
            return True  # there, only busy
        except OSError:
            return False
        return True

    def send(self, peer: str, frames: Sequence[bytes | memoryview],
             spots: Sequence[tuple[Spot, int] | None] | None = None) -> list[bytes] | None:
        """Pass ``frames`` to ``peer``: in place those that lie in a private memfd
        mapping of this process (``spots``, from :func:`_inplace.locate`), the
        others copied into pooled memfds.

        Returns one token per frame, or None when they could not be passed
        (the peer's queue is full, descriptors ran out): the caller sends the
        frames over the socket instead.
        """
        if spots is None:
            spots = [locate(frame) for frame in frames]
        tokens = [secrets.token_bytes(SHARED_TOKEN_BYTES) for _ in frames]
        copied = [i for i, spot in enumerate(spots) if spot is None]
        fds: list[int] = []
        owner = pool()
        try:
            for i in copied:
                frame = frames[i]
                fd = owner.take(memoryview(frame).nbytes)[0] if owner is not None else new_memfd()
                fds.append(fd)
                _write_all(fd, frame)
            with self._arrived:
                for i in copied:
                    self._lent[tokens[i]] = None
                while len(self._lent) > _MAX_LENT:
                    del self._lent[next(iter(self._lent))]
            for start in range(0, len(fds), _FDS_PER_DATAGRAM):
                chunk = copied[start:start + _FDS_PER_DATAGRAM]
                _send_fds(self._sock, [_FRAMES, *(tokens[i] for i in chunk)],
                          fds[start:start + _FDS_PER_DATAGRAM], "\0" + peer)
            in_place = [(tokens[i], spot) for i, spot in enumerate(spots) if spot is not None]
            for start in range(0, len(in_place), _FDS_PER_DATAGRAM):
                parts, place_fds = [_IN_PLACE], []
                for token, (where, offset) in in_place[start:start + _FDS_PER_DATAGRAM]:
                    where.lent = True  # from now on its memfd is never reused
                    parts.append(_PLACE.pack(token, offset))
                    place_fds.append(where.fd)
                _send_fds(self._sock, parts, place_fds, "\0" + peer)
        except OSError as exc:  # ENOMEM, EMFILE, EAGAIN (queue full), ECONNREFUSED
            logger.debug("sending %d frames to %s through shared memory failed: %s",
                         len(frames), peer, exc)
            return None
        finally:
            for fd in fds:
                os.close(fd)
        self.sent += len(frames)
        self.in_place += len(frames) - len(copied)
        return tokens

    # ------------------------------------------------------------ receiving

    def claim(self, token: bytes, size: int, timeout: float = CLAIM_TIMEOUT) -> memoryview:
        """The memory sent under ``token``, mapped writable and copy-on-write.

        A frame copied for us goes back to its sender when the mapping is
        released; one passed in place (its sender, or others, still map it)
        is only closed.  Raises ``ValueError`` if it did not arrive within
        ``timeout`` seconds, or is not a size-sealed memory file holding the
        announced range.
        """
        deadline = time.monotonic() + timeout
        with self._arrived:
            while token not in self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ValueError(f"shared memory for a frame of {size} bytes did not "
                                     f"arrive within {timeout}s")
                self._arrived.wait(remaining)
            fd, sender, _, offset = self._pending.pop(token)
        try:
            _check_sealed(fd, size + max(offset, 0))
        except BaseException:
            os.close(fd)
            raise
        if offset < 0:
            def give_back(fd: int) -> None:
                self._give_back(fd, token, sender)

            return memoryview(map_memfd(fd, size, populate=False, on_release=give_back,
                                        private=True))
        aligned = offset - offset % mmap.PAGESIZE
        mapped = map_memfd(fd, offset + size - aligned, populate=False, on_release=os.close,
                           offset=aligned, private=True)
        self.received_in_place += 1
        return memoryview(mapped)[offset - aligned:]

    def _give_back(self, fd: int, token: bytes, sender: bytes) -> None:
        try:
            if os.getpid() == self.pid:
                _send_fds(self._sock, [_RETURNED, token], [fd], sender)
        except OSError:
            pass  # the sender is gone or busy: the memory goes with our descriptor
        finally:
            os.close(fd)

    def pending(self) -> int:
        """Descriptors received and not yet claimed."""
        with self._arrived:
            return len(self._pending)

    def _receive_forever(self) -> None:
        space = socket.CMSG_SPACE(4 * _FDS_PER_DATAGRAM) + socket.CMSG_SPACE(_UCRED.size)
        while True:
            try:
                data, ancillary, flags, sender = self._sock.recvmsg(
                    1 + SHARED_TOKEN_BYTES * _FDS_PER_DATAGRAM, space)
            except TimeoutError:
                self._expire()
                continue
            except OSError as exc:  # the socket was closed: the process is ending
                logger.debug("shared-memory channel stops: %s", exc)
                return
            self._keep(data, ancillary, flags, sender)

    def _keep(self, data: bytes, ancillary: list, flags: int, sender: object) -> None:
        fds, uid = _unpack_ancillary(ancillary)
        kind = data[:1]
        item = _PLACE.size if kind == _IN_PLACE else SHARED_TOKEN_BYTES
        valid = (uid == os.getuid() and not flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC)
                 and len(data) == 1 + item * len(fds)
                 and isinstance(sender, bytes) and sender[1:].startswith(_NAME_PREFIX.encode()))
        if fds and valid and kind == _RETURNED:
            self._take_back(data[1:], fds[0])
            return
        if not valid or kind not in (_FRAMES, _IN_PLACE):
            if fds:
                logger.warning("dropped %d descriptors sent to the shared-memory channel by "
                               "uid %s", len(fds), uid)
            for fd in fds:
                os.close(fd)
            return
        assert isinstance(sender, bytes)
        now = time.monotonic()
        with self._arrived:
            for i, fd in enumerate(fds):
                entry = data[1 + i * item:1 + (i + 1) * item]
                token, offset = _PLACE.unpack(entry) if kind == _IN_PLACE else (entry, -1)
                self._pending[token] = (fd, sender, now, offset)
            self.received += len(fds)
            while len(self._pending) > MAX_PENDING:
                oldest = next(iter(self._pending))
                os.close(self._pending.pop(oldest)[0])
            self._arrived.notify_all()
        self._expire()

    def _take_back(self, token: bytes, fd: int) -> None:
        """A peer is done with memory we lent it: reuse its pages if it is ours."""
        with self._arrived:
            ours = self._lent.pop(token, False) is None
        owner = pool()
        if ours and owner is not None:
            try:
                _check_sealed(fd, CAPACITY)
            except ValueError:
                ours = False
        if ours and owner is not None:
            self.returned += 1
            owner.give(fd)
        else:
            os.close(fd)

    def _expire(self) -> None:
        limit = time.monotonic() - ORPHAN_SECONDS
        with self._arrived:
            old = [t for t, (_, _, when, _) in self._pending.items() if when < limit]
            for token in old:
                os.close(self._pending.pop(token)[0])
        if old:
            logger.info("closed %d shared-memory frames no message claimed", len(old))


def _unpack_ancillary(ancillary: list) -> tuple[list[int], int | None]:
    """The descriptors and the sender's uid in a datagram's ancillary data."""
    fds: list[int] = []
    uid = None
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            ints = array.array("i")
            ints.frombytes(payload[: len(payload) - len(payload) % ints.itemsize])
            fds.extend(ints)
        elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            uid = _UCRED.unpack(payload[: _UCRED.size])[1]
    return fds, uid


def _send_fds(sock: socket.socket, parts: list[bytes], fds: list[int],
              address: str | bytes) -> None:
    """One datagram carrying ``fds`` (``socket.send_fds`` drops its address before 3.12)."""
    rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))
    sock.sendmsg(parts, [rights], socket.MSG_DONTWAIT, address)


def _write_all(fd: int, frame: bytes | memoryview) -> None:
    view = memoryview(frame).cast("B")
    written = 0
    while written < view.nbytes:
        written += os.pwrite(fd, view[written:], written)


def _check_sealed(fd: int, size: int) -> None:
    """Refuse anything but a memory file of ``size`` bytes or more that cannot shrink."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size < size:
        raise ValueError("a shared frame is not a memory file of the announced size")
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        seals = 0
    if seals & SIZE_SEALS != SIZE_SEALS:
        raise ValueError("a shared frame's memory file is not sealed against shrinking")


_channel: Channel | None = None
_unavailable_in: int | None = None  # the pid in which making a channel failed
_channel_lock = threading.Lock()


def channel() -> Channel | None:
    """This process's channel (made on first use), or None when the path is off."""
    global _channel, _unavailable_in
    pid = os.getpid()
    if _channel is not None and _channel.pid == pid:
        return _channel
    if _unavailable_in == pid or not shared_memory_enabled():
        return None
    with _channel_lock:
        if _channel is None or _channel.pid != pid:
            try:
                _channel = Channel()
            except OSError as exc:
                logger.info("shared memory between processes is unavailable: %s", exc)
                _unavailable_in = pid
                return None
    return _channel
