"""The worker's results: in memory while they fit, on local disk when not.

A worker keeps every task result until the scheduler says nobody needs it.
When the results outgrow the memory target, the least recently used ones are
written to a spill directory and read back transparently when a task or a
peer asks for them.  Reading a spilled value brings it back into memory
(spilling older ones if needed), unless it is larger than the whole target,
in which case it stays on disk and is only loaded for the caller.

Thread safety: executor threads store results while the event loop reads
them, so every operation holds one lock.  Disk I/O happens under that lock;
this is simple and correct, and spilling is the slow path by definition.

Spill files hold the frames of :func:`shoal.protocol._serialize.serialize`:
a header with the number of frames and their lengths, then the frames, so
numpy arrays and bytes go to disk without being copied into a pickle.
Values that cannot be pickled are kept in memory ("pinned") and counted;
they are never lost.  Neither are values the disk has no room for: a spill
is only attempted when the directory's file system has the space (a failed
write is removed again), the value stays in memory otherwise, and
:attr:`DataStore.spill_error` says why until a spill succeeds again, for
the worker to report and to refuse results that fit nowhere.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import struct
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, BinaryIO

from shoal.protocol._serialize import SerializationError, Serialized, deserialize, serialize
from shoal.worker._sizeof import sizeof as default_sizeof

__all__ = ["DataStore", "read_spill_file", "write_spill_file"]

logger = logging.getLogger(__name__)

_MISSING: Any = object()

#: Room left free on the spill file system beyond each file (its header, metadata).
_ROOM_MARGIN = 64 * 1024

_COUNT = struct.Struct("<I")
_LENGTH = struct.Struct("<Q")


def write_spill_file(path: str, ser: Serialized) -> int:
    """Write ``ser``'s frames to ``path``; return the bytes written."""
    lengths = [memoryview(frame).nbytes for frame in ser.frames]
    header = _COUNT.pack(len(lengths)) + b"".join(_LENGTH.pack(n) for n in lengths)
    with open(path, "wb") as f:
        f.write(header)
        f.writelines(ser.frames)
    return len(header) + sum(lengths)


