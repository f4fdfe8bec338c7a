"""The wire format: frames, msgpack messages, serialization, handshake.

Errors (part of the one tree drawn in :mod:`shoal._exceptions`)::

    ProtocolError (ValueError)
    ├── FramingError       bytes that are not a well-formed message
    └── MessageError       frames that do not decode into a message
    VersionMismatchError (ConnectionError)  a peer speaking another protocol version
    SerializationError (TypeError)   a value that cannot be (un)pickled
"""

from .._exceptions import ProtocolError, VersionMismatchError
from ._framing import MAX_MESSAGE_BYTES, FramingError, pack_frames_prelude, unpack_frame_lengths
from ._messages import MessageError, ToPickle, dumps, loads
from ._serialize import SerializationError, Serialized, deserialize, serialize, serialize_call

#: Bumped whenever a message changes incompatibly.
PROTOCOL_VERSION = 2





__all__ = [
    "MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "FramingError",
    "MessageError",
    "ProtocolError",
    "SerializationError",
    "Serialized",
    "ToPickle",
    "VersionMismatchError",
    "deserialize",
    "dumps",
    "loads",
    "pack_frames_prelude",
    "serialize",
    "serialize_call",
    "unpack_frame_lengths",
]
