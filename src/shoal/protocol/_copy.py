"""Large copies into fresh memory, shared out over the machine's idle cores.

A received ``bytes`` value owns its memory, so it lands in memory malloc
has just mapped, and filling it is bound by the page faults that commit
that memory (one per 4 KiB page), not by the copy.  One thread fills fresh
memory at 1.4-1.9 GB/s on the 2-core VM the benchmarks run on.  Faults in
different parts of one mapping are taken in parallel by the kernel (per-VMA
locks), so two threads fill it at 2.6-3.3 GB/s, steadily (32 MiB copies, 8
at a time, with 0, 1 and 3 s between batches).

Transparent huge pages (``MADV_HUGEPAGE``) were tried instead and dropped:
one fault per 2 MiB made the same copy 5-10 GB/s while freed huge pages
were still at hand, but 0.4-0.7 GB/s once the guest had handed its free
2 MiB blocks back to the hypervisor (free page reporting, within a second
or two of idleness), which is most of the time for transfers that come and
go.  4 KiB faults are served from memory the guest still holds.

:func:`copy` does a large ``memmove`` in page-aligned parts, one in the
calling thread and the others in helper threads; :func:`prefault` has the
helpers commit the pages of memory that a socket is about to be read into
(``MADV_POPULATE_WRITE``, which leaves what is already written alone), so
the reading thread finds them committed.  Both let go of the GIL
(``ctypes`` calls do).  With a single usable core, or for copies under
:data:`PARALLEL_MIN_BYTES`, everything runs in the calling thread.

The helpers are a small thread pool, started on first use and forgotten in
a forked child (its threads do not exist there).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

__all__ = ["PARALLEL_MIN_BYTES", "copy", "prefault"]

#: Copies and prefaults at least this large are shared with helper threads.
PARALLEL_MIN_BYTES = 4 * 1024 * 1024
#: No part is smaller than this.
_PART_MIN = 2 * 1024 * 1024
#: More parts than this did not go faster where it was measured.
_MOST_PARTS = 4
_PAGE = 4096
#: Linux 5.14+ (Python 3.11's mmap may not name it); elsewhere madvise refuses it, harmlessly.
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_madvise: Any = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _madvise = _libc.madvise
        _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _madvise.restype = ctypes.c_int
    except (OSError, AttributeError):
        _madvise = None

_lock = threading.Lock()
_helpers: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _helpers
    with _lock:
        if _helpers is None:
            _helpers = ThreadPoolExecutor(min(_usable_cpus(), _MOST_PARTS) - 1,
                                          thread_name_prefix="shoal-copy")
        return _helpers


def _forget_pool() -> None:
    global _helpers, _lock
    _helpers, _lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _parts(size: int) -> list[tuple[int, int]]:
    """(offset, length) of each part of a range of ``size`` bytes; one part
    when it is small or the machine has one usable core."""
    if size < PARALLEL_MIN_BYTES:
        return [(0, size)]
    count = min(_usable_cpus(), _MOST_PARTS, size // _PART_MIN)
    if count < 2:
        return [(0, size)]
    step = (-(-size // count) + _PAGE - 1) // _PAGE * _PAGE
    return [(at, min(step, size - at)) for at in range(0, size, step)]


def copy(dest: int, source: int, size: int) -> None:
    """``memmove(dest, source, size)`` for ranges that do not overlap, a large
    one in parts over helper threads; returns once every part is copied."""
    parts = _parts(size)
    if len(parts) == 1:
        ctypes.memmove(dest, source, size)
        return
    helpers = _pool()
    others: list[Future[Any]] = [helpers.submit(ctypes.memmove, dest + at, source + at, n)
                                 for at, n in parts[1:]]
    try:
        ctypes.memmove(dest, source, parts[0][1])
    finally:
        wait(others)  # never return while a helper still writes into dest
    for other in others:
        other.result()


def prefault(owner: object, start: int, size: int) -> None:
    """Have helper threads commit the pages of ``start:start+size``, memory
    that ``owner`` owns, for writing while the caller goes on filling them
    from the front; Linux only, and only for a large range on a machine with a
    core to spare.  The helpers hold ``owner`` until they are done, so the
    memory cannot be freed (and mapped again for something else) under them."""
    parts = _parts(size)
    if _madvise is None or len(parts) == 1:
        return
    helpers = _pool()
    for at, n in parts[1:]:  # the caller's own writes take the first part
        first = (start + at) // _PAGE * _PAGE
        helpers.submit(_populate, owner, first, start + at + n - first)


def _populate(owner: object, start: int, size: int) -> None:
    _madvise(start, size, MADV_POPULATE_WRITE)  # only a head start: a refusal changes nothing
