"""Fuzzing in process: the decoder, the framing, every op's check, and a live
scheduler and worker fed fuzzed ops over loopback TCP.

The properties: decoding or framing bad bytes raises only the protocol's own
errors; memory follows the bytes received, not what headers claim; every
message the catalogue accepts is one the shells handle without an error,
and the scheduler's state stays valid; every valid message is accepted.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.comm._core import CommLimits
from shoal.comm._tcp import EAGER_MAX_BYTES, STAGING_BYTES, STAGING_MIN_BYTES, _Protocol
from shoal.protocol import FramingError, MessageError, dumps, loads
from shoal.protocol._ops import (
    FROM_CLIENT,
    FROM_WORKER,
    SCHEDULER_OPEN,
    SCHEDULER_RPC,
    WORKER_RPC,
    check_message,
)
from shoal.protocol._schema import InvalidMessage

from .generate import TABLES, Inputs, tame
from .peers import InProcessCluster, Stream, raw_bytes, request

#: Derandomized: the default suite must behave the same on every run
#: (``python -m tests.fuzz`` is the open-ended search).
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow],
                database=None, derandomize=True)

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                               max_size=4),
    max_leaves=20,
)


# ------------------------------------------------------------ decoder


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=4))
def test_decoding_arbitrary_frames_raises_only_message_errors(frames):
    try:
        loads(frames)
    except MessageError:
        pass


@FUZZ
@given(msgpack_values)
def test_every_msgpack_value_survives_a_round_trip(value):
    back = loads([bytes(f) for f in dumps(value)])
    assert dumps(back) == dumps(value)


# ------------------------------------------------------------ framing


def _feed(data: bytes, cuts: list[int], limit: int) -> tuple[list, int]:
    """Push ``data`` through a real protocol object in chunks; what came out, and
    the most memory its buffers held at any point."""
    protocol = _Protocol(CommLimits(max_message_bytes=limit))
    protocol.max_message = limit  # as after the handshake
    peak = pos = 0

    def failed() -> bool:
        return any(isinstance(x, Exception) for x in protocol._inbox)

    for cut in [*sorted(cuts), len(data)]:
        while pos < cut and not failed():
            buf = protocol.get_buffer(-1)
            n = min(len(buf), cut - pos)
            buf[:n] = data[pos:pos + n]
            buf.release()
            protocol.buffer_updated(n)
            pos += n
            peak = max(peak, protocol.committed_bytes())
    if protocol._stall_timer is not None:
        protocol._stall_timer.cancel()
    return list(protocol._inbox), peak


@FUZZ
@given(st.randoms(use_true_random=False), st.lists(st.integers(0, 5000), max_size=6))
def test_framing_of_broken_streams_yields_messages_or_protocol_errors(rng, cuts):
    inputs = Inputs(rng)
    data = b"".join(inputs.frames_bytes(inputs.maybe_broken(rng.choice(list(TABLES.values()))))
                    for _ in range(rng.randint(1, 4)))

    async def main() -> tuple[list, int]:
        return _feed(data, [c % (len(data) + 1) for c in cuts], limit=1 << 20)

    out, peak = asyncio.run(main())
    for item in out:
        assert not isinstance(item, Exception) or isinstance(item, (FramingError, MessageError))
    # memory follows the bytes that arrived, whatever the headers said
    assert peak <= 2 * len(data) + STAGING_BYTES + EAGER_MAX_BYTES


def test_a_header_declaring_a_gigabyte_commits_no_more_than_what_arrives():
    async def main() -> None:
        header = (1 << 30).to_bytes(8, "little") + (1).to_bytes(4, "little")
        header += ((1 << 30) - 12).to_bytes(8, "little")
        out, peak = _feed(header + b"x" * 3000, [], limit=2 << 30)
        assert out == []
        assert peak <= EAGER_MAX_BYTES + STAGING_MIN_BYTES

    asyncio.run(main())


# ------------------------------------------------------------ op checks


@FUZZ
@given(st.randoms(use_true_random=False), st.sampled_from(sorted(TABLES)))
def test_checking_any_message_raises_only_invalid_message(rng, table_name):
    inputs = Inputs(rng)
    table = TABLES[table_name]
    for _ in range(5):
        try:
            check_message(table, inputs.maybe_broken(table))
        except InvalidMessage as exc:
            assert str(exc)


@FUZZ
@given(st.randoms(use_true_random=False), st.sampled_from(sorted(TABLES)))
def test_every_well_formed_message_is_accepted(rng, table_name):
    table = TABLES[table_name]
    msg = Inputs(rng).message(table)
    op, _ = check_message(table, msg)
    assert op == msg["op"]


# ------------------------------------------------------------ live servers, in process


class Target(InProcessCluster):
    """The in-process cluster with two hostile peers: a fake worker and a fake client."""

    def __init__(self) -> None:
        super().__init__(n_workers=1)
        self.worker = self.workers[0]
        self.fake_worker = Stream(self.address, {
            "op": "register-worker", "address": "tcp://127.0.0.1:1", "name": "fuzz-worker",
            "nthreads": 2, "memory_limit": 0})
        self.fake_client = Stream(self.address, {"op": "register-client", "client": "fuzz-client"})

    def alive(self) -> None:
        self.healthy()

    def close(self) -> None:
        async def leave() -> None:
            self.fake_worker.close()
            self.fake_client.close()
        self.run(leave)
        super().close()


@pytest.fixture(scope="module")
def target():
    t = Target()
    yield t
    t.close()


@settings(FUZZ, max_examples=150)
@given(st.randoms(use_true_random=False))
def test_scheduler_streams_survive_fuzzed_ops(target, rng):
    inputs = Inputs(rng, keys=["k-0", "k-1", target.worker.address])

    async def attack() -> None:
        await target.fake_worker.send([inputs.maybe_broken(FROM_WORKER)
                                       for _ in range(rng.randint(1, 4))])
        await target.fake_client.send([inputs.maybe_broken(FROM_CLIENT)
                                       for _ in range(rng.randint(1, 4))])

    target.run(attack)
    target.alive()


@settings(FUZZ, max_examples=150)
@given(st.randoms(use_true_random=False))
def test_requests_to_scheduler_and_worker_survive_fuzzed_ops(target, rng):
    inputs = Inputs(rng, keys=["k-0", target.worker.address])
    table = rng.choice([SCHEDULER_RPC, SCHEDULER_OPEN, WORKER_RPC])
    address = target.worker.address if table is WORKER_RPC else target.scheduler.address
    protected = frozenset({target.worker.address, target.worker.name})
    msg = tame(inputs.maybe_broken(table), protected)

    async def attack() -> None:
        answer = await request(address, msg)
        if isinstance(answer, dict) and answer.get("status") == "error":
            assert answer.get("message")
        if rng.random() < 0.3:
            await raw_bytes(address, inputs.frames_bytes(tame(inputs.maybe_broken(table),
                                                              protected)))

    target.run(attack)
    target.alive()


def test_after_the_fuzzing_the_cluster_still_computes(target):
    from shoal import Client

    async def leave() -> None:  # the fake worker computes nothing: take it away first
        target.fake_worker.close()
        target.fake_client.close()

    target.run(leave)
    with Client(target.scheduler.address, timeout=10) as client:
        assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6
    target.alive()
