"""Transports and RPC: real TCP sockets, bad input on the wire."""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
from collections.abc import Callable

import msgpack
import pytest

from shoal.comm import BatchedSend, CommClosedError, ConnectionPool, RemoteError, RPCServer, connect
from shoal.comm._batched import FLOOD_SECONDS, THREAD_GAP_SECONDS
from shoal.protocol import (
    PROTOCOL_VERSION,
    VersionMismatchError,
    deserialize,
    dumps,
    pack_frames_prelude,
    serialize,
)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def echo_server(address: str = "tcp://127.0.0.1:0") -> tuple[RPCServer, str]:
    async def boom() -> None:
        raise ValueError("handler exploded")

    server = RPCServer({"echo": lambda x: x, "boom": boom}, {})
    return server, await server.listen(address)


@pytest.mark.parametrize("scheme", ["tcp", "inproc"])
def test_request_response(scheme):
    async def main() -> None:
        server, address = await echo_server(f"{scheme}://127.0.0.1:0" if scheme == "tcp"
                                            else "inproc://test")
        pool = ConnectionPool()
        assert await pool.request(address, "echo", x=[1, "two"]) == [1, "two"]
        with pytest.raises(RemoteError, match="unknown operation 'nope'"):
            await pool.request(address, "nope")
        with pytest.raises(RemoteError, match="handler exploded"):
            await pool.request(address, "boom")
        with pytest.raises(RemoteError, match="bad arguments"):
            await pool.request(address, "echo", y=1)
        assert await pool.request(address, "echo", x=3) == 3  # still serving
        pool.close()
        server.stop()

    run(main())


def _raw_socket(address: str) -> socket.socket:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _send_message(sock: socket.socket, msg) -> None:
    frames = dumps(msg)
    sock.sendall(pack_frames_prelude(frames) + b"".join(bytes(f) for f in frames))


def _handshake(sock: socket.socket, version: int = PROTOCOL_VERSION) -> None:
    _send_message(sock, {"op": "handshake", "protocol": version})


async def _closed_by_peer(sock: socket.socket) -> bool:
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    while True:
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
        except ConnectionResetError:
            return True
        if not data:
            return True


@pytest.mark.parametrize("garbage", [
    struct.pack("<Q", 2**40),  # announces an oversized message
    struct.pack("<Q", 12) + struct.pack("<I", 99) + b"\0" * 8,  # frame count lies
    struct.pack("<Q", 5) + struct.pack("<I", 1) + b"x",  # too short for its frames
])
def test_malformed_or_oversized_frames_close_only_that_connection(garbage):
    async def main() -> None:
        server, address = await echo_server()
        sock = _raw_socket(address)
        _handshake(sock)
        sock.sendall(garbage)
        assert await _closed_by_peer(sock)
        pool = ConnectionPool()
        assert await pool.request(address, "echo", x="still here") == "still here"
        pool.close()
        server.stop()

    run(main())


def test_message_that_is_not_a_map_gets_an_error_reply():
    async def main() -> None:
        server, address = await echo_server()
        comm = await connect(address)
        await comm.write([1, 2, 3])
        answer = await comm.read()
        assert answer["status"] == "error" and "'op'" in answer["message"]
        comm.abort()
        server.stop()

    run(main())


def test_undecodable_msgpack_closes_the_connection():
    async def main() -> None:
        server, address = await echo_server()
        sock = _raw_socket(address)
        _handshake(sock)
        bad = [b"\xc1"]
        sock.sendall(pack_frames_prelude(bad) + bad[0])
        assert await _closed_by_peer(sock)
        for _ in range(1000):  # the server counts it once its reader wakes up
            if server.bad_messages:
                break
            await asyncio.sleep(0.001)
        assert server.bad_messages == 1
        server.stop()

    run(main())


def test_version_mismatch_is_refused_with_a_clear_error():
    async def main() -> None:
        server, address = await echo_server()
        # a peer speaking another version is disconnected by the server
        sock = _raw_socket(address)
        _handshake(sock, version=PROTOCOL_VERSION + 1)
        assert await _closed_by_peer(sock)

        # and our side refuses a server that speaks another version
        async def old_server(reader, writer):
            frames = dumps({"op": "handshake", "protocol": 0})
            writer.write(pack_frames_prelude(frames) + frames[0])
            await writer.drain()
            await reader.read()

        fake = await asyncio.start_server(old_server, "127.0.0.1", 0)
        port = fake.sockets[0].getsockname()[1]
        with pytest.raises(VersionMismatchError, match="speaks shoal protocol 0"):
            await connect(f"tcp://127.0.0.1:{port}")
        fake.close()
        server.stop()

    run(main())


def test_connect_to_nothing_fails_fast():
    async def main() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        with pytest.raises(CommClosedError):
            await connect(f"tcp://127.0.0.1:{port}", timeout=5)

    run(main())


def _messages(received: list) -> list:
    return [m for b in received for m in (b if type(b) is list else [b])]


