"""Structure-aware inputs for the fuzzers, made from the op catalogue itself.

``Inputs(rng)`` walks a message's :class:`Spec` to build a valid message,
then ``mutate`` breaks it the way a buggy or hostile peer would: one field
of the wrong type, out of range, missing, unknown, or the whole thing
replaced by random msgpack.  Frames are mutated at the byte level too.
Driven by a ``random.Random``, so hypothesis (``st.randoms()``) and the
long-running command share the same generator.
"""

from __future__ import annotations

import random
import struct
from typing import Any

from shoal.protocol import dumps, pack_frames_prelude, serialize
from shoal.protocol._ops import (
    FROM_CLIENT,
    FROM_SCHEDULER,
    FROM_WORKER,
    SCHEDULER_OPEN,
    SCHEDULER_RPC,
    TO_CLIENT,
    WORKER_RPC,
)
from shoal.protocol._schema import (
    AnyOf,
    Anything,
    Blob,
    Bool,
    Int,
    ListOf,
    MapOf,
    Nullable,
    Num,
    Record,
    Spec,
    Str,
)

TABLES = {
    "scheduler_rpc": SCHEDULER_RPC,
    "scheduler_open": SCHEDULER_OPEN,
    "from_worker": FROM_WORKER,
    "from_client": FROM_CLIENT,
    "worker_rpc": WORKER_RPC,
    "from_scheduler": FROM_SCHEDULER,
    "to_client": TO_CLIENT,
}

#: Values of every msgpack type, the awkward ones included.
AWKWARD = [None, True, False, 0, -1, 1, 2**63 - 1, -(2**63), 2**64 - 1, 0.5, -0.0,
           float("nan"), float("inf"), float("-inf"), "", "x", "\x00", "é" * 3, b"", b"\xff",
           [], {}, [None], {"": None}, {1: 2}, [[[[]]]], "a" * 5000]


