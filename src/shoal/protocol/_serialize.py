"""Turning Python objects into frames and back.

Functions, arguments and results travel as pickle protocol 5 with
out-of-band buffers: the pickle stream is one small frame and every large
buffer (numpy arrays, pandas and pyarrow columns, bytes, bytearrays,
memoryviews) is a frame of its own, sent without being copied into the
pickle.  numpy, pandas and pyarrow hand their buffers out of band by
themselves; ``bytes``, ``bytearray`` and ``memoryview`` do not (pickle
writes the first two into the stream, and refuses the third), so large ones
are wrapped on the way out, whether they are the value itself or an item of
a list, tuple or dict value (up to :data:`SCAN_MAX_ITEMS` items, not deeper).
On the way in a memoryview is rebuilt over the received frame without a
copy; a bytes or bytearray object owns its memory, so it is one copy (a large
bytes one over the idle cores, see ``_memory.py``).

numpy pickles a datetime64 or timedelta64 array in band (its buffer export
refuses those dtypes), so every time-indexed pandas frame used to carry its
timestamps inside the pickle stream, copied there and back.  When a large
stream shows such a dtype, the value is pickled again by a pickler that hands
those arrays out of band as their int64 view; the plain pickler stays the
fast path for everything else.

The standard pickler is tried first because it is several times faster than
cloudpickle for plain data; cloudpickle takes over for lambdas, closures and
functions defined in ``__main__``.
"""

from __future__ import annotations

import io
import pickle
import sys
from typing import Any

import cloudpickle

from .._exceptions import SerializationError
from ._memory import bytearray_from, bytes_from
from ._pickle_guard import check_memo

__all__ = ["SerializationError", "Serialized", "deserialize", "refuse_memo_bombs", "serialize",
           "serialize_call"]

#: Buffers smaller than this are left inside the pickle stream: a frame of
#: its own costs more than copying a few kilobytes.
OUT_OF_BAND_MIN_BYTES = 64 * 1024
#: Lists, tuples and dicts up to this long are looked into for large buffers.
SCAN_MAX_ITEMS = 1000

_BUFFER_TYPES = (bytes, bytearray, memoryview)
#: How numpy's pickle of a datetime64 or timedelta64 dtype begins (the dtype's
#: kind as a short string): a large stream holding one may carry such an array.
_DATETIME_DTYPES = (b"\x8c\x02M8", b"\x8c\x02m8")


class _OutOfBand:
    """Wraps a large bytes-like value so that pickle hands its memory out of band."""

    __slots__ = ("value",)

    def __init__(self, value: bytes | bytearray | memoryview) -> None:
        self.value = value

    def __reduce_ex__(self, protocol: Any) -> tuple:
        value = self.value
        if type(value) is bytes:
            return _bytes_from, (pickle.PickleBuffer(value),)
        if type(value) is bytearray:
            return _bytearray_from, (pickle.PickleBuffer(value),)
        assert isinstance(value, memoryview)
        flat = value if value.c_contiguous else memoryview(bytearray(value.tobytes()))
        return _memoryview_from, (pickle.PickleBuffer(flat), value.format, value.shape,
                                  value.readonly)


def _bytes_from(buf: Any) -> bytes:
    return bytes_from(buf)


def _bytearray_from(buf: Any) -> bytearray:
    return bytearray_from(buf)


def _memoryview_from(buf: Any, fmt: str, shape: tuple[int, ...], readonly: bool) -> memoryview:
    """The memoryview, over the received frame itself."""
    view = memoryview(buf).cast("B")
    if fmt != "B" or len(shape) != 1:
        try:
            view = view.cast(fmt, shape)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            pass  # a format memoryview.cast does not know: keep the bytes
    return view.toreadonly() if readonly else view


def _large_buffer(obj: Any) -> bool:
    return type(obj) in _BUFFER_TYPES and memoryview(obj).nbytes >= OUT_OF_BAND_MIN_BYTES


def _wrap_large_buffers(obj: Any) -> Any:
    """``obj`` with its large bytes-likes wrapped (itself, or one level down).

    Runs for every task's arguments, so the common answer (nothing to wrap)
    takes one type test per item.
    """
    kind = type(obj)
    if kind in _BUFFER_TYPES:
        return _OutOfBand(obj) if _large_buffer(obj) else obj
    if kind is tuple or kind is list:
        if len(obj) > SCAN_MAX_ITEMS:
            return obj
        for item in obj:
            if type(item) in _BUFFER_TYPES and _large_buffer(item):
                return kind(_OutOfBand(x) if _large_buffer(x) else x for x in obj)
        return obj
    if kind is dict and len(obj) <= SCAN_MAX_ITEMS:
        for item in obj.values():
            if type(item) in _BUFFER_TYPES and _large_buffer(item):
                return {k: _OutOfBand(v) if _large_buffer(v) else v for k, v in obj.items()}
    return obj


