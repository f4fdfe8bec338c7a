"""Messages: msgpack maps with an ``"op"``, plus out-of-band frames.

A message is any msgpack-able structure (usually a dict with ``"op"`` or a
list of such dicts, when writes were batched).  Wherever it holds a
:class:`Serialized` value, the value's frames are appended after the msgpack
frame and an extension type records where they start; the reader gets the
same :class:`Serialized` back without unpickling it.  Relays (the scheduler)
therefore never pay to unpickle user data.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import msgpack

from .._exceptions import MessageError
from ._serialize import Serialized, serialize

__all__ = ["MessageError", "ToPickle", "dumps", "loads"]

_EXT_SERIALIZED = 1
_EXT_REF = struct.Struct("<II")




class ToPickle:
    """Marks a value to be pickled (out of band) when the message is written."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def dumps(msg: Any) -> list[bytes | memoryview]:
    """Encode a message into frames; the first frame is msgpack."""
    frames: list[bytes | memoryview] = [b""]

    def default(obj: Any) -> Any:
        if isinstance(obj, ToPickle):
            obj = serialize(obj.value)
        if isinstance(obj, Serialized):
            start = len(frames)
            frames.extend(obj.frames)
            return msgpack.ExtType(_EXT_SERIALIZED, _EXT_REF.pack(start, len(obj.frames)))
        if isinstance(obj, (set, frozenset)):
            return list(obj)
        raise TypeError(f"cannot put a {type(obj).__name__} into a message")

    frames[0] = msgpack.packb(msg, default=default, use_bin_type=True)
    return frames


def loads(frames: Sequence[bytes | memoryview]) -> Any:
    """Decode frames made by :func:`dumps`."""
    if not frames:
        raise MessageError("a message needs at least one frame")

    def ext_hook(code: int, data: bytes) -> Any:
        if code != _EXT_SERIALIZED or len(data) != _EXT_REF.size:
            raise MessageError(f"unknown extension type {code} in message")
        start, count = _EXT_REF.unpack(data)
        if start < 1 or start + count > len(frames):
            raise MessageError("a serialized value points past the message's frames")
        return Serialized(list(frames[start : start + count]))

    try:
        return msgpack.unpackb(frames[0], ext_hook=ext_hook, raw=False, strict_map_key=False)
    except MessageError:
        raise
    except Exception as exc:
        raise MessageError(f"malformed message: {exc}") from exc
