"""Messages: msgpack maps with an ``"op"``, plus out-of-band frames.

A message is any msgpack-able structure (usually a dict with ``"op"`` or a
list of such dicts, when writes were batched).  Wherever it holds a
:class:`Serialized` value, the value's frames are appended after the msgpack
frame and an extension type records where they start; the reader gets the
same :class:`Serialized` back without unpickling it.  Relays (the scheduler)
therefore never pay to unpickle user data.

Each thread packs with a msgpack ``Packer`` of its own, kept from one
message to the next: a new one allocates a 256 KiB buffer, which an
allocator that maps such blocks on their own (glibc's default) maps, faults
in and unmaps again for each message, some 20 us of a round trip's.  A
packer whose buffer grew for a large message is let go rather than kept.
"""

from __future__ import annotations

import struct
import threading
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


#: A packer that made a msgpack frame larger than this is not kept: its
#: buffer grew as large.
PACKER_KEEP_BYTES = 1024 * 1024


def _default(obj: Any) -> Any:
    frames = _packing.frames
    assert frames is not None
    if isinstance(obj, ToPickle):
        obj = serialize(obj.value)
    if isinstance(obj, Serialized):
        start = len(frames)
        frames.extend(obj.frames)
        return msgpack.ExtType(_EXT_SERIALIZED, _EXT_REF.pack(start, len(obj.frames)))
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"cannot put a {type(obj).__name__} into a message")


def _new_packer() -> msgpack.Packer:
    return msgpack.Packer(default=_default, use_bin_type=True)


class _Packing(threading.local):
    """This thread's packer, and the frames of the message it is packing."""

    def __init__(self) -> None:
        self.packer = _new_packer()
        self.frames: list[bytes | memoryview] | None = None


_packing = _Packing()


def dumps(msg: Any) -> list[bytes | memoryview]:
    """Encode a message into frames; the first frame is msgpack."""
    packing = _packing
    outer = packing.frames  # not None: a value being pickled for a message sends one
    frames: list[bytes | memoryview] = [b""]
    packing.frames = frames
    packer = packing.packer if outer is None else _new_packer()
    try:
        frames[0] = header = packer.pack(msg)  # the packer resets itself if this raises
    finally:
        packing.frames = outer
    if outer is None and len(header) > PACKER_KEEP_BYTES:
        packing.packer = _new_packer()
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