class Inputs:
    """Messages for one op table, valid and broken, from one random stream."""

    def __init__(self, rng: random.Random, keys: list[str] | None = None) -> None:
        self.rng = rng
        #: Keys and addresses to draw from, so references sometimes hit something real.
        self.keys = keys or ["k-0", "k-1", "k-2", "inc-1"]

    # ------------------------------------------------------------ values

    def awkward(self, depth: int = 0) -> Any:
        rng = self.rng
        roll = rng.random()
        if roll < 0.5 or depth > 3:
            return rng.choice(AWKWARD)
        if roll < 0.65:
            return rng.randint(-(2**40), 2**40)
        if roll < 0.75:
            return "".join(rng.choice("abc-_é\x00") for _ in range(rng.randint(0, 12)))
        if roll < 0.85:
            return [self.awkward(depth + 1) for _ in range(rng.randint(0, 4))]
        keys = [rng.choice([0, -1, 2.5, True, None, b"k", ""]) if rng.random() < 0.2 else f"f{i}"
                for i in range(rng.randint(0, 4))]
        return {k: self.awkward(depth + 1) for k in keys}

    def valid(self, spec: Spec, depth: int = 0) -> Any:
        rng = self.rng
        kind = type(spec)
        if kind is Str:
            assert isinstance(spec, Str)
            if rng.random() < 0.5 and spec.min_length <= 5:
                return rng.choice(self.keys)
            size = rng.randint(spec.min_length, min(spec.max_length, spec.min_length + 8))
            # No ':' in made-up strings: an address without a port is refused before
            # any lookup, so no generated host name is ever resolved (nothing leaves
            # this machine); the real addresses in ``keys`` are all on loopback.
            return "".join(rng.choice("abcxyz-_/0123é") for _ in range(size))
        if kind is Int:
            assert isinstance(spec, Int)
            lo = spec.lo if spec.lo is not None else -(2**31)
            hi = spec.hi if spec.hi is not None else lo + 2**31
            return rng.choice([lo, hi, rng.randint(lo, min(hi, lo + 10)), rng.randint(lo, hi)])
        if kind is Num:
            assert isinstance(spec, Num)
            lo = spec.lo if spec.lo is not None else -1e6
            return rng.choice([lo, lo + rng.random() * 100, int(lo) + rng.randint(0, 5)])
        if kind is Bool:
            return rng.random() < 0.5
        if kind is Blob:
            if rng.random() < 0.5:
                return serialize(rng.choice([1, "x", None, [1, 2], b"\x00" * 10])).compact()
            return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 20)))
        if kind is Nullable:
            assert isinstance(spec, Nullable)
            return None if rng.random() < 0.3 else self.valid(spec.spec, depth)
        if kind is AnyOf:
            assert isinstance(spec, AnyOf)
            return self.valid(rng.choice(spec.specs), depth)
        if kind is ListOf:
            assert isinstance(spec, ListOf)
            count = rng.randint(spec.min_length, spec.min_length + (3 if depth < 2 else 1))
            return [self.valid(spec.item, depth + 1) for _ in range(count)]
        if kind is MapOf:
            assert isinstance(spec, MapOf)
            return {self.valid(spec.key, depth + 1): self.valid(spec.value, depth + 1)
                    for _ in range(rng.randint(0, 3 if depth < 2 else 1))}
        if kind is Record:
            assert isinstance(spec, Record)
            return {name: self.valid(field, depth + 1) for name, field in spec.fields.items()
                    if name not in spec.optional or rng.random() < 0.5}
        if kind is Anything:
            return self.awkward(depth + 1)
        raise TypeError(f"no generator for {spec!r}")

    # ------------------------------------------------------------ messages

    def message(self, table: dict[str, Record], op: str | None = None) -> dict[str, Any]:
        op = op or self.rng.choice(sorted(table))
        return {"op": op, **self.valid(table[op])}

    def mutate(self, msg: Any) -> Any:
        """Break one thing in ``msg`` (perhaps deep inside)."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.05:
            return self.awkward()
        if isinstance(msg, dict) and msg and roll < 0.9:
            name = rng.choice(list(msg))
            out = dict(msg)
            action = rng.random()
            if action < 0.15 and name != "op":
                del out[name]
            elif action < 0.25:
                out[rng.choice(["extra", "", "op2", 7])] = self.awkward()
            elif action < 0.6 and isinstance(msg[name], (dict, list)) and msg[name]:
                out[name] = self.mutate(msg[name])
            else:
                out[name] = self.awkward()
            return out
        if isinstance(msg, list) and msg:
            out_list = list(msg)
            i = rng.randrange(len(out_list))
            out_list[i] = self.mutate(out_list[i])
            return out_list
        return self.awkward()

    def maybe_broken(self, table: dict[str, Record]) -> dict[str, Any]:
        """Half valid messages, half broken ones: both must be handled."""
        msg = self.message(table)
        return msg if self.rng.random() < 0.5 else self.mutate(msg)

    # ------------------------------------------------------------ bytes

    def frames_bytes(self, msg: Any) -> bytes:
        """``msg`` framed for the wire, sometimes with its framing broken."""
        try:
            frames = dumps(msg)
        except (TypeError, ValueError, OverflowError):
            frames = [b"\xc1"]  # never valid msgpack
        data = pack_frames_prelude(frames) + b"".join(bytes(f) for f in frames)
        rng = self.rng
        roll = rng.random()
        if roll < 0.6:
            return data
        if roll < 0.7:  # a lying total length
            return struct.pack("<Q", rng.choice([0, 3, 12, len(data), 2**40])) + data[8:]
        if roll < 0.8:  # a lying frame count
            return data[:8] + struct.pack("<I", rng.choice([0, 2, 2**31])) + data[12:]
        if roll < 0.9:  # flipped bytes
            buf = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                buf[rng.randrange(len(buf))] = rng.getrandbits(8)
            return bytes(buf)
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))


def tame(msg: Any, protected: frozenset[str] = frozenset()) -> Any:
    """Legitimate but destructive requests, made harmless.

    The fuzzer must not retire the worker it checks (also not through a
    flipped byte: ``workers: []`` stays empty), broadcast random "functions"
    to it, shut the cluster down (``terminate``), restart its workers for a
    nanny plugin, or register a worker under a ``protected`` name or address (the
    checked worker's: taking over an identity is for TLS to prevent, and it
    would refuse the real worker when it reconnects).
    """
    if not isinstance(msg, dict):
        return msg
    op = msg.get("op")
    if op == "retire_workers":
        return {"op": "retire_workers", "workers": []}
    if op == "terminate":
        return {"op": "ping"}
    if op == "register_nanny_plugin":
        return {**msg, "restart": False}
    if op in ("broadcast", "run"):
        return {**msg, "op": "broadcast", "worker_op": "ping", "workers": None}
    if op == "register-worker" and any(msg.get(f) in protected for f in ("name", "address")
                                       if isinstance(msg.get(f), str)):
        return {**msg, "name": "impostor", "address": "tcp://127.0.0.1:2"}
    return msg