def _read_exactly(f: BinaryIO, n: int, path: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise OSError(f"spill file {path} is truncated")
    return data


def read_spill_file(path: str) -> Serialized:
    """Read back what :func:`write_spill_file` wrote, one buffer for all frames."""
    with open(path, "rb") as f:
        (count,) = _COUNT.unpack(_read_exactly(f, _COUNT.size, path))
        raw = _read_exactly(f, _LENGTH.size * count, path)
        lengths = [_LENGTH.unpack_from(raw, i * _LENGTH.size)[0] for i in range(count)]
        body = bytearray(sum(lengths))  # writable, so numpy arrays read back writable
        if f.readinto(body) != len(body):
            raise OSError(f"spill file {path} is truncated")
    view = memoryview(body)
    frames: list[bytes | memoryview] = []
    offset = 0
    for n in lengths:
        frames.append(view[offset : offset + n])
        offset += n
    return Serialized(frames)


class DataStore(MutableMapping[str, object]):
    """A mapping of task keys to results that spills LRU values to disk.

    ``target_bytes``: spill when the in-memory values exceed it (None: only
    when :meth:`evict` is called).  ``spill_directory``: where a private
    sub-directory for spill files is made (default: the system temp dir);
    it is made when first needed and removed by :meth:`close`.
    """

    def __init__(
        self,
        target_bytes: int | None,
        spill_directory: str | None = None,
        sizeof: Callable[[Any], int] = default_sizeof,
    ) -> None:
        self.target_bytes = target_bytes
        self._parent_directory = spill_directory
        self._directory: str | None = None
        self._cleanup: weakref.finalize | None = None
        self._sizeof = sizeof
        self._lock = threading.RLock()
        self._fast: OrderedDict[str, object] = OrderedDict()  # LRU first
        self._pinned: dict[str, object] = {}  # in memory, cannot be spilled
        self._slow: dict[str, tuple[str, int]] = {}  # key -> (path, bytes on disk)
        self._sizes: dict[str, int] = {}
        self._memory_bytes = 0
        self._pinned_bytes = 0
        self._spilled_bytes = 0
        #: why the last spill failed (no room on disk, an I/O error); None once one succeeds
        self.spill_error: str | None = None
        self._file_counter = 0
        self._warned_unpicklable = False
        self._closed = False
        #: how many values could not be pickled and were kept in memory (cumulative)
        self.unspillable_count = 0

    # -- mapping interface -------------------------------------------------

    def __setitem__(self, key: str, value: object) -> None:
        self.set_with_size(key, value, self._sizeof(value))

    def set_with_size(self, key: str, value: object, nbytes: int) -> None:
        """Store ``value`` whose size is already known (skips :func:`sizeof`)."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"cannot store {key!r}: the data store is closed")
            if key in self._sizes:
                self._discard(key)
            self._sizes[key] = nbytes
            self._fast[key] = value
            self._memory_bytes += nbytes
            if self.target_bytes is not None and nbytes > self.target_bytes:
                self._spill(key)  # straight to disk, instead of evicting everything else
            self._spill_to_target()

    def __getitem__(self, key: str) -> object:
        with self._lock:
            if key in self._fast:
                self._fast.move_to_end(key)
                return self._fast[key]
            if key in self._pinned:
                return self._pinned[key]
            if key not in self._slow:
                raise KeyError(key)
            return self._unspill(key)

    def __delitem__(self, key: str) -> None:
        with self._lock:
            if key not in self._sizes:
                raise KeyError(key)
            self._discard(key)

    def __contains__(self, key: object) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            keys = list(self._sizes)
        return iter(keys)

    def pop(self, key: str, default: object = _MISSING) -> object:
        """Remove ``key`` and return its value; a spilled one is read, not re-stored."""
        with self._lock:
            if key not in self._sizes:
                if default is _MISSING:
                    raise KeyError(key)
                return default
            value = self._peek(key)
            self._discard(key)
            return value

    def discard(self, key: str) -> bool:
        """Forget ``key`` if present, never reading it from disk; return whether it was."""
        with self._lock:
            if key not in self._sizes:
                return False
            self._discard(key)
            return True

    def get_serialized(self, key: str) -> Serialized:
        """``key``'s value as frames, to send to a peer.

        A spilled value's frames come straight from its file: no unpickling,
        and it stays on disk instead of pushing other values out of memory.
        """
        with self._lock:
            if key in self._slow:
                return read_spill_file(self._slow[key][0])
            if key in self._fast:
                value = self._fast[key]
                self._fast.move_to_end(key)
            else:
                value = self._pinned[key]
        return serialize(value)

    def _peek(self, key: str) -> object:
        """The value of ``key`` without changing where it lives."""
        if key in self._fast:
            return self._fast[key]
        if key in self._pinned:
            return self._pinned[key]
        return deserialize(read_spill_file(self._slow[key][0]))

    def clear(self) -> None:
        """Forget every value, without reading spilled ones back (unlike the mixin's)."""
        with self._lock:
            for key in list(self._sizes):
                self._discard(key)

    def __repr__(self) -> str:
        return (
            f"<DataStore {len(self)} keys: {self._memory_bytes} bytes in memory, "
            f"{len(self._slow)} spilled ({self._spilled_bytes} bytes on disk)>"
        )

    # -- accounting ----------------------------------------------------------

    @property
    def memory_bytes(self) -> int:
        """Sum of the sizes of the values held in memory (pinned ones included)."""
        return self._memory_bytes

    @property
    def spillable_bytes(self) -> int:
        """Bytes in memory that could be spilled (pinned values excluded)."""
        return self._memory_bytes - self._pinned_bytes

    @property
    def spilled_bytes(self) -> int:
        """Bytes of the spill files on disk."""
        return self._spilled_bytes

    @property
    def spilled_count(self) -> int:
        """How many values are on disk."""
        return len(self._slow)

    @property
    def directory(self) -> str | None:
        """The spill directory, once something has been spilled."""
        return self._directory

    def nbytes(self, key: str) -> int:
        """The size of ``key``'s value in memory (as measured when stored)."""
        return self._sizes[key]

    def is_spilled(self, key: str) -> bool:
        """Whether ``key``'s value currently lives on disk."""
        return key in self._slow

    # -- spilling ------------------------------------------------------------

    def evict(self) -> int:
        """Spill the least recently used value now; return its size (0: nothing to spill).

        The memory monitor calls this when the process uses too much memory
        even though the managed size is within target.
        """
        with self._lock:
            while self._fast:
                key = next(iter(self._fast))
                nbytes = self._sizes[key]
                if self._spill(key):
                    return nbytes
                if key in self._fast:  # an I/O error: give up for now
                    return 0
            return 0

    def _spill_to_target(self) -> None:
        target = self.target_bytes
        if target is None:
            return
        while self._memory_bytes > target and self._fast:
            key = next(iter(self._fast))
            if not self._spill(key) and key in self._fast:
                return  # disk trouble; keep everything in memory for now

    def _spill(self, key: str) -> bool:
        """Move ``key`` from memory to disk; False if it stayed in memory."""
        value = self._fast[key]
        try:
            ser = serialize(value)
        except SerializationError as exc:
            self._pin(key, exc)
            return False
        path = None
        try:
            directory = self._spill_dir()
            self._check_room(directory, ser.nbytes)
            path = os.path.join(directory, f"{self._file_counter}.spill")
            self._file_counter += 1
            written = write_spill_file(path, ser)
        except OSError as exc:
            if path is not None:
                self._remove_file(path)
            self._spill_failed(key, exc)
            return False
        del self._fast[key]
        self._memory_bytes -= self._sizes[key]
        self._slow[key] = (path, written)
        self._spilled_bytes += written
        if self.spill_error is not None:
            logger.info("spilling to %s works again", self._directory)
            self.spill_error = None
        return True

    @staticmethod
    def _check_room(directory: str, nbytes: int) -> None:
        """Raise ENOSPC unless ``directory``'s file system has room for ``nbytes`` more."""
        stat = os.statvfs(directory)
        free = stat.f_bavail * stat.f_frsize
        if free < nbytes + _ROOM_MARGIN:
            raise OSError(errno.ENOSPC, f"No space left on device ({nbytes} bytes to write, "
                          f"{free} free)", directory)

    def _spill_failed(self, key: str, exc: OSError) -> None:
        """Keep ``key`` in memory and remember why; warn once per stretch of failures."""
        self._fast.move_to_end(key)
        first = self.spill_error is None
        where = exc.filename or self._directory or self._parent_directory
        self.spill_error = f"cannot spill to {where}: {exc.strerror or exc}"
        if first:
            logger.warning("%s; keeping results in memory (%r and any more)", self.spill_error, key)

    def _pin(self, key: str, exc: Exception) -> None:
        if not self._warned_unpicklable:
            self._warned_unpicklable = True
            logger.warning(
                "keeping %r in memory: it cannot be spilled to disk (%s); "
                "further unpicklable results are kept in memory silently",
                key,
                exc,
            )
        self._pinned[key] = self._fast.pop(key)
        self._pinned_bytes += self._sizes[key]
        self.unspillable_count += 1

    def _unspill(self, key: str) -> object:
        path, written = self._slow[key]
        value = deserialize(read_spill_file(path))
        nbytes = self._sizes[key]
        if self.target_bytes is not None and nbytes > self.target_bytes:
            return value  # larger than the whole target: it lives on disk
        del self._slow[key]
        self._spilled_bytes -= written
        self._remove_file(path)
        self._fast[key] = value
        self._memory_bytes += nbytes
        self._spill_to_target()
        return value

    def _discard(self, key: str) -> None:
        nbytes = self._sizes.pop(key)
        if key in self._fast:
            del self._fast[key]
            self._memory_bytes -= nbytes
        elif key in self._pinned:
            del self._pinned[key]
            self._memory_bytes -= nbytes
            self._pinned_bytes -= nbytes
        else:
            path, written = self._slow.pop(key)
            self._spilled_bytes -= written
            self._remove_file(path)

    def _spill_dir(self) -> str:
        if self._directory is None:
            parent = self._parent_directory
            if parent is not None:
                os.makedirs(parent, exist_ok=True)
            self._directory = tempfile.mkdtemp(prefix="shoal-spill-", dir=parent)
            # removes the directory even if close() is never called
            self._cleanup = weakref.finalize(
                self, shutil.rmtree, self._directory, ignore_errors=True
            )
        return self._directory

    @staticmethod
    def _remove_file(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        """Forget every value and delete the spill directory."""
        with self._lock:
            self._closed = True
            self._fast.clear()
            self._pinned.clear()
            self._slow.clear()
            self._sizes.clear()
            self._memory_bytes = self._pinned_bytes = self._spilled_bytes = 0
            if self._cleanup is not None:
                self._cleanup()
            self._directory = None
