"""Frames sent from the shared memory they already lie in, and values put there once.

``_shared.py`` passes a large frame to a same-host peer by copying it into a
memfd.  A frame that already lies inside a memfd mapping of this process
needs no copy: its descriptor can be passed as it is, with the frame's offset
and length, and the peer maps that range.  This module knows which memory is
such a mapping (a registry of live mappings: address range -> memfd, kept by
``_pool.map_memfd``), and it puts a worker's large task results into pooled
shared memory once, when the task finishes (``put``), so that every later
transfer to a same-host peer, or to a third worker from one that received it,
is a descriptor passed, not a copy.  It is Ray's object store, without the
store: the value itself (a numpy array, a pandas frame's blocks, an arrow
table's buffers) is rebuilt over the mapping and the original freed, so the
memory is not doubled.

Safety rests on three rules.

* A memfd that is shared in place is never written again.  Memory that may
  be passed in place is mapped ``MAP_PRIVATE`` (copy-on-write) by everyone:
  the producer after its put, each receiver.  A task that writes into its
  input (or a later task into the producer's result) changes only its own
  pages, never the file the others see.
* Before a frame of a private mapping is passed in place, its pages are
  checked through ``/proc/self/pagemap``: if this process wrote into any of
  them, the file no longer holds the value this process sees, and the frame
  is copied instead, as before.
* A memfd passed in place never goes back to a reuse pool: neither the
  sender's (its mapping's release closes it) nor, when a receiver lets go,
  anyone's.  Only freshly copied frames, held by their receiver alone, go
  back to their sender's pool (``_shared.py``).

Lifetime stays the kernel's: every holder has a descriptor or a mapping, and
the memory goes with the last of them, SIGKILL included.

When the put is worth paying for.  It is one copy when the task finishes,
into pages that are often fresh (a memfd passed in place never returns to
the pool), which costs about what the copy at send time it saves did; it
pays when the value is then passed to a peer, and is waste when the value is
consumed where it was made.  So a worker puts only (1) with shared memory on
and once it has met a peer on its host (a connection whose handshake offered
a channel this process can reach, see ``_core.exchange_handshake``: a worker
alone on its host, or whose peers are all elsewhere, the usual Kubernetes
pod, never puts), and (2) while recent puts paid: of the last
:data:`DEMAND_MEMORY` put values released, at least :data:`PUT_MIN_SHARE`
must have been passed to a peer, else only one candidate in
:data:`PUT_SAMPLE` is put.  The evidence is each value's own fate, known
when its mapping is released, so a burst of results made before any is
fetched does not turn puts off.
"""

from __future__ import annotations

import bisect
import logging
import mmap
import os
import pickle
import threading
import time
import weakref
from collections import deque
from typing import Any

from ..protocol._memory import buffer_address
from ..protocol._serialize import SerializationError, serialize

__all__ = ["Spot", "buffer_address", "locate", "put", "register"]

logger = logging.getLogger(__name__)

PAGE = mmap.PAGESIZE
#: Values whose out-of-band buffers add up to less than this are not put.
PUT_MIN_BYTES = 1024 * 1024
#: A value whose pickle stream (what is not out of band) is larger is not put:
#: rebuilding it would cost more than the copy saves.
PUT_MAX_STREAM_BYTES = 64 * 1024
#: What marks a value whose large buffers are bytes or bytearrays: those own
#: their memory, so a put would copy them twice and share nothing.
_OWNING_BUFFERS = (b"_bytes_from", b"_bytearray_from")

# ------------------------------------------------------------ the registry


class Spot:
    """One live mapping of a memfd in this process."""

    __slots__ = ("end", "fd", "lent", "offset", "private", "ref", "start")

    def __init__(self, start: int, end: int, fd: int, offset: int, private: bool,
                 ref: weakref.ref) -> None:
        self.start, self.end, self.fd, self.offset = start, end, fd, offset
        self.private = private
        #: Passed in place to a peer: the memfd must never be reused.
        self.lent = False
        self.ref = ref


_lock = threading.Lock()
_starts: list[int] = []
_spots: dict[int, Spot] = {}
_held = [0]  # bytes of the spots recorded
#: Spots whose mapping is gone, removed by whoever next holds the lock (a
#: finalizer may run inside a locked section of its own thread).
_dead: deque[Spot] = deque()


