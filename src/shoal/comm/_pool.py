"""Warm memory for large buffers: memfds reused instead of fresh pages.

Copying into memory a process has never touched is slow: the kernel faults
in and zeroes every page on first touch, and under a hypervisor that takes
freed guest memory back (this machine's VM does) each fault also exits to
the host.  Measured here, a 32 MiB copy into fresh memory ran at
300-600 MB/s, into memory touched before at 2-3.5 GB/s; a value received
into fresh memory spent most of its time in page faults, whatever the
socket did.  glibc's heap used to hide this by reusing freed blocks, until
the worker fixed its trim threshold (``worker/_allocator.py``) so that freed
results give their memory back, which is right for values and wrong for
receive buffers.

So large receive buffers, and the memory of frames sent through shared
memory (``_shared.py``), are mappings of memfds from a pool.  When the value
living in such a buffer is released, its mapping goes and the memfd, with
its pages, returns to the pool; the next large buffer is mapped over pages
that already exist.  A memfd is sparse (:data:`CAPACITY`, sealed so it
cannot shrink): pages exist only where bytes were written, so mapping one
for a frame commits nothing until the frame's bytes arrive.

The pool is bounded: at most :data:`POOL_MAX_BYTES` of idle memory
(``SHOAL_BUFFER_POOL_BYTES``; a worker lowers it to an eighth of its memory
limit), and a memfd idle for :data:`IDLE_SECONDS` is
closed, its pages going back to the system; :func:`release` empties it (the
worker does when its memory is high).  Elsewhere than Linux, buffers are
plain anonymous mappings.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable

__all__ = ["CAPACITY", "BufferPool", "bound", "map_buffer", "pool", "release"]

logger = logging.getLogger(__name__)

#: Every pooled memfd's size: any buffer fits, and pages exist only where written.
CAPACITY = 1 << 40
#: Most idle memory the pool keeps (the environment variable overrides it).
POOL_MAX_BYTES = 512 * 1024 * 1024
POOL_MAX_ENV = "SHOAL_BUFFER_POOL_BYTES"
#: An idle memfd is closed after this long.
IDLE_SECONDS = 10.0
SIZE_SEALS = (getattr(fcntl, "F_SEAL_SHRINK", 0) | getattr(fcntl, "F_SEAL_GROW", 0)
              | getattr(fcntl, "F_SEAL_SEAL", 0))


def _limit_from_env() -> int:
    text = os.environ.get(POOL_MAX_ENV, "")
    try:
        return max(0, int(text)) if text else POOL_MAX_BYTES
    except ValueError:
        logger.warning("%s=%r is not a number of bytes; keeping %d", POOL_MAX_ENV, text,
                       POOL_MAX_BYTES)
        return POOL_MAX_BYTES


def new_memfd() -> int:
    """A sparse memfd of :data:`CAPACITY` bytes whose size is sealed."""
    fd = os.memfd_create("shoal-buffer", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, CAPACITY)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SIZE_SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def allocated(fd: int) -> int:
    """Bytes of pages that exist in a memfd."""
    return os.fstat(fd).st_blocks * 512


class BufferPool:
    """Idle memfds, each with the bytes of pages it holds; thread-safe.

    :meth:`give` runs in finalizers, which the garbage collector may call in
    any thread at any allocation, even while this pool's lock is held: it
    only appends to a queue, folded into the pool by whoever next holds the lock.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.pid = os.getpid()
        self.limit = _limit_from_env() if limit is None else limit
        self._idle: list[tuple[int, int, float]] = []  # fd, allocated bytes, since
        self._returned: deque[int] = deque()
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None
        self.reused = self.made = 0

    def take(self, size: int) -> tuple[int, int]:
        """A memfd for ``size`` bytes and how many bytes of pages it already holds:
        the smallest idle one holding enough, else the warmest, else a new one."""
        with self._lock:
            self._fold_returned()
            best = None
            for i, (_, warm, _since) in enumerate(self._idle):
                if best is None or _better(warm, self._idle[best][1], size):
                    best = i
            if best is not None:
                fd, warm, _ = self._idle.pop(best)
                self.reused += 1
                return fd, warm
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._sweep, daemon=True,
                                                 name="shoal-buffer-pool")
                self._sweeper.start()
        self.made += 1
        return new_memfd(), 0

    def give(self, fd: int) -> None:
        """Take back a memfd no mapping uses any more."""
        if os.getpid() != self.pid:
            os.close(fd)
            return
        self._returned.append(fd)
        if self._lock.acquire(blocking=False):
            try:
                self._fold_returned()
            finally:
                self._lock.release()

    def _fold_returned(self) -> None:
        """Move returned memfds into the pool, within its bound (lock held)."""
        now = time.monotonic()
        while self._returned:
            fd = self._returned.popleft()
            try:
                warm = allocated(fd)
            except OSError:
                continue
            if warm > self.limit:
                os.close(fd)
                continue
            self._idle.append((fd, warm, now))
        total = sum(w for _, w, _ in self._idle)
        while total > self.limit:
            fd_out, w_out, _ = self._idle.pop(0)
            os.close(fd_out)
            total -= w_out

    def held(self) -> int:
        """Bytes of idle memory held."""
        with self._lock:
            self._fold_returned()
            return sum(w for _, w, _ in self._idle)

    def release(self, older_than: float = 0.0) -> int:
        """Close the memfds idle for at least ``older_than`` seconds; bytes freed."""
        limit = time.monotonic() - older_than
        with self._lock:
            self._fold_returned()
            old = [entry for entry in self._idle if entry[2] <= limit]
            self._idle = [entry for entry in self._idle if entry[2] > limit]
        for fd, _, _ in old:
            os.close(fd)
        return sum(w for _, w, _ in old)

    def _sweep(self) -> None:
        while os.getpid() == self.pid:
            time.sleep(IDLE_SECONDS / 2)
            self.release(older_than=IDLE_SECONDS)


