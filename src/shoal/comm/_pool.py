"""Warm memory for large buffers: memfds reused instead of fresh pages.

Copying into memory a process has never touched is slow: the kernel faults
in and zeroes every page on first touch, and under a hypervisor that takes
freed guest memory back (this machine's VM does) each fault also exits to
the host.  Measured here, a 32 MiB copy into fresh memory ran at
300-600 MB/s, into memory touched before at 2-3.5 GB/s; a value received
into fresh memory spent most of its time in page faults, whatever the
socket did.  A worker's heaps keep freed blocks only for seconds
(``worker/_allocator.py``), and a receive buffer's memory must be the
frame's for as long as the value living in it is.

So large receive buffers, and the memory of frames sent through shared
memory (``_shared.py``), are mappings of memfds from a pool.  When the value
living in such a buffer is released, the memfd, with its pages, returns to
the pool; the next large buffer is mapped over pages that already exist.  A
receive buffer (:func:`map_buffer`) returns with its mapping too: entering
warm pages into the page tables again costs about a third of what filling
them from a socket does, and a kept mapping needs none of it.  A memfd is
sparse (:data:`CAPACITY`, sealed so it cannot shrink): pages exist only
where bytes were written, so mapping one for a frame commits nothing until
the frame's bytes arrive.

The pool is bounded: at most :data:`POOL_MAX_BYTES` of idle memory
(``SHOAL_BUFFER_POOL_BYTES``; a worker lowers it to an eighth of its memory
limit), and a memfd idle for :data:`IDLE_SECONDS` is
closed, its pages going back to the system; :func:`release` empties it (the
worker does when its memory is high).  Elsewhere than Linux, buffers are
plain anonymous mappings.
"""

from __future__ import annotations

import ctypes
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
from typing import NamedTuple

from ..protocol._copy import MADV_POPULATE_WRITE

__all__ = ["CAPACITY", "BufferPool", "bound", "idle_mapped_bytes", "map_buffer", "pool",
           "release"]

logger = logging.getLogger(__name__)

#: Every pooled memfd's size: any buffer fits, and pages exist only where written.
CAPACITY = 1 << 40
#: Most idle memory the pool keeps (the environment variable overrides it).
POOL_MAX_BYTES = 512 * 1024 * 1024
POOL_MAX_ENV = "SHOAL_BUFFER_POOL_BYTES"
#: Mapping lengths per power of two (see _mapping_size).
LEASE_STEPS = 8
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
        self._idle: list[_Idle] = []
        self._returned: deque[tuple[int, mmap.mmap | None]] = deque()
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None
        self.reused = self.made = 0

    def take(self, size: int) -> tuple[int, int]:
        """A memfd for ``size`` bytes and how many bytes of pages it already holds:
        the smallest idle one holding enough, else the warmest, else a new one."""
        fd, warm, _ = self.take_mapped(size, mapped=False)
        return fd, warm

    def take_mapped(self, size: int, mapped: bool = True) -> tuple[int, int, mmap.mmap | None]:
        """:meth:`take`, with the memfd's mapping when it kept one of ``size``
        bytes or more (``mapped``; else any mapping it kept is let go)."""
        with self._lock:
            self._fold_returned()
            best = None
            for i, entry in enumerate(self._idle):
                if best is None or _better(entry, self._idle[best], size, mapped):
                    best = i
            if best is not None:
                entry = self._idle.pop(best)
                self.reused += 1
                keep = mapped and _mapped_for(entry, size)
                # a mapping not kept is unmapped once no lease's view is left either
                return entry.fd, entry.warm, entry.mapping if keep else None
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._sweep, daemon=True,
                                                 name="shoal-buffer-pool")
                self._sweeper.start()
        self.made += 1
        return new_memfd(), 0, None

    def give(self, fd: int, mapping: mmap.mmap | None = None) -> None:
        """Take back a memfd no mapping uses any more, or one whose ``mapping``
        (of offset 0) no buffer uses any more: that mapping is kept with it."""
        if os.getpid() != self.pid:
            os.close(fd)
            return
        self._returned.append((fd, mapping))
        if self._lock.acquire(blocking=False):
            try:
                self._fold_returned()
            finally:
                self._lock.release()

    def _fold_returned(self) -> None:
        """Move returned memfds into the pool, within its bound (lock held)."""
        now = time.monotonic()
        while self._returned:
            fd, mapping = self._returned.popleft()
            try:
                warm = allocated(fd)
            except OSError:
                continue
            if warm > self.limit:
                os.close(fd)
                continue
            self._idle.append(_Idle(fd, warm, now, mapping))
        total = sum(entry.warm for entry in self._idle)
        while total > self.limit:
            out = self._idle.pop(0)
            os.close(out.fd)
            total -= out.warm

    def held(self) -> int:
        """Bytes of idle memory held."""
        with self._lock:
            self._fold_returned()
            return sum(entry.warm for entry in self._idle)

    def mapped(self) -> int:
        """Bytes of idle memory held in mappings kept, resident in this process
        (in its RSS, though no value uses them)."""
        with self._lock:
            self._fold_returned()
            return sum(min(entry.warm, len(entry.mapping)) for entry in self._idle
                       if entry.mapping is not None)

    def release(self, older_than: float = 0.0) -> int:
        """Close the memfds idle for at least ``older_than`` seconds; bytes freed."""
        limit = time.monotonic() - older_than
        with self._lock:
            self._fold_returned()
            old = [entry for entry in self._idle if entry.since <= limit]
            self._idle = [entry for entry in self._idle if entry.since > limit]
        for entry in old:
            os.close(entry.fd)  # a mapping kept goes with the last reference to it
        return sum(entry.warm for entry in old)

    def _sweep(self) -> None:
        while os.getpid() == self.pid:
            time.sleep(IDLE_SECONDS / 2)
            self.release(older_than=IDLE_SECONDS)