def register(buf: Any, fd: int, offset: int, private: bool) -> Spot | None:
    """Record a memfd mapping (``buf``: the mapping, or an object that holds it
    while alive); None if its address cannot be read."""
    where = buffer_address(buf)
    if where is None or not where[0]:
        return None
    start, size = where
    spot = Spot(start, start + size, fd, offset, private, weakref.ref(buf))
    with _lock:
        _fold_dead()
        i = bisect.bisect_left(_starts, start)
        # a mapping at an address overlapping this one is gone (its finalizer
        # has not run yet): drop it so it cannot shadow this one
        while i > 0 and _spots[_starts[i - 1]].end > start:
            i -= 1
            _drop(_starts.pop(i))
        while i < len(_starts) and _starts[i] < spot.end:
            _drop(_starts.pop(i))
        _starts.insert(i, start)
        _spots[start] = spot
        _held[0] += size
    return spot


def _drop(start: int) -> None:
    spot = _spots.pop(start)
    _held[0] -= spot.end - spot.start


def forget(spot: Spot) -> None:
    """The mapping is gone (from its finalizer: any thread, any moment)."""
    _dead.append(spot)
    if _lock.acquire(blocking=False):
        try:
            _fold_dead()
        finally:
            _lock.release()


def _fold_dead() -> None:
    while _dead:
        spot = _dead.popleft()
        if _spots.get(spot.start) is spot:
            _starts.remove(spot.start)
            _drop(spot.start)


def held_bytes() -> int:
    """Bytes of the memfd mappings alive in this process: the shared memory it
    keeps alive, whether or not its pages are in its resident set yet."""
    if _lock.acquire(blocking=False):
        try:
            _fold_dead()
        finally:
            _lock.release()
    return _held[0]


def locate(frame: Any) -> tuple[Spot, int] | None:
    """The live private mapping ``frame`` lies in and its offset in the memfd, if
    the frame's pages there still hold the file's bytes (nothing wrote into them)."""
    where = buffer_address(frame)
    if where is None:
        return None
    address, size = where
    with _lock:
        _fold_dead()
        i = bisect.bisect_right(_starts, address) - 1
        spot = _spots[_starts[i]] if i >= 0 else None
    # a dead mapping's weak reference reads None as soon as its memory goes
    if (spot is None or not spot.private or address + size > spot.end
            or spot.ref() is None or not size):
        return None
    if not unwritten(address, size):
        return None
    return spot, spot.offset + address - spot.start


def mappings() -> int:
    """Live memfd mappings recorded (for tests and metrics)."""
    with _lock:
        _fold_dead()
        return sum(spot.ref() is not None for spot in _spots.values())


# ------------------------------------------------------------ pages written to

_pagemap_fd: int | None = None
_pagemap_pid = 0


def unwritten(address: int, size: int) -> bool:
    """Whether no page of a private file mapping in ``[address, address + size)``
    was written by this process (a written page is anonymous memory now).

    Reads ``/proc/self/pagemap`` (its flags need no privilege); where it cannot
    be read, every page counts as written.
    """
    global _pagemap_fd, _pagemap_pid
    first, last = address // PAGE, (address + size - 1) // PAGE
    count = last - first + 1
    try:
        if _pagemap_fd is None or _pagemap_pid != os.getpid():
            if _pagemap_fd is not None:  # a forked child: that one reads the parent's
                os.close(_pagemap_fd)
                _pagemap_fd = None
            _pagemap_fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
            _pagemap_pid = os.getpid()
        data = os.pread(_pagemap_fd, 8 * count, 8 * first)
    except OSError:
        return False
    if len(data) != 8 * count:
        return False
    flags = int.from_bytes(data, "little") >> 61  # per word: bit 0 file page, 1 swapped, 2 present
    anonymous = ((flags >> 2) & ~flags) | (flags >> 1)
    return not anonymous & _low_bits(count)


_ones: tuple[int, int] = (0, 0)  # how many words, and the integer; replaced whole


def _low_bits(count: int) -> int:
    """An integer with bit 0 of each of ``count`` 64-bit words set."""
    global _ones
    words, ones = _ones
    if count > words:
        words = max(count, 2 * words)
        ones = ((1 << (64 * words)) - 1) // ((1 << 64) - 1)
        _ones = (words, ones)
    return ones & ((1 << (64 * count)) - 1)


# ------------------------------------------------------------ the put

_peer_on_this_host = False
#: Values put, the bytes they hold, and the seconds the puts took (for metrics and tests).
put_count = put_bytes = 0
put_seconds = 0.0


def note_same_host_peer() -> None:
    """A connection's peer is on this host (its channel is reachable)."""
    global _peer_on_this_host
    _peer_on_this_host = True