def serialize_call(args: tuple, kwargs: dict) -> Serialized:
    """The arguments of a call, ``(args, kwargs)``, each large argument out of band."""
    return serialize((_wrap_large_buffers(args), _wrap_large_buffers(kwargs)))


class Serialized:
    """An object already turned into frames; opaque to whoever relays it.

    The scheduler stores and forwards these without ever unpickling user
    data.  ``frames[0]`` is the pickle stream, the rest are its buffers.
    """

    __slots__ = ("frames",)

    def __init__(self, frames: list[bytes | memoryview]) -> None:
        self.frames = frames

    @property
    def nbytes(self) -> int:
        return sum(memoryview(f).nbytes for f in self.frames)

    def compact(self) -> Serialized | bytes | memoryview:
        """Itself, or its lone frame: msgpack carries plain bytes without a Python hook,
        and :func:`deserialize` takes either."""
        return self.frames[0] if len(self.frames) == 1 else self

    def __repr__(self) -> str:
        return f"<Serialized {len(self.frames)} frames, {self.nbytes} bytes>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Serialized) and [bytes(f) for f in self.frames] == [
            bytes(f) for f in other.frames
        ]

    __hash__ = None  # type: ignore[assignment]


def _describe(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


def _by_reference_to_main(stream: bytes) -> bool:
    """Plain pickle stores functions and classes of ``__main__`` by name only,
    which another process cannot resolve; cloudpickle stores them by value."""
    return b"__main__" in stream


class _OutOfBandBuffers(list):
    """pickle's ``buffer_callback``: keeps the large buffers, leaves small ones in band."""

    __slots__ = ()

    def __call__(self, buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes < OUT_OF_BAND_MIN_BYTES:
            return True  # serialise in band
        self.append(buf)
        return False


class _DatetimesOutOfBand(pickle.Pickler):
    """A pickler that hands large datetime64 and timedelta64 arrays out of band."""

    def reducer_override(self, obj: Any) -> Any:
        np = sys.modules.get("numpy")
        if (np is not None and type(obj) is np.ndarray and obj.dtype.kind in "mM"
                and obj.nbytes >= OUT_OF_BAND_MIN_BYTES and obj.flags.c_contiguous):
            return _datetimes_from, (pickle.PickleBuffer(obj.view(np.int64)), obj.dtype.str,
                                     obj.shape)
        return NotImplemented


def _datetimes_from(buf: Any, dtype: str, shape: tuple[int, ...]) -> Any:
    """The datetime64 or timedelta64 array, over the received frame itself."""
    import numpy as np

    return np.frombuffer(buf, dtype=np.int64).view(dtype).reshape(shape)


def _dumps(obj: Any, buffers: _OutOfBandBuffers) -> bytes:
    stream = pickle.dumps(obj, protocol=5, buffer_callback=buffers)
    if len(stream) >= OUT_OF_BAND_MIN_BYTES and any(m in stream for m in _DATETIME_DTYPES):
        buffers.clear()
        out = io.BytesIO()
        _DatetimesOutOfBand(out, protocol=5, buffer_callback=buffers).dump(obj)
        stream = out.getvalue()
    return stream


def serialize(obj: Any) -> Serialized:
    """Pickle ``obj`` into a :class:`Serialized`, large buffers out of band."""
    buffers = _OutOfBandBuffers()
    obj = _wrap_large_buffers(obj)
    try:
        if cloudpickle.list_registry_pickle_by_value():
            # plain pickle would store their functions and classes by name
            raise pickle.PicklingError("modules are registered to be pickled by value")
        stream = _dumps(obj, buffers)
        if _by_reference_to_main(stream):
            raise pickle.PicklingError("refers to __main__")
    except Exception:  # noqa: BLE001 - any pickling failure: cloudpickle may manage
        buffers.clear()
        try:
            stream = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers)
        except Exception as exc:  # user code's __reduce__ may raise anything
            raise SerializationError(f"cannot pickle {_describe(obj)}: {exc}") from exc
    return Serialized([stream, *(buf.raw() for buf in buffers)] if buffers else [stream])


def refuse_memo_bombs(stream: bytes | memoryview) -> None:
    """SerializationError for a pickle that would make the unpickler allocate
    far more than its own size (see :mod:`._pickle_guard`)."""
    index = check_memo(stream)
    if index is not None:
        raise SerializationError(
            f"refused to unpickle a value: its {len(stream)}-byte pickle names memo index "
            f"{index}, which would make it allocate about {16 * index / 1e6:,.0f} MB")


def deserialize(ser: Serialized | bytes | memoryview) -> Any:
    """Inverse of :func:`serialize` (also given a lone frame, as bytes)."""
    if not isinstance(ser, Serialized):
        ser = Serialized([ser])
    refuse_memo_bombs(ser.frames[0])
    try:
        return pickle.loads(ser.frames[0], buffers=ser.frames[1:])
    except Exception as exc:
        raise SerializationError(f"cannot unpickle a value: {exc!r}") from exc