async def _stream_server(received: list, until: int | Callable[[list], bool],
                         gate: asyncio.Event | None = None):
    """A server whose ``stream`` op collects messages into ``received`` until
    ``until`` have come, or ``until(messages)`` says so (reading nothing off
    its socket until ``gate`` is set, if given), and a BatchedSend to it: the
    server, the comm, the BatchedSend and the event set when all are in."""
    done = asyncio.Event()
    if isinstance(until, int):
        count = until
        until = lambda messages: len(messages) >= count

    async def stream(comm, **_):
        if gate is not None:  # read nothing off the socket until then
            comm.transport.pause_reading()
            await gate.wait()
            comm.transport.resume_reading()
        while not until(_messages(received)):
            received.append(await comm.read())
        done.set()

    server = RPCServer({}, {"stream": stream})
    comm = await connect(await server.listen("tcp://127.0.0.1:0"))
    await comm.write({"op": "stream"})
    return server, comm, BatchedSend(comm), done


def test_batched_send_writes_a_lone_message_at_once_and_coalesces_the_rest():
    async def main() -> None:
        received: list = []
        server, _, batched, done = await _stream_server(received, 100)
        batched.send({"i": 0})
        assert batched.batches_sent == 1  # written by send() itself: no loop turn
        for i in range(1, 100):
            batched.send({"i": i})
        assert batched.batches_sent == 1  # the others wait for the writer task
        await asyncio.wait_for(done.wait(), 10)
        assert received == [[{"i": 0}], [{"i": i} for i in range(1, 100)]]
        assert batched.batches_sent == 2
        await batched.close()
        server.stop()

    run(main())


