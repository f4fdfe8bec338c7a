"""Frames, messages and serialization."""

from __future__ import annotations

import pickle
import struct
import threading

import msgpack
import numpy as np
import pytest

from shoal.protocol import (
    FramingError,
    MessageError,
    SerializationError,
    Serialized,
    ToPickle,
    _messages,
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


class _SendsWhenPickled:
    """A value whose pickling sends a message of its own (dumps inside dumps)."""

    def __reduce__(self):
        inner = dumps({"op": "inner", "value": serialize([1, 2])})
        return (list, ([len(inner), bytes(inner[0])],))


def test_each_thread_keeps_its_packer_and_messages_stay_apart():
    first = _messages._packing.packer
    assert dumps({"op": "a"}) and _messages._packing.packer is first  # kept
    with pytest.raises(TypeError, match="cannot put a object"):
        dumps({"op": "bad", "x": object()})
    assert loads(dumps({"op": "after", "n": 1})) == {"op": "after", "n": 1}  # reset by the error
    outer = loads(dumps({"op": "outer", "value": ToPickle(_SendsWhenPickled()), "tail": 7}))
    assert outer["tail"] == 7
    count, inner_header = deserialize(outer["value"])
    assert count == 2 and msgpack.unpackb(inner_header)["op"] == "inner"
    assert _messages._packing.packer is first and _messages._packing.frames is None
    big = dumps({"op": "big", "blob": b"x" * (_messages.PACKER_KEEP_BYTES + 1)})
    assert len(big[0]) > _messages.PACKER_KEEP_BYTES
    assert _messages._packing.packer is not first  # its buffer grew: let go
    elsewhere: list = []
    thread = threading.Thread(target=lambda: elsewhere.append(_messages._packing.packer))
    thread.start()
    thread.join(10)
    assert elsewhere and elsewhere[0] is not _messages._packing.packer


def test_large_array_travels_out_of_band_without_copy():
    array = np.arange(1_000_000, dtype="f8")
    ser = serialize(array)
    assert len(ser.frames) == 2 and memoryview(ser.frames[1]).nbytes == array.nbytes
    assert np.array_equal(deserialize(ser), array)


def test_large_datetime_arrays_travel_out_of_band():
    """numpy pickles datetime64 and timedelta64 arrays in band: a time-indexed
    frame carried its timestamps inside the stream.  They go as frames now,
    rebuilt over the received frame, and the value comes back equal."""
    pd = pytest.importorskip("pandas")
    n = 50_000
    stamps = np.arange(n).astype("M8[us]")
    frame = pd.DataFrame({"x": np.arange(n, dtype="f8"),
                          "at": pd.date_range("2001-01-01", periods=n, freq="s", tz="UTC"),
                          "took": pd.to_timedelta(np.arange(n), unit="s")},
                         index=pd.DatetimeIndex(stamps))
    for value in (stamps, np.arange(n).astype("m8[ns]").reshape(100, -1), frame):
        ser = serialize(value)
        assert len(ser.frames[0]) < 10_000, type(value)
        back = deserialize(ser)
        if isinstance(value, np.ndarray):
            assert back.dtype == value.dtype and np.array_equal(back, value)
        else:
            pd.testing.assert_frame_equal(back, value)
    strided = stamps[::2]  # not contiguous: in band, as before
    ser = serialize(strided)
    assert len(ser.frames) == 1 and np.array_equal(deserialize(ser), strided)
    assert len(serialize(stamps[:100]).frames) == 1  # small: in band


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
