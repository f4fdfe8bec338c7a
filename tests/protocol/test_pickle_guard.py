"""The memo guard: pickles naming a memo index far beyond their size are refused
before the unpickler sees them; every honest pickle passes.

The bombs in these tests are only ever unpickled with small indices (a memo
of a megabyte or two), to show the C unpickler really reads them the way
the guard does; the large ones go to the guard alone.
"""

from __future__ import annotations

import pickle
import pickletools
import random
import struct

import cloudpickle
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.protocol import SerializationError, deserialize, serialize
from shoal.protocol._pickle_guard import MEMO_FLOOR, check_memo

#: What the long fuzz run found (5 hangs in 2.47M inputs): 14 random bytes of a
#: Blob field that push a value and name memo index ~1.2e9.  Unguarded,
#: CPython zeroes a memo of about 10 GB for about 30 s before going on.
FUZZ_BOMB = b"\x8f" + b"r" + struct.pack("<I", 1_200_000_000) + b"\x85\x07\x9a\xff\x03\x11\x00."

#: One of each way to spell "put the top of the stack at memo index i".
SPELLINGS = {
    "LONG_BINPUT": lambda i: b"]r" + struct.pack("<I", i) + b".",
    "LONG_BINPUT after PROTO and FRAME": lambda i: (
        b"\x80\x05\x95\x07\x00\x00\x00\x00\x00\x00\x00]r" + struct.pack("<I", i) + b"."),
    "PUT": lambda i: b"(lp%d\n." % i,
    "PUT with spaces and a sign": lambda i: b"(lp  +%d \n." % i,
    "PUT with underscores": lambda i: b"(lp" + f"{i:_}".encode() + b"\n.",
    "PUT with leading zeros": lambda i: b"(lp000%d\n." % i,
    "PUT cut at a NUL": lambda i: b"(lp%d\x00anything\n." % i,
    "after a string holding opcodes": lambda i: (
        b"C\x06r\xff\xff\xff\xffp0]r" + struct.pack("<I", i) + b"."),
}


def test_the_fuzz_found_bomb_is_refused_by_the_guard():
    assert check_memo(FUZZ_BOMB) == 1_200_000_000
    assert check_memo(memoryview(FUZZ_BOMB)) == 1_200_000_000


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_every_spelling_of_a_large_memo_index_is_refused(spelling):
    make = SPELLINGS[spelling]
    assert check_memo(make(1_200_000_000)) == 1_200_000_000
    with pytest.raises(SerializationError, match="memo index 100000"):
        deserialize(make(100_000))
    # ... and the unpickler does read each as a memo index (100,000: 1.6 MB).
    pickle.loads(make(100_000))


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_a_memo_index_the_stream_can_account_for_is_allowed(spelling):
    assert check_memo(SPELLINGS[spelling](MEMO_FLOOR - 1)) is None


def test_what_follows_stop_or_a_refused_opcode_is_never_read():
    bomb = SPELLINGS["LONG_BINPUT"](1_200_000_000)
    assert check_memo(b"N." + bomb) is None
    assert check_memo(b"N\xff" + bomb) is None  # 0xff: the unpickler stops ("invalid load key")
    assert check_memo(b"\x8c\x09" + bomb) is None  # the bomb is the string's data


def test_a_refused_pickle_gets_a_clear_error():
    with pytest.raises(SerializationError) as info:
        deserialize(SPELLINGS["PUT"](2**25))
    assert "refused to unpickle" in str(info.value) and "MB" in str(info.value)


# ------------------------------------------------------------ honest pickles pass

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    | st.binary(),
    lambda inner: st.lists(inner) | st.tuples(inner, inner) | st.frozensets(st.integers())
    | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=40,
)


@settings(deadline=None, derandomize=True, database=None)
@given(values, st.integers(0, pickle.HIGHEST_PROTOCOL))
def test_every_honest_pickle_of_every_protocol_passes(value, protocol):
    shared = [value, value]  # memoized twice: GET/BINGET/MEMOIZE opcodes too
    assert check_memo(pickle.dumps(shared, protocol=protocol)) is None
    assert check_memo(cloudpickle.dumps(shared, protocol=protocol)) is None


def test_old_protocols_with_more_memo_entries_than_the_floor_pass():
    many = [f"s{i}" for i in range(3 * MEMO_FLOOR)]
    for protocol in (0, 1, 2, 3):
        stream = pickle.dumps(many, protocol=protocol)
        assert b"r" in stream or protocol == 0
        assert check_memo(stream) is None


def test_what_shoal_sends_passes():
    def local(x):
        return x + 1

    for value in [local, ((1, "result"), {"k": 1.5}), list(range(10_000)),
                  [random.Random(0).random() for _ in range(10_000)], b"r" * 100_000]:
        ser = serialize(value)
        assert check_memo(ser.frames[0]) is None
        deserialize(ser)


# ------------------------------------------------------------ the walk reads as the unpickler

def _reference(stream: bytes) -> int | None:
    """The first large PUT/LONG_BINPUT index, read by pickletools (slow, but the
    standard library's own reading of the opcodes)."""
    bound = max(len(stream), MEMO_FLOOR)
    try:
        for op, arg, _ in pickletools.genops(stream):
            if op.name in ("PUT", "LONG_BINPUT") and isinstance(arg, int) and arg >= bound:
                return arg
    except (ValueError, TypeError):  # where pickletools stops, the unpickler stops too
        return None
    return None


@settings(deadline=None, derandomize=True, database=None, max_examples=400)
@given(values, st.integers(0, pickle.HIGHEST_PROTOCOL), st.lists(
    st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=6)), max_size=4))
def test_a_broken_pickle_the_standard_reading_flags_is_flagged(value, protocol, edits):
    stream = bytearray(pickle.dumps([value, value], protocol=protocol))
    for at, data in edits:
        at %= len(stream)
        stream[at:at + len(data)] = data
    if random.Random(len(stream)).random() < 0.5:  # plant a bomb somewhere
        at = edits[0][0] % len(stream) if edits else 0
        stream[at:at] = b"]r" + struct.pack("<I", 1_200_000_000)
    found = _reference(bytes(stream))
    if found is not None:
        assert check_memo(bytes(stream)) == found
