"""Length-prefixed framing of multi-frame messages.

A message on the wire is::

    u64 total length of what follows (little endian)
    u32 number of frames  n
    u64 length of each frame, n times
    the frames, back to back

The total length comes first so that a reader can refuse an oversized
message before allocating anything for it.  A declared length is only a
claim: readers commit memory as the bytes arrive (see ``comm/_tcp.py``), so
the limit bounds what one honest message may carry, not what a lying header
costs.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from .._exceptions import FramingError

__all__ = ["HANDSHAKE_MAX_BYTES", "MAX_MESSAGE_BYTES", "FramingError", "pack_frames_prelude",
           "unpack_frame_lengths"]

#: Largest message a peer may send by default; anything larger closes the
#: connection.  Configurable per process (``--max-message-size``, or the
#: ``SHOAL_MAX_MESSAGE_BYTES`` environment variable; see ``comm.CommLimits``).
MAX_MESSAGE_BYTES = 512 * 1024**2
#: Largest message a peer may send before the handshake: a handshake is tiny.
HANDSHAKE_MAX_BYTES = 64 * 1024
#: Most frames one message may hold.  Out-of-band buffers are at least 64 KiB,
#: so an honest message of MAX_MESSAGE_BYTES holds a few thousand.
MAX_FRAMES = 100_000

_TOTAL = struct.Struct("<Q")
_COUNT = struct.Struct("<I")




def pack_frames_prelude(frames: Sequence[bytes | memoryview]) -> bytes:
    """The header that goes before ``frames`` (which are written unchanged)."""
    lengths = [memoryview(f).nbytes for f in frames]
    count = len(lengths)
    body = _COUNT.pack(count) + struct.pack(f"<{count}Q", *lengths)
    return _TOTAL.pack(len(body) + sum(lengths)) + body


def unpack_total(header: bytes | memoryview, limit: int = MAX_MESSAGE_BYTES) -> int:
    (total,) = _TOTAL.unpack(header)
    if total > limit:
        raise FramingError(f"message of {total} bytes exceeds the limit of {limit} bytes")
    if total < _COUNT.size:
        raise FramingError(f"message of {total} bytes is too short to hold a frame count")
    return total


def unpack_frame_lengths(body: memoryview) -> tuple[list[int], int]:
    """Frame lengths and the offset where frame data starts within ``body``."""
    (count,) = _COUNT.unpack_from(body, 0)
    end = _COUNT.size + 8 * count
    if count > MAX_FRAMES:
        raise FramingError(f"message announces {count} frames, more than the {MAX_FRAMES} allowed")
    if end > len(body):
        raise FramingError(f"message announces {count} frames, more than it holds")
    lengths = list(struct.unpack_from(f"<{count}Q", body, _COUNT.size))
    if end + sum(lengths) != len(body):
        raise FramingError("frame lengths do not add up to the message length")
    return lengths, end


TOTAL_HEADER_BYTES = _TOTAL.size