def _better(warm: int, best: int, size: int) -> bool:
    """Whether an idle memfd holding ``warm`` bytes suits ``size`` better than one holding ``best``."""
    if warm >= size:
        return best < size or warm < best
    return best < size and warm > best


_pool: BufferPool | None = None
_pool_lock = threading.Lock()


def pool() -> BufferPool | None:
    """This process's pool, or None where memfds do not exist."""
    global _pool
    if not sys.platform.startswith("linux") or not hasattr(os, "memfd_create"):
        return None
    if _pool is None or _pool.pid != os.getpid():
        with _pool_lock:
            if _pool is None or _pool.pid != os.getpid():
                _pool = BufferPool()
    return _pool


def bound(limit: int) -> None:
    """Keep at most ``limit`` bytes idle in this process's pool (never raises the bound).

    A worker bounds it by a share of its memory limit: idle pooled pages are
    in no resident set the memory monitor reads, but a container's memory
    limit counts them.
    """
    owner = pool()
    if owner is not None:
        owner.limit = min(owner.limit, max(0, int(limit)))


def release() -> int:
    """Give every idle pooled page back to the system; bytes freed."""
    return _pool.release() if _pool is not None and _pool.pid == os.getpid() else 0


def map_buffer(size: int) -> mmap.mmap:
    """A writable buffer of ``size`` bytes over pooled pages where there are some.

    Pages that do not exist yet are committed only as they are written.  The
    memfd returns to the pool when the buffer (and every view of it) is gone.
    """
    owner = pool()
    if owner is not None:
        try:
            fd, warm = owner.take(size)
        except OSError as exc:  # out of descriptors or memory: a plain mapping will do
            logger.debug("no memfd for a %d-byte buffer: %s", size, exc)
        else:
            return map_memfd(fd, size, populate=warm >= size, on_release=owner.give)
    return mmap.mmap(-1, size)


def map_memfd(fd: int, size: int, populate: bool, on_release: Callable[[int], None],
              offset: int = 0, private: bool = False,
              on_fate: Callable[[bool], None] | None = None) -> mmap.mmap:
    """``size`` bytes of ``fd`` from ``offset`` (a multiple of the page size) mapped
    writable; ``on_release(fd)`` once the mapping is gone.

    ``private`` maps it copy-on-write: what this process writes stays its own,
    and the mapping may be passed to peers in place (``_inplace.py``), after
    which the memfd is closed on release instead of going to ``on_release``;
    ``on_fate(lent)`` then hears whether it was.
    """
    from ._inplace import forget, register

    kind = mmap.MAP_PRIVATE if private else mmap.MAP_SHARED
    flags = kind | (getattr(mmap, "MAP_POPULATE", 0) if populate and not private else 0)
    try:
        buf = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE,
                        offset=offset)
    except BaseException:
        os.close(fd)
        raise
    spot = register(buf, fd, offset, private)

    def released(fd: int) -> None:
        if spot is not None:
            forget(spot)
            if on_fate is not None:
                on_fate(spot.lent)
            if spot.lent:
                os.close(fd)  # a peer may still map it: its pages must never be reused
                return
        on_release(fd)

    finalizer = weakref.finalize(buf, released, fd)
    finalizer.atexit = False
    return buf
