"""Refuse pickles whose memo indices would allocate far more than their size.

CPython's C unpickler sizes its memo as an array up to the largest index a
``LONG_BINPUT`` (4-byte index) or ``PUT`` (decimal index) names, and zeroes
it: a 14-byte pickle naming index 1.2e9 makes ``pickle.loads`` write about
10 GB for 30 s before it looks at anything else.  No honest pickle does that:
a pickler numbers its memo entries 0, 1, 2, ... one per object it stores, so
every index is smaller than the stream itself (and the protocol 5 streams
shoal makes use ``MEMOIZE`` only, which cannot name an index).

The check must cost nothing for the tiny payloads of tiny tasks.  One regular
expression search (C speed) looks for a byte that *could* be such an opcode
naming a large index; only a stream that has one (most text does: an ``r``
followed by four letters reads as a large index) is walked opcode by opcode,
exactly as the unpickler will read it, runs of fixed-size opcodes skipped by
another regular expression.  Out-of-band buffers are never looked at: they
are data, not opcodes.

Unpickling runs code of the sender's choosing anyway (that is what tasks
are), so this is not a sandbox: it keeps a peer's few bytes from costing
gigabytes, as the framing keeps a header from committing memory.
"""

from __future__ import annotations

import pickletools
import re

__all__ = ["MEMO_FLOOR", "check_memo"]

#: Memo indices below this are allowed whatever the stream's size: a memo of
#: this many entries costs about a megabyte.
MEMO_FLOOR = 1 << 16

_LONG_BINPUT = ord("r")
_PUT = ord("p")
#: Each opcode of fixed size, with the distance to the next opcode.
_STEP: dict[int, int] = {}
#: Opcodes whose argument is a length then that many bytes: (length size, signed).
_COUNTED: dict[int, tuple[int, bool]] = {}
#: How many lines each newline-terminated opcode reads (GLOBAL and INST: two).
_LINES: dict[int, int] = {}
_SIGNED_COUNTS = {"long4", "string4"}
_COUNT_SIZE = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: 4,
               pickletools.TAKEN_FROM_ARGUMENT4U: 4, pickletools.TAKEN_FROM_ARGUMENT8U: 8}

for _op in pickletools.opcodes:
    _code = ord(_op.code)
    _arg = _op.arg
    if _code in (_LONG_BINPUT, _PUT) or _op.name == "STOP":
        continue  # the walk handles these itself
    if _arg is None or _arg.n >= 0:
        _STEP[_code] = 1 + (_arg.n if _arg is not None else 0)
    elif _arg.n == pickletools.UP_TO_NEWLINE:
        _LINES[_code] = 2 if _arg.name.endswith("_pair") else 1
    elif _arg.n in _COUNT_SIZE:
        _COUNTED[_code] = (_COUNT_SIZE[_arg.n], _arg.name in _SIGNED_COUNTS)
    else:  # a kind of argument this walk does not know: better to fail at import
        raise ImportError(f"pickle opcode {_op.name} has an argument of unknown size {_arg.n}")

#: Opcodes followed by a one-byte length (short strings: the commonest of all).
_SHORT = frozenset(code for code, (width, _) in _COUNTED.items() if width == 1)
#: Lists of numbers are long runs of one opcode: they are skipped this many at a time.
_RUN = 256

#: Could be a LONG_BINPUT or PUT naming an index of at least MEMO_FLOOR.
_SUSPECT = re.compile(rb"r..(?:[^\x00].|.[^\x00])|p[\t\x0b\x0c\r ]*[+-]?[0-9_]{5}", re.DOTALL)


def check_memo(stream: bytes | memoryview) -> int | None:
    """The first memo index in ``stream`` that is larger than the stream
    (and than :data:`MEMO_FLOOR`), or None: the stream is safe to unpickle."""
    if _SUSPECT.search(stream) is None:
        return None
    data = stream if isinstance(stream, bytes) else bytes(stream)
    return _walk(data, max(len(data), MEMO_FLOOR))


def _walk(data: bytes, bound: int) -> int | None:
    """Read the opcodes as the unpickler does, up to STOP or the first opcode it
    would refuse (nothing after that is ever read)."""
    end = len(data)
    pos = 0
    try:
        while pos < end:
            code = data[pos]
            step = _STEP.get(code)
            if step is not None:
                pos += step
                if pos < end and data[pos] == code:  # a run: measured on a strided slice
                    firsts = data[pos:pos + step * _RUN:step]
                    pos += step * (len(firsts) - len(firsts.lstrip(firsts[:1])))
            elif code in _SHORT:
                pos += 2 + data[pos + 1]
            elif code in _COUNTED:
                width, signed = _COUNTED[code]
                start = pos + 1 + width
                count = int.from_bytes(data[pos + 1:start], "little", signed=signed)
                if count < 0 or start > end:
                    return None
                pos = start + count
            elif code == _LONG_BINPUT:
                if pos + 5 > end:
                    return None
                index = int.from_bytes(data[pos + 1:pos + 5], "little")
                if index >= bound:
                    return index
                pos += 5
            elif code == _PUT or code in _LINES:
                stop = pos
                for _ in range(_LINES.get(code, 1)):
                    stop = data.find(b"\n", stop + 1)
                    if stop < 0:
                        return None
                if code == _PUT:
                    named = _put_index(data[pos + 1:stop + 1])
                    if named is None:
                        return None
                    if named >= bound:
                        return named
                pos = stop + 1
            else:  # STOP, or an opcode the unpickler refuses
                return None
    except IndexError:  # the stream ends inside an opcode: the unpickler stops there
        return None
    return None


def _put_index(line: bytes) -> int | None:
    """The index a PUT line names, parsed as the C unpickler does (it stops at a NUL)."""
    try:
        index = int(line.split(b"\x00", 1)[0])
    except ValueError:
        return None
    return index if index >= 0 else None
