"""What one connection may cost: bounded frames, lazy buffers, timeouts, supervision."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import pytest

from shoal.comm import (
    CommClosedError,
    CommLimits,
    ConnectionPool,
    RPCServer,
    connect,
    spawn,
    wait_event,
)
from shoal.comm._rpc import MAX_BAD_MESSAGES
from shoal.comm._tcp import EAGER_MAX_BYTES, STAGING_MIN_BYTES
from shoal.protocol import MAX_MESSAGE_BYTES, PROTOCOL_VERSION, dumps, pack_frames_prelude
from tests.polling import async_wait_for

FAST = CommLimits(max_message_bytes=64 * 1024 * 1024, handshake_timeout=0.5,
                  read_idle_timeout=0.5)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def _server(limits: CommLimits = FAST) -> tuple[RPCServer, str]:
    server = RPCServer({"echo": lambda x: x}, {}, limits=limits)
    return server, await server.listen("tcp://127.0.0.1:0")


def _frame(msg) -> bytes:
    frames = dumps(msg)
    return pack_frames_prelude(frames) + b"".join(bytes(f) for f in frames)


async def _raw(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
        return True
    except (TimeoutError, ConnectionError):
        return False


def test_the_default_message_limit_is_far_below_four_gigabytes():
    assert MAX_MESSAGE_BYTES <= 1024**3
    assert CommLimits().max_message_bytes == MAX_MESSAGE_BYTES
    assert CommLimits.from_env({"SHOAL_MAX_MESSAGE_BYTES": "2048"}).max_message_bytes == 2048
    with pytest.raises(ValueError, match="SHOAL_READ_IDLE_TIMEOUT"):
        CommLimits.from_env({"SHOAL_READ_IDLE_TIMEOUT": "soon"})
    with pytest.raises(ValueError, match="handshake_timeout"):
        CommLimits(handshake_timeout=0)


def test_a_peer_that_never_shakes_hands_is_dropped():
    async def main() -> None:
        server, address = await _server()
        reader, writer = await _raw(address)
        assert await _closed_within(reader, 5)
        writer.close()
        server.stop()

    run(main())


def test_a_huge_header_before_the_handshake_is_refused_at_once():
    async def main() -> None:
        server, address = await _server()
        reader, writer = await _raw(address)
        writer.write(struct.pack("<Q", 1 << 30))
        assert await _closed_within(reader, 0.4)  # before the handshake timeout
        writer.close()
        server.stop()

    run(main())


def test_a_peer_that_stalls_mid_message_is_dropped_and_cost_little():
    async def main() -> None:
        server, address = await _server()
        reader, writer = await _raw(address)
        writer.write(_frame({"op": "handshake", "protocol": PROTOCOL_VERSION}))
        declared = 60 * 1024 * 1024  # under the limit, but only a few bytes ever come
        writer.write(struct.pack("<QIQ", declared, 1, declared - 12) + b"x" * 5000)
        await writer.drain()
        await async_wait_for(lambda: server._comms, 5, "the comm being served")
        protocol = next(iter(server._comms)).protocol
        await async_wait_for(lambda: protocol._big is not None, 5, "the message started")
        # the 60 MiB frame's buffer is a mapping holding only the pages written to
        assert protocol.committed_bytes() <= EAGER_MAX_BYTES
        assert await _closed_within(reader, 5)
        writer.close()
        server.stop()

    run(main())


def test_idle_connections_hold_small_buffers_and_large_messages_still_arrive():
    async def main() -> None:
        server, address = await _server()
        comm = await connect(address, limits=FAST)
        await comm.write({"op": "echo", "x": 1})
        assert await comm.read() == 1
        served = next(iter(server._comms)).protocol
        assert len(served._staging) <= STAGING_MIN_BYTES
        big = bytes(range(256)) * (40 * 1024 * 1024 // 256)  # grows the buffer 1 -> 64 MiB
        await comm.write({"op": "echo", "x": big})
        assert await comm.read() == big
        assert len(served._staging) <= STAGING_MIN_BYTES * 16
        comm.abort()
        server.stop()

    run(main())


def test_a_message_over_the_limit_closes_only_that_connection():
    async def main() -> None:
        server, address = await _server(CommLimits(max_message_bytes=1024 * 1024))
        comm = await connect(address)
        await comm.write({"op": "echo", "x": b"x" * (2 * 1024 * 1024)})
        with pytest.raises(CommClosedError):
            await comm.read()
        pool = ConnectionPool()
        assert await pool.request(address, "echo", x=2) == 2
        pool.close()
        server.stop()

    run(main())


def test_a_peer_sending_bad_messages_is_disconnected_after_the_threshold():
    async def main() -> None:
        server, address = await _server()
        comm = await connect(address)
        for _ in range(MAX_BAD_MESSAGES - 1):
            await comm.write(["not", "a", "map"])
            answer = await comm.read()
            assert answer["status"] == "error"
        await comm.write(["not", "a", "map"])
        await comm.read()  # the last error reply, then the hang-up
        with pytest.raises(CommClosedError):
            await comm.read()
        server.stop()

    run(main())


def test_a_failing_supervised_task_is_logged_at_once(caplog):
    async def boom() -> None:
        raise RuntimeError("background bug")

    async def main() -> None:
        tasks: set[asyncio.Task] = set()
        task = spawn(boom(), "doomed", tasks)
        with pytest.raises(RuntimeError):
            await task
        assert not tasks

    with caplog.at_level(logging.ERROR, logger="shoal.comm._supervise"):
        run(main())
    assert any("doomed" in r.getMessage() for r in caplog.records)


def test_raw_socket_garbage_leaves_the_server_serving():
    async def main() -> None:
        server, address = await _server()
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        for garbage in (b"\x00" * 7, b"\xff" * 100, struct.pack("<Q", 2**63)):
            with socket.create_connection((host, int(port))) as sock:
                sock.sendall(garbage)
        pool = ConnectionPool()
        assert await pool.request(address, "echo", x="still here") == "still here"
        pool.close()
        server.stop()

    run(main())


@pytest.mark.parametrize("iterations", range(4))
def test_a_wait_for_an_event_never_loses_a_cancellation(iterations):
    """Cancelled just as its event is set (0-3 loop iterations apart) while still
    waiting, the waiter ends cancelled; asyncio.wait_for on Python 3.11 returned
    normally instead."""

    async def scenario() -> tuple[bool, bool]:
        event = asyncio.Event()
        waiter = asyncio.ensure_future(wait_event(event, 60.0))
        for _ in range(3):
            await asyncio.sleep(0)  # it is waiting
        event.set()
        for _ in range(iterations):
            await asyncio.sleep(0)
        requested = waiter.cancel()  # False: it had already returned (set before)
        await asyncio.wait({waiter}, timeout=10)
        return requested, waiter.done() and waiter.cancelled()

    requested, cancelled = asyncio.run(scenario())
    assert cancelled == requested
    assert requested or iterations > 0  # at 0, the wait is always still going


def test_a_wait_for_an_event_says_whether_it_was_set():
    async def scenario() -> tuple[bool, bool, bool]:
        event = asyncio.Event()
        timed_out = await wait_event(event, 0.01)
        asyncio.get_running_loop().call_soon(event.set)
        woken = await wait_event(event, 10.0)
        return timed_out, woken, await wait_event(event, None)

    assert asyncio.run(scenario()) == (False, True, True)
