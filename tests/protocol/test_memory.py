"""Buffer addresses through the buffer protocol, and large bytes filled in one copy."""

from __future__ import annotations

import numpy as np

from shoal.protocol import deserialize, serialize
from shoal.protocol._memory import buffer_address, bytearray_from, bytes_from

MiB = 1024 * 1024


def test_read_only_and_writable_buffers_have_addresses():
    data = b"x" * 100
    start, size = buffer_address(data)
    assert start and size == 100
    assert buffer_address(memoryview(data)[10:]) == (start + 10, 90)
    array = np.zeros(1000, dtype="u1")
    assert buffer_address(array) == (array.ctypes.data, 1000)
    assert buffer_address(object()) is None
    assert buffer_address(np.zeros(10)[::2]) is None  # not contiguous


def test_large_bytes_and_bytearrays_are_equal_copies_of_their_source():
    source = np.arange(5 * MiB, dtype="u1")
    made = bytes_from(memoryview(source)[3:])
    assert type(made) is bytes and made == source.tobytes()[3:]
    assert hash(made) == hash(source.tobytes()[3:])
    mutable = bytearray_from(source)
    assert type(mutable) is bytearray and mutable == source.tobytes()
    mutable[0] = 255  # its own memory
    assert source[0] == 0
    assert bytes_from(b"small") == b"small" and bytearray_from(b"") == bytearray()


def test_large_bytes_values_round_trip_through_their_frames():
    value = bytes(range(256)) * (16 * 1024)
    ser = serialize(value)
    assert len(ser.frames) == 2  # out of band
    assert deserialize(ser) == value
    assert deserialize(serialize([bytearray(value)])) == [bytearray(value)]
