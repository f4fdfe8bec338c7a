"""What a worker's allocator keeps of the memory it freed, and giving it back.

Memory a process has never touched is slow to fill: the kernel faults in
and zeroes every 4 KiB page on first touch, and under a hypervisor that
takes freed guest memory back (this machine's VM does) each fault also
exits to the host.  Measured here, eight 32 MiB ``bytes`` values filled
1.4-1.8 GB/s in fresh memory and 14-20 GB/s in memory the process had just
freed.  A received ``bytes`` value must live in memory of its own
(``protocol/_memory.py``), so what a worker's allocator does with freed
blocks sets how fast such values arrive.

glibc's default is the worst of both: each block of 128 KiB or more is
mapped on its own (fresh memory every time) until one is freed, after
which its dynamic thresholds keep blocks of that size in heaps, where
freeing them leaves holes that stay resident for ever.  A worker decides
when to spill and when to pause from its resident memory (RSS), so memory
it keeps must be memory it can give back.  :func:`tune_allocator` (once per
process of a worker with a memory limit) therefore keeps freed memory for
reuse in bounded, short-lived form:

* no block is mapped on its own (``M_MMAP_MAX=0``), so every block comes
  from a heap and is reused there when freed;
* free space at the top of the main heap is kept up to ``retain`` bytes
  (the trim threshold and top pad) and given back beyond that; the heaps
  of threads' arenas (64 MiB each) keep theirs;
* :class:`Retained` gives back all free memory, the heaps' holes too
  (``malloc_trim(0)``), every :data:`RETAIN_SECONDS`, and at once when the
  worker's memory reaches its spill fraction, before any result is spilled.

So a value freed is resident for at most :data:`RETAIN_SECONDS`, or until
memory runs short, and reused if another arrives meanwhile.  A kept block
never raises the peak: it is reused before the heap grows.  When spilling
did not bring memory down, :func:`release_free_memory` (throttled by
:class:`Reclaimer`) also runs a full collection for values only reference
cycles keep alive, and empties the pool of idle receive buffers
(``comm/_pool.py``).

An environment that tunes glibc's malloc itself (``MALLOC_TRIM_THRESHOLD_``
and the like) wins: then nothing is changed.  Other C libraries (musl,
macOS) have neither knob; there all of this does nothing but the garbage
collection.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import time
from collections.abc import Callable

from .._gc import collect_all
from ..comm._pool import release as release_buffer_pool

__all__ = ["RETAIN_MAX_BYTES", "RETAIN_SECONDS", "Reclaimer", "Retained", "give_back",
           "release_free_memory", "tune_allocator"]

logger = logging.getLogger(__name__)

#: Most free space kept at the top of each heap (glibc takes an int).
RETAIN_MAX_BYTES = 512 * 1024 * 1024
#: Freed memory is given back at least this often.
RETAIN_SECONDS = 10.0

# mallopt's parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4

#: glibc's environment variables that already fix what tune_allocator would.
_GLIBC_TUNING_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_",
                     "MALLOC_MMAP_MAX_")


def _load_glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


_GLIBC = _load_glibc()


def tune_allocator(retain: int) -> bool:
    """Keep freed memory in the heaps for reuse, up to ``retain`` bytes free at
    the top of the main heap (at most :data:`RETAIN_MAX_BYTES`); return whether
    it did.  A thread's heaps (64 MiB each) keep their free space whole.

    Does nothing when the environment already tunes glibc's malloc, or
    elsewhere than glibc.
    """
    if _GLIBC is None or any(name in os.environ for name in _GLIBC_TUNING_ENV):
        return False
    retain = max(0, min(retain, RETAIN_MAX_BYTES))
    return all([_GLIBC.mallopt(_M_TRIM_THRESHOLD, retain), _GLIBC.mallopt(_M_TOP_PAD, retain),
                _GLIBC.mallopt(_M_MMAP_MAX, 0)])


def give_back() -> bool:
    """Hand the heaps' free pages back to the OS (``malloc_trim(0)``); return
    whether glibc released any."""
    return _GLIBC is not None and bool(_GLIBC.malloc_trim(0))


class Retained:
    """The free memory the allocator keeps, given back every ``seconds`` (or at once).

    ``release`` (:func:`give_back`) is a parameter for the tests, as is ``clock``.
    """

    def __init__(self, release: Callable[[], bool] = give_back,
                 seconds: float = RETAIN_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._release = release
        self.seconds = seconds
        self._clock = clock
        self._last = clock()

    def expire(self) -> bool:
        """Give back what is kept if the last time was ``seconds`` ago; return
        whether anything was released."""
        if self._clock() - self._last < self.seconds:
            return False
        return self.give_back()

    def give_back(self) -> bool:
        """Give back what is kept now; return whether anything was released."""
        self._last = self._clock()
        return self._release()


def release_free_memory() -> None:
    """Collect reference cycles, then hand glibc's free pages back to the OS,
    and the receive-buffer pool's idle ones."""
    collect_all()  # frozen old objects too (see shoal._gc)
    give_back()
    release_buffer_pool()


class Reclaimer:
    """:func:`release_free_memory`, at most ``max_share`` of the time.

    A collection of a large heap can take a second; asked again too soon
    after one, the call does nothing and returns False.
    """

    def __init__(self, release: Callable[[], None] = release_free_memory,
                 max_share: float = 0.05, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < max_share <= 1:
            raise ValueError(f"max_share must be in (0, 1], got {max_share}")
        self._release = release
        self._max_share = max_share
        self._clock = clock
        self._next = -float("inf")
        self.count = 0

    def wake(self) -> None:
        """Let the next call release at once: something worth giving back may have been
        freed since the last one (a paused worker's task ended)."""
        self._next = -float("inf")

    def __call__(self) -> bool:
        start = self._clock()
        if start < self._next:
            return False
        self._release()
        took = self._clock() - start
        self._next = start + took / self._max_share
        self.count += 1
        logger.debug("released free memory in %.3f s", took)
        return True
