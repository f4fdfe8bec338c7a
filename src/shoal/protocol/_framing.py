"""Length-prefixed framing of multi-frame messages.

A message on the wire is::

    u64 total length of what follows (little endian)
    u32 number of frames  n
    u64 length word of each frame, n times
    the frames, back to back

A length word is the frame's length, or ``SHARED_FRAME | size`` for a frame
whose bytes travel through shared memory (``comm/_shared.py``): on the wire
such a frame is only its ``SHARED_TOKEN_BYTES``-byte token.  A large frame
that is the whole of a ``bytes`` object on the sender (a ``bytes`` value sent
out of band) carries ``BYTES_FRAME`` too: a receiver may receive it straight
into a new ``bytes`` object, which then is the value, instead of into a
buffer the value is copied out of (``protocol/_memory.py``).

The total length comes first so that a reader can refuse an oversized
message before allocating anything for it.  A declared length is only a
claim: readers commit memory as the bytes arrive (see ``comm/_tcp.py``), so
the limit bounds what one honest message may carry, not what a lying header
costs.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

from .._exceptions import FramingError

__all__ = ["BYTES_FRAME", "HANDSHAKE_MAX_BYTES", "MAX_MESSAGE_BYTES", "SHARED_FRAME",
           "SHARED_TOKEN_BYTES",
           "FramingError", "pack_frames_prelude", "unpack_frame_lengths", "unpack_frame_words"]

#: Largest message a peer may send by default; anything larger closes the
#: connection.  Configurable per process (``--max-message-size``, or the
#: ``SHOAL_MAX_MESSAGE_BYTES`` environment variable; see ``comm.CommLimits``).
MAX_MESSAGE_BYTES = 512 * 1024**2
#: Largest message a peer may send before the handshake: a handshake is tiny.
HANDSHAKE_MAX_BYTES = 64 * 1024
#: Most frames one message may hold.  Out-of-band buffers are at least 64 KiB,
#: so an honest message of MAX_MESSAGE_BYTES holds a few thousand.
MAX_FRAMES = 100_000

#: The flag of a length word whose frame is in shared memory.
SHARED_FRAME = 1 << 63
#: The flag of a length word whose frame was a whole ``bytes`` object.
BYTES_FRAME = 1 << 62
#: Frames at least this large are flagged so (smaller ones are not worth it).
BYTES_FRAME_MIN = 64 * 1024
#: A length word's bits that hold a size (the others are flags).
_SIZE_MASK = (1 << 56) - 1
#: What a shared frame occupies on the wire: the token its memory was sent under.
SHARED_TOKEN_BYTES = 16

_TOTAL = struct.Struct("<Q")
#: frame count -> the layout of a prelude: total, count, length words (kept
#: for the usual few frames)
_PRELUDES: dict[int, struct.Struct] = {}
_PRELUDES_KEPT = 64
_COUNT = struct.Struct("<I")


def frame_nbytes(frame: bytes | memoryview) -> int:
    """A frame's size in bytes (a bytes object's without making a view of it)."""
    return len(frame) if type(frame) is bytes else memoryview(frame).nbytes


def pack_frames_prelude(frames: Sequence[bytes | memoryview],
                        shared: Mapping[int, int] | None = None) -> bytes:
    """The header that goes before ``frames`` (which are written unchanged).

    ``shared`` maps the index of each frame that is a shared-memory token to
    the size of the memory it stands for.
    """
    lengths = [frame_nbytes(f) for f in frames]
    words = lengths
    whole = [i for i, f in enumerate(frames) if type(f) is memoryview
             and lengths[i] >= BYTES_FRAME_MIN and type(f.obj) is bytes
             and lengths[i] == len(f.obj)]
    if shared or whole:
        words = list(lengths)
        for index in whole:
            words[index] |= BYTES_FRAME
        for index, size in (shared or {}).items():
            words[index] = SHARED_FRAME | size
    count = len(words)
    layout = _PRELUDES.get(count)
    if layout is None:
        layout = struct.Struct(f"<QI{count}Q")
        if count <= _PRELUDES_KEPT:
            _PRELUDES[count] = layout
    return layout.pack(_COUNT.size + 8 * count + sum(lengths), count, *words)


def unpack_total(header: bytes | memoryview, limit: int = MAX_MESSAGE_BYTES) -> int:
    (total,) = _TOTAL.unpack(header)
    if total > limit:
        raise FramingError(f"message of {total} bytes exceeds the limit of {limit} bytes")
    if total < _COUNT.size:
        raise FramingError(f"message of {total} bytes is too short to hold a frame count")
    return total


def table_bytes(count: int) -> int:
    """Bytes of a message body before its frames: the count and the length words."""
    if count > MAX_FRAMES:
        raise FramingError(f"message announces {count} frames, more than the {MAX_FRAMES} allowed")
    return _COUNT.size + 8 * count


def unpack_count(body: bytes | memoryview) -> int:
    return int(_COUNT.unpack_from(body, 0)[0])


def unpack_frame_words(body: bytes | memoryview, total: int, limit: int = MAX_MESSAGE_BYTES,
                       ) -> tuple[list[int], list[int], list[int], int]:
    """Each frame's length on the wire, each frame's shared size (0 for a frame
    that is on the wire), the indices of the frames flagged ``BYTES_FRAME``,
    and the offset where frame data starts.

    ``body`` needs to hold the table only; ``total`` is the body's length.
    """
    count = unpack_count(body)
    end = table_bytes(count)
    if end > min(len(body), total):
        raise FramingError(f"message announces {count} frames, more than it holds")
    wire: list[int] = []
    shared: list[int] = []
    whole: list[int] = []
    for word in struct.unpack_from(f"<{count}Q", body, _COUNT.size):
        if word & BYTES_FRAME:
            word &= ~BYTES_FRAME
            whole.append(len(wire))
        if word & SHARED_FRAME:
            size = word & _SIZE_MASK
            if size != word & ~SHARED_FRAME or not size:
                raise FramingError(f"a shared frame has an invalid length word {word:#x}")
            wire.append(SHARED_TOKEN_BYTES)
            shared.append(size)
        else:
            wire.append(word)
            shared.append(0)
    if end + sum(wire) != total:
        raise FramingError("frame lengths do not add up to the message length")
    if total + sum(shared) > limit:
        raise FramingError(f"message of {total + sum(shared)} bytes (with its shared memory) "
                           f"exceeds the limit of {limit} bytes")
    return wire, shared, whole, end


def unpack_frame_lengths(body: memoryview) -> tuple[list[int], int]:
    """Frame lengths and the offset where frame data starts within ``body``."""
    wire, _, _, end = unpack_frame_words(body, len(body), limit=len(body) + _SIZE_MASK)
    return wire, end


TOTAL_HEADER_BYTES = _TOTAL.size