class _Clock:
    """The loop, but with a clock the test moves."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.now = loop, 100.0

    def time(self) -> float:
        return self.now

    def call_soon(self, *args):
        return self.loop.call_soon(*args)


def test_batched_send_batches_everything_during_a_flood_and_not_after():
    async def main() -> None:
        received: list = []
        server, _, batched, done = await _stream_server(received, 9)
        clock = batched._loop = _Clock(asyncio.get_running_loop())

        async def burst(*msgs) -> int:
            """Send ``msgs`` in one turn; how many send() wrote itself."""
            before = batched.batches_sent
            for msg in msgs:
                batched.send(msg)
            written_now = batched.batches_sent - before
            while batched._buffer or batched._writing:
                await asyncio.sleep(0)  # let the writer task write the rest
            await asyncio.sleep(0)
            return written_now

        assert await burst(1, 2) == 1  # lone first message, then a batch
        clock.now += FLOOD_SECONDS / 2
        assert await burst(3, 4) == 1  # a second batch this soon: a flood from now on
        clock.now += FLOOD_SECONDS / 2
        assert await burst(5) == 0  # in the flood, even a lone message is batched
        clock.now += 2 * FLOOD_SECONDS
        assert await burst(6, 7, 8, 9) == 1  # quiet long enough: the fast path again
        await asyncio.wait_for(done.wait(), 10)
        assert [m for b in received for m in b] == list(range(1, 10))
        await batched.close()
        server.stop()

    run(main())


def test_batched_send_queues_while_the_peer_does_not_read_and_keeps_the_order():
    async def main() -> None:
        received: list = []
        gate = asyncio.Event()
        count, blob = 64, b"x" * (512 * 1024)  # 32 MiB: more than the sockets' buffers hold
        server, comm, batched, done = await _stream_server(received, count, gate)
        for i in range(count):
            batched.send({"i": i, "blob": blob})
            await asyncio.sleep(0)  # a turn each: every send finds the stream idle if it can
        assert not comm.protocol.writable()  # the peer reads nothing: writes wait
        assert batched.batches_sent < count
        gate.set()
        await asyncio.wait_for(done.wait(), 20)
        got = [m["i"] for m in _messages(received)]
        assert got == list(range(count))
        assert all(m["blob"] == blob for m in _messages(received))
        await batched.close()
        server.stop()

    run(main())


def test_batched_send_leaves_a_large_frame_to_the_writer_task():
    async def main() -> None:
        received: list = []
        server, _, batched, done = await _stream_server(received, 2)
        big = serialize(b"y" * (2 * 1024 * 1024))
        batched.send({"value": big})
        assert batched.batches_sent == 0  # shared memory or a direct send: not from send()
        batched.send({"after": True})
        await asyncio.wait_for(done.wait(), 10)
        assert deserialize(received[0][0]["value"]) == b"y" * (2 * 1024 * 1024)
        assert received[0][1:] + received[1:] == [{"after": True}]
        received.clear()  # the value may be a shared-memory mapping: let it go now
        gc.collect()
        await batched.close()
        server.stop()

    run(main())


def test_batched_send_from_another_thread_writes_at_once_unless_a_flood_is_on():
    async def main() -> None:
        received: list = []
        server, _, batched, done = await _stream_server(received, 5)
        clock = batched._loop = _Clock(asyncio.get_running_loop())
        assert await asyncio.to_thread(batched.send_threadsafe, 1)  # idle: written by the thread
        assert batched.batches_sent == 1
        clock.now += THREAD_GAP_SECONDS / 2
        assert not await asyncio.to_thread(batched.send_threadsafe, 2)  # a caller in a loop...
        batched.send(2)  # ...whose message the loop sends
        batched.send(3)
        assert batched.batches_sent == 1  # a flood: the loop batches too
        assert not await asyncio.to_thread(batched.send_threadsafe, 4)  # behind the buffer
        batched.send(4)
        while batched._buffer or batched._writing:
            await asyncio.sleep(0)  # let the writer task write them
        clock.now += 2 * FLOOD_SECONDS
        assert await asyncio.to_thread(batched.send_threadsafe, 5)  # quiet again
        await asyncio.wait_for(done.wait(), 10)
        assert _messages(received) == [1, 2, 3, 4, 5]
        await batched.close()
        server.stop()

    run(main())


def test_writes_from_a_thread_and_from_the_loop_never_mix_on_the_socket():
    """The loop writes its messages while a thread writes its own, falling back
    to the loop when it may not write: every message arrives whole, each side's
    in its order."""
    count = 300

    async def main() -> None:
        received: list = []
        server, comm, batched, done = await _stream_server(received, 2 * count)
        loop = asyncio.get_running_loop()
        assert await asyncio.to_thread(comm.write_threadsafe, {"thread": -1})  # idle: yes

        def from_thread() -> None:
            for i in range(count):
                msg = {"thread": i, "pad": b"t" * (i * 37 % 5000)}
                if not comm.write_threadsafe(msg):
                    asyncio.run_coroutine_threadsafe(comm.write(msg), loop).result(10)

        writer = asyncio.create_task(asyncio.to_thread(from_thread))
        for i in range(count - 1):
            await comm.write({"loop": i, "pad": b"l" * (i * 53 % 7000)})
        await writer
        await asyncio.wait_for(done.wait(), 20)
        got = _messages(received)
        assert [m["thread"] for m in got if "thread" in m] == list(range(-1, count))
        assert [m["loop"] for m in got if "loop" in m] == list(range(count - 1))
        assert all(m["pad"] == b"t" * (m["thread"] * 37 % 5000) for m in got[1:] if "thread" in m)
        await batched.close()
        server.stop()

    run(main())


def test_what_a_thread_cannot_write_at_once_the_loop_writes_first():
    """A peer that reads nothing fills the socket: the thread's last write leaves
    a tail, the thread may write no more, and the loop sends the tail before
    its own message."""

    async def main() -> None:
        received: list = []
        gate = asyncio.Event()
        blob = b"z" * (512 * 1024)
        server, comm, batched, done = await _stream_server(
            received, lambda messages: bool(messages) and messages[-1]["blob"] == b"last", gate)

        def fill() -> int:
            for i in range(400):  # 200 MiB: far more than the sockets' buffers hold
                if not comm.write_threadsafe({"i": i, "blob": blob}):
                    return i
            raise AssertionError("the socket never filled")

        written = await asyncio.to_thread(fill)
        assert written > 0
        while comm._tail:
            await asyncio.sleep(0)  # the loop takes the tail over
        assert not comm.protocol.writable() or comm.transport.get_write_buffer_size()
        last = asyncio.create_task(comm.write({"i": written, "blob": b"last"}))
        gate.set()
        await asyncio.wait_for(last, 20)
        await asyncio.wait_for(done.wait(), 20)
        got = _messages(received)
        assert [m["i"] for m in got] == list(range(written + 1))
        assert all(m["blob"] == blob for m in got[:-1]) and got[-1]["blob"] == b"last"
        await batched.close()
        server.stop()

    run(main())


def test_msgpack_is_the_header_format():
    frames = dumps({"op": "ping"})
    assert msgpack.unpackb(frames[0]) == {"op": "ping"}


def test_a_large_bytes_value_is_received_into_the_value_itself():
    """A bytes frame is flagged on the wire and received straight into a bytes
    object, which unpickling then returns (no copy); other buffers are not, so
    a bytearray or numpy array received stays writable."""
    np = pytest.importorskip("numpy")

    async def main() -> None:
        received: list = []
        done = asyncio.Event()

        async def stream(comm, **_):
            received.append(await comm.read())
            done.set()

        server = RPCServer({}, {"stream": stream})
        address = await server.listen("tcp://127.0.0.1:0")
        comm = await connect(address)
        await comm.write({"op": "stream"})
        # over STAGING_BYTES (a large message), under SHARED_MIN_BYTES (on the socket)
        blob = bytes(range(256)) * 2048
        values = [blob, bytearray(blob), np.arange(65536, dtype="u8")]
        await comm.write({"values": [serialize(v) for v in values]})
        await asyncio.wait_for(done.wait(), 10)
        got = received[0]["values"]
        assert type(got[0].frames[-1]) is bytes
        out = [deserialize(s) for s in got]
        assert out[0] == blob and out[0] is got[0].frames[-1]
        assert out[1] == blob and type(out[1]) is bytearray
        out[1][0] = 7  # its own memory, writable
        assert (out[2] == values[2]).all() and out[2].flags.writeable
        await comm.close()
        server.stop()

    run(main())
