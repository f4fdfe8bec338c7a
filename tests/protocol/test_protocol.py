"""Frames, messages and serialization."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest

from shoal.protocol import (
    FramingError,
    MessageError,
    SerializationError,
    Serialized,
    ToPickle,
    deserialize,
    dumps,
    loads,
    pack_frames_prelude,
    serialize,
    serialize_call,
    unpack_frame_lengths,
)
from shoal.protocol._framing import BYTES_FRAME_MIN, unpack_frame_words, unpack_total
from shoal.protocol._task import KeyRef, substitute


def test_message_round_trip_keeps_serialized_values_opaque():
    value = serialize({"a": 1})
    frames = dumps({"op": "x", "v": value, "n": [1, 2], "p": ToPickle({3})})
    msg = loads(frames)
    assert msg["op"] == "x" and msg["n"] == [1, 2]
    assert isinstance(msg["v"], Serialized) and deserialize(msg["v"]) == {"a": 1}
    assert deserialize(msg["p"]) == {3}


def test_large_array_travels_out_of_band_without_copy():
    array = np.arange(1_000_000, dtype="f8")
    ser = serialize(array)
    assert len(ser.frames) == 2 and memoryview(ser.frames[1]).nbytes == array.nbytes
    assert np.array_equal(deserialize(ser), array)


def test_large_call_arguments_travel_out_of_band_and_small_ones_in_the_stream():
    big, blob = b"x" * 100_000, bytearray(b"y" * 70_000)
    ser = serialize_call((big, 1, [2]), {"blob": blob, "n": 3})
    assert sorted(memoryview(f).nbytes for f in ser.frames[1:]) == [70_000, 100_000]
    args, kwargs = deserialize(ser)
    assert args == (big, 1, [2]) and kwargs == {"blob": blob, "n": 3}
    assert type(args[0]) is bytes and type(kwargs["blob"]) is bytearray
    small = serialize_call((b"x" * 100, np.arange(10)), {})
    assert len(small.frames) == 1 and deserialize(small)[0][0] == b"x" * 100


def test_lambda_and_main_functions_use_cloudpickle():
    f = deserialize(serialize(lambda x: x * 3))
    assert f(2) == 6


def test_unpicklable_object_error_names_it():
    import threading

    with pytest.raises(SerializationError, match="lock"):
        serialize(threading.Lock())


def test_unpickling_garbage_is_a_serialization_error():
    with pytest.raises(SerializationError):
        deserialize(Serialized([b"not a pickle"]))


def test_framing_round_trip_and_limits():
    frames = [b"abc", b"", b"defg"]
    prelude = pack_frames_prelude(frames)
    total = unpack_total(prelude[:8])
    body = memoryview(prelude[8:] + b"".join(frames))
    assert len(body) == total
    lengths, offset = unpack_frame_lengths(body)
    assert lengths == [3, 0, 4] and offset == 4 + 8 * 3
    with pytest.raises(FramingError, match="exceeds the limit"):
        unpack_total(struct.pack("<Q", 10**12), limit=10**9)
    with pytest.raises(FramingError):
        unpack_frame_lengths(memoryview(struct.pack("<I", 5) + b"x"))


def test_only_large_frames_that_are_whole_bytes_objects_are_flagged():
    big = b"b" * BYTES_FRAME_MIN
    frames = [b"head", memoryview(big), memoryview(big)[1:], memoryview(bytearray(big)),
              memoryview(b"small"), big]
    prelude = pack_frames_prelude(frames)
    body = prelude[8:]
    wire, shared, whole, _ = unpack_frame_words(body, unpack_total(prelude[:8]))
    assert whole == [1]  # not a slice, a bytearray, a small one, nor a bare bytes frame
    assert wire == [len(memoryview(f)) for f in frames] and not any(shared)


def test_malformed_messages_are_refused():
    with pytest.raises(MessageError):
        loads([b"\xc1"])  # a msgpack byte that is never valid
    with pytest.raises(MessageError):
        loads([])
    with pytest.raises(TypeError):
        dumps({"op": object()})


def test_keyref_substitution_nested():
    args = ([KeyRef("a"), {"k": (KeyRef("b"), 3)}], {KeyRef("a")} - {KeyRef("a")})
    out = substitute(args, {"a": None, "b": 2})
    assert out == ([None, {"k": (2, 3)}], set())
    assert pickle.loads(pickle.dumps(KeyRef("z"))) == KeyRef("z")
