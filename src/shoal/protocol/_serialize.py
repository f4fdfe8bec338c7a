"""Turning Python objects into frames and back.

Functions, arguments and results travel as pickle protocol 5 with
out-of-band buffers: the pickle stream is one small frame and every large
buffer (bytes, numpy arrays, memoryviews) is a frame of its own, sent without
being copied into the pickle.  The standard pickler is tried first because it
is several times faster than cloudpickle for plain data; cloudpickle takes
over for lambdas, closures and functions defined in ``__main__``.
"""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle

from .._exceptions import SerializationError
from ._pickle_guard import check_memo

__all__ = ["SerializationError", "Serialized", "deserialize", "refuse_memo_bombs", "serialize"]

#: Buffers smaller than this are left inside the pickle stream: a frame of
#: its own costs more than copying a few kilobytes.
OUT_OF_BAND_MIN_BYTES = 64 * 1024




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


def serialize(obj: Any) -> Serialized:
    """Pickle ``obj`` into a :class:`Serialized`, large buffers out of band."""
    buffers: list[pickle.PickleBuffer] = []

    def keep_large(buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes < OUT_OF_BAND_MIN_BYTES:
            return True  # serialise in band
        buffers.append(buf)
        return False

    try:
        stream = pickle.dumps(obj, protocol=5, buffer_callback=keep_large)
        if _by_reference_to_main(stream):
            raise pickle.PicklingError("refers to __main__")
    except Exception:  # noqa: BLE001 - any pickling failure: cloudpickle may manage
        buffers.clear()
        try:
            stream = cloudpickle.dumps(obj, protocol=5, buffer_callback=keep_large)
        except Exception as exc:  # user code's __reduce__ may raise anything
            raise SerializationError(f"cannot pickle {_describe(obj)}: {exc}") from exc
    return Serialized([stream, *(buf.raw() for buf in buffers)])


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
