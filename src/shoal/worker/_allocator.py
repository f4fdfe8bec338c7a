"""Giving the memory a worker has freed back to the operating system.

A worker decides when to spill and when to pause from its resident memory
(RSS), but freeing a value does not lower RSS by itself.  glibc's malloc
keeps freed blocks for reuse, and each time it frees a large block that was
mapped on its own it raises its mmap threshold to that block's size (up to
32 MiB): later blocks of that size come from a heap, and freeing them leaves
holes that stay resident.  A worker could spill every result and still sit
above its pause threshold, with nothing left to spill and nothing that would
ever look at the memory again.  Two remedies, the ones dask applies through
``MALLOC_TRIM_THRESHOLD_``:

* :func:`tune_allocator`, once per process: fixing the trim threshold turns
  the dynamic thresholds off, so blocks of 128 KiB and more are mapped on
  their own (and unmapped when freed) and free space at the top of a heap is
  returned once it exceeds :data:`TRIM_THRESHOLD`;
* :func:`release_free_memory` when memory stays high after spilling:
  a full collection for values only reference cycles keep alive, then
  ``malloc_trim(0)`` for the free pages inside the heaps, and the idle pages
  kept warm for receive buffers (``comm/_pool.py``).
  :class:`Reclaimer` bounds the time it takes to a small share.

Other C libraries (musl, macOS) have neither knob; there both do nothing
but the garbage collection.
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

__all__ = ["TRIM_THRESHOLD", "Reclaimer", "release_free_memory", "tune_allocator"]

logger = logging.getLogger(__name__)

#: Bytes of free space at the top of a heap that glibc keeps (dask's value).
TRIM_THRESHOLD = 64 * 1024

_M_TRIM_THRESHOLD = -1

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


def tune_allocator() -> bool:
    """Turn glibc's dynamic mmap and trim thresholds off; return whether it did.

    Does nothing when the environment already tunes glibc's malloc, or
    elsewhere than glibc.
    """
    if _GLIBC is None or any(name in os.environ for name in _GLIBC_TUNING_ENV):
        return False
    return bool(_GLIBC.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_free_memory() -> None:
    """Collect reference cycles, then hand glibc's free pages back to the OS,
    and the receive-buffer pool's idle ones."""
    collect_all()  # frozen old objects too (see shoal._gc)
    if _GLIBC is not None:
        _GLIBC.malloc_trim(0)
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