class _Demand:
    """Whether this process's recent puts paid off: was each put value passed to a
    peer (in place) before it was released?

    Of the last :data:`DEMAND_MEMORY` put values released, at least
    :data:`PUT_MIN_SHARE` must have been shared for every candidate to be put;
    below that only one in :data:`PUT_SAMPLE` is (the evidence must go on
    coming in), and the others are sent as before, copied when they are sent.
    A worker whose large results are mostly consumed where they were made
    (a dask.array graph keeps most chunks local) stops paying a copy per
    result; one whose results go to its peers (the transfer benchmark, a
    shuffle) puts them all.
    """

    def __init__(self) -> None:
        self.outcomes: deque[bool] = deque(maxlen=DEMAND_MEMORY)
        self.candidates = 0

    def note_released(self, shared: bool) -> None:
        self.outcomes.append(shared)  # deque.append is atomic: finalizers call this

    def worth_it(self) -> bool:
        """For one candidate: whether to put it."""
        self.candidates += 1
        outcomes = list(self.outcomes)
        if len(outcomes) < DEMAND_MEMORY // 4 or sum(outcomes) >= PUT_MIN_SHARE * len(outcomes):
            return True
        return self.candidates % PUT_SAMPLE == 0


#: Put values whose fate the decision looks at.
DEMAND_MEMORY = 16
#: Share of them that must have been passed to a peer for puts to go on.
PUT_MIN_SHARE = 0.75
#: While puts do not pay, one candidate in this many is put still.
PUT_SAMPLE = 16
demand = _Demand()


def worth_putting() -> bool:
    """Shared memory is on, a peer is on this host, and recent results were shared."""
    from ._shared import channel

    return _peer_on_this_host and channel() is not None


def put(value: Any, nbytes: int) -> Any:
    """``value`` (of ``nbytes`` bytes), rebuilt over pooled shared memory if it is worth
    it, else itself.

    Only values whose out-of-band buffers hold at least :data:`PUT_MIN_BYTES`
    and whose rebuilt buffers are views (numpy, pandas, pyarrow, memoryview;
    not bytes or bytearray), and none that already lies in shared memory.
    Never raises: whatever goes wrong, the value is kept as it is.
    """
    global put_count, put_bytes, put_seconds
    if (nbytes < PUT_MIN_BYTES or type(value) in (bytes, bytearray, str)
            or not _peer_on_this_host):
        return value
    # the cheap decisions first: serializing a large value costs about what
    # the put saves, so it is not paid for a value that would not be put anyway
    if not worth_putting() or not demand.worth_it():
        return value
    started = time.perf_counter()
    try:
        ser = serialize(value)
    except SerializationError:
        return value
    stream, buffers = ser.frames[0], ser.frames[1:]
    sizes = [memoryview(b).nbytes for b in buffers]
    if (sum(sizes) < PUT_MIN_BYTES or len(stream) > PUT_MAX_STREAM_BYTES
            or any(marker in stream for marker in _OWNING_BUFFERS)
            or any(locate(b) is not None for b in buffers)):
        return value
    try:
        rebuilt = _rebuild_in_shared_memory(stream, buffers, sizes)
    except (OSError, ValueError, pickle.UnpicklingError) as exc:
        logger.debug("putting a value of %d bytes into shared memory failed: %s",
                     sum(sizes), exc)
        return value
    put_count += 1
    put_bytes += sum(sizes)
    put_seconds += time.perf_counter() - started
    return rebuilt


def _rebuild_in_shared_memory(stream: Any, buffers: list, sizes: list[int]) -> Any:
    from ._pool import map_memfd, new_memfd, pool

    offsets, end = [], 0
    for size in sizes:
        offsets.append(end)
        end += -(-size // PAGE) * PAGE
    owner = pool()
    fd = owner.take(end)[0] if owner is not None else new_memfd()
    try:
        for buf, offset in zip(buffers, offsets, strict=True):
            view = memoryview(buf).cast("B")
            done = 0
            while done < view.nbytes:
                done += os.pwrite(fd, view[done:], offset + done)
    except BaseException:
        os.close(fd)
        raise
    on_release = owner.give if owner is not None else os.close
    # not populated: the pages are mapped as they are read, and reading the
    # page map of pages never touched is ten times quicker (see unwritten)
    mapped = map_memfd(fd, end, populate=False, on_release=on_release, private=True,
                       on_fate=demand.note_released)
    whole = memoryview(mapped)
    views = [whole[offset:offset + size] for offset, size in zip(offsets, sizes, strict=True)]
    return pickle.loads(stream, buffers=views)