class _Idle(NamedTuple):
    """An idle memfd of the pool."""

    fd: int
    warm: int  # bytes of pages it holds
    since: float
    mapping: mmap.mmap | None  # kept from its last lease (map_buffer), at offset 0


def _mapped_for(entry: _Idle, size: int) -> int:
    """The length of the mapping ``entry`` kept if it can serve ``size`` bytes of
    warm pages at once, and is no more than twice that, else 0."""
    mapping = entry.mapping
    fits = (mapping is not None and size <= len(mapping) <= 2 * max(size, mmap.PAGESIZE)
            and entry.warm >= size)
    return len(mapping) if fits else 0  # type: ignore[arg-type]


def _better(entry: _Idle, best: _Idle, size: int, mapped: bool) -> bool:
    """Whether an idle memfd suits a buffer of ``size`` bytes better than ``best``:
    the smallest already mapped for it (when a mapping is ``mapped`` for),
    else the smallest holding enough pages, else the warmest."""
    if mapped:
        length, best_length = _mapped_for(entry, size), _mapped_for(best, size)
        if bool(length) != bool(best_length):
            return bool(length)
        if length:
            return length < best_length
    warm, best_warm = entry.warm, best.warm
    if warm >= size:
        return best_warm < size or warm < best_warm
    return best_warm < size and warm > best_warm


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


def idle_mapped_bytes() -> int:
    """Bytes of this process's pool kept mapped while idle (see :meth:`BufferPool.mapped`)."""
    return _pool.mapped() if _pool is not None and _pool.pid == os.getpid() else 0


def map_buffer(size: int) -> memoryview | mmap.mmap:
    """A writable buffer of ``size`` bytes over pooled pages where there are some.

    Pages that do not exist yet are committed only as they are written.  The
    memfd returns to the pool when the buffer (and every view of it) is gone,
    and with it its mapping, so that the next buffer it serves needs no
    mapping made, nor its pages entered into this process's page tables one
    by one (measured here: mapping 32 MiB of warm pages with ``MAP_POPULATE``
    took 3-7 ms, longer than the socket took to fill them).
    """
    owner = pool()
    if owner is None:
        return mmap.mmap(-1, size)
    try:
        fd, warm, mapping = owner.take_mapped(size)
    except OSError as exc:  # out of descriptors or memory: a plain mapping will do
        logger.debug("no memfd for a %d-byte buffer: %s", size, exc)
        return mmap.mmap(-1, size)
    if mapping is None:
        try:
            mapping = mmap.mmap(fd, _mapping_size(size), flags=mmap.MAP_SHARED,
                                prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        if warm >= size:  # enter the warm pages at once, not one fault each
            _populate(mapping, size)
    return _lease(mapping, fd, size, owner)


def _populate(mapping: mmap.mmap, size: int) -> None:
    """Map the first ``size`` bytes' pages (only those: past them the memfd may
    have no pages, and populating would commit some)."""
    try:
        mapping.madvise(MADV_POPULATE_WRITE, 0, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE)
    except (OSError, ValueError):  # before Linux 5.14: the pages fault in as written
        pass


def _mapping_size(size: int) -> int:
    """The length to map for a buffer of ``size`` bytes: rounded up to one of a
    few sizes per power of two, so that a mapping kept can serve buffers of
    about its size, and there are few distinct lengths (each has its ctypes
    array type, which ctypes keeps for good)."""
    step = max(mmap.PAGESIZE, (1 << max(0, (size - 1).bit_length() - 1)) // LEASE_STEPS)
    return -(-size // step) * step


def _lease(mapping: mmap.mmap, fd: int, size: int, owner: BufferPool) -> memoryview:
    """A view of the first ``size`` bytes of ``mapping`` that gives the memfd and
    the mapping back to ``owner`` once it and every view made from it are gone.

    The views hang on a ctypes array over the mapping: every view of a view
    shares its exporter, so the array goes with the last of them, and the
    mapping (which cannot be unmapped while the array exports it) stays.
    """
    from ._inplace import forget, register

    lease = (ctypes.c_char * len(mapping)).from_buffer(mapping)
    spot = register(lease, fd, 0, False)

    def released() -> None:
        if spot is not None:
            forget(spot)
        owner.give(fd, mapping)

    weakref.finalize(lease, released).atexit = False
    return memoryview(lease).cast("B")[:size]


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
