"""Large frames through memfds between processes of one host, and the warm buffer pool."""

from __future__ import annotations

import array
import asyncio
import os
import select
import socket
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import psutil
import pytest

from shoal.comm import RPCServer, _pool, _shared, connect
from shoal.comm._tcp import EAGER_MAX_BYTES
from shoal.protocol import (
    PROTOCOL_VERSION,
    Serialized,
    deserialize,
    dumps,
    pack_frames_prelude,
    serialize,
)
from shoal.protocol._memory import buffer_address
from shoal.worker._memory import process_memory
from tests.polling import async_wait_for, wait_for

pytestmark = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="needs Linux memfds")

MiB = 1024 * 1024


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


# ------------------------------------------------------------ a server in another process


_SERVER = """
import asyncio, sys
import numpy as np
from shoal.comm import RPCServer, _pool, _shared
from shoal.protocol import serialize

MiB = 1024 * 1024


def stats():
    own = _shared.channel()
    return {"sent": own.sent if own else None, "returned": own.returned if own else None,
            "pool_held": _pool.pool().held()}


async def main():
    blocks = {"numpy": np.arange(4 * MiB, dtype="u8"), "bytes": bytes(range(256)) * 16 * 4096}
    server = RPCServer({"get": lambda kind: {"value": serialize(blocks[kind])},
                        "echo": lambda x: {"value": x}, "stats": stats}, {})
    print(await server.listen("tcp://127.0.0.1:0"), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until closed


asyncio.run(main())
"""


@pytest.fixture(params=["shared", "socket"])
def server(request):
    """A server process, with shared memory on or (the fallback) off."""
    env = {**os.environ, _shared.ENV: "1" if request.param == "shared" else "0"}
    proc = subprocess.Popen([sys.executable, "-c", _SERVER], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "the server did not start within 60s"
        yield request.param, proc.stdout.readline().strip(), proc
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdin.close()
        proc.stdout.close()


def test_large_values_arrive_whole_and_writable_on_either_path(server):
    mode, address, _ = server

    async def main() -> None:
        comm = await connect(address)
        await comm.write({"op": "get", "kind": "numpy"})
        answer = await comm.read()
        ser = answer["value"]
        assert isinstance(ser, Serialized)
        array_ = deserialize(ser)
        assert np.array_equal(array_, np.arange(4 * MiB, dtype="u8"))
        assert array_.flags.writeable
        # zero copy: the array lives in the frame the bytes were received into
        assert np.shares_memory(array_, np.frombuffer(ser.frames[1], dtype="u8"))
        await comm.write({"op": "get", "kind": "bytes"})
        assert deserialize((await comm.read())["value"]) == bytes(range(256)) * 16 * 4096
        await comm.write({"op": "stats"})
        stats = await comm.read()
        if mode == "shared":
            assert stats["sent"] == 2, stats
        else:
            assert stats["sent"] is None, stats
        comm.abort()

    run(main())


def test_receiving_a_large_array_allocates_no_copy_of_it(server):
    _, address, _ = server

    async def main() -> None:
        comm = await connect(address)
        await comm.write({"op": "get", "kind": "numpy"})  # warm: pool, imports, connection
        deserialize((await comm.read())["value"])
        tracemalloc.start()
        try:
            await comm.write({"op": "get", "kind": "numpy"})
            value = deserialize((await comm.read())["value"])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert value.nbytes == 32 * MiB
        assert peak < 2 * MiB, f"{peak} bytes allocated while receiving 32 MiB"
        comm.abort()

    run(main())


def test_values_sent_to_a_same_host_server_go_through_shared_memory(server):
    mode, address, _ = server
    value = np.ones(2 * MiB, dtype="u1")

    async def main() -> None:
        own = _shared.channel()
        before = own.sent
        comm = await connect(address)
        await comm.write({"op": "echo", "x": serialize(value)})
        back = deserialize((await comm.read())["value"])
        assert np.array_equal(back, value)
        # this process always offers shared memory; the server uses it only when on
        assert own.sent - before == (1 if mode == "shared" else 0)
        if mode == "shared":
            assert comm.peer_channel is not None
        comm.abort()

    run(main())


@pytest.mark.parametrize("server", ["shared"], indirect=True)
def test_memory_lent_to_a_peer_comes_back_to_the_senders_pool(server):
    _, address, _ = server

    async def main() -> None:
        comm = await connect(address)
        await comm.write({"op": "get", "kind": "numpy"})
        value = deserialize((await comm.read())["value"])
        del value  # the mapping goes: its memfd goes back to the server

        async def returned() -> int:
            await comm.write({"op": "stats"})
            return (await comm.read())["returned"]

        deadline = asyncio.get_running_loop().time() + 30
        while await returned() < 1:
            assert asyncio.get_running_loop().time() < deadline, "memfd never returned"
            await asyncio.sleep(0.05)
        comm.abort()

    run(main())


# ------------------------------------------------------------ the channel in this process


def test_a_channel_refuses_unknown_tokens_and_unsealed_memory():
    own = _shared.channel()
    with pytest.raises(ValueError, match="did not arrive"):
        own.claim(b"x" * 16, 10, timeout=0.2)
    # a plain pipe's descriptor, sent like a frame: kept, but refused when claimed
    read_end, write_end = os.pipe()
    token = b"t" * 16
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.bind("\0shoal-shm-test-" + os.urandom(4).hex())
    try:
        rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [read_end]))
        sender.sendmsg([b"F", token], [rights], 0, "\0" + own.name)
    finally:
        sender.close()
        os.close(read_end)
        os.close(write_end)
    with pytest.raises(ValueError, match="not a memory file"):
        own.claim(token, 10, timeout=10)


def test_a_peer_that_cannot_be_reached_gets_the_socket():
    async def main() -> None:
        server = RPCServer({"total": lambda x: int(deserialize(x).sum())}, {})
        address = await server.listen("tcp://127.0.0.1:0")
        comm = await connect(address)
        comm.peer_channel = "shoal-shm-1-0000000000000000"  # in no namespace of this kernel
        own = _shared.channel()
        before = own.sent
        value = np.arange(MiB, dtype="u8")
        await comm.write({"op": "total", "x": serialize(value)})
        assert await comm.read() == int(value.sum())
        assert own.sent == before
        comm.abort()
        server.stop()

    run(main())


def test_only_channel_names_are_taken_from_a_handshake():
    assert _shared.valid_name("shoal-shm-12-ab01") == "shoal-shm-12-ab01"
    for bad in (None, 3, "other", "shoal-shm-1/../x", "shoal-shm-" + "a" * 100):
        assert _shared.valid_name(bad) is None
    assert not _shared.shared_memory_enabled({_shared.ENV: "0"})
    assert _shared.shared_memory_enabled({})


# ------------------------------------------------------------ pool and lazy buffers


def test_pooled_buffers_are_reused_warm_and_bounded():
    owner = _pool.BufferPool(limit=8 * MiB)
    fd, warm = owner.take(4 * MiB)
    assert warm == 0
    buf = _pool.map_memfd(fd, 4 * MiB, populate=False, on_release=owner.give)
    buf[:] = b"\1" * (4 * MiB)
    del buf
    assert owner.held() == 4 * MiB
    fd2, warm2 = owner.take(2 * MiB)
    assert (fd2, warm2) == (fd, 4 * MiB)
    os.close(fd2)
    for _ in range(3):  # 12 MiB given back: only 8 kept
        fd, _ = owner.take(4 * MiB)
        os.pwrite(fd, b"\1" * (4 * MiB), 0)
        owner.give(fd)
    assert owner.held() <= 8 * MiB
    assert owner.release() > 0 and owner.held() == 0


def test_a_pooled_buffer_keeps_its_mapping_for_the_next_and_never_while_viewed():
    _pool.release()
    owner = _pool.pool()
    buf = _pool.map_buffer(4 * MiB)
    buf[:] = b"\1" * (4 * MiB)
    address = buffer_address(buf)[0]
    numbers = np.frombuffer(buf, dtype=np.uint8)[100:200]  # a view of a view of it
    del buf
    other = _pool.map_buffer(4 * MiB)  # the first is still in use: other memory
    addresses = {address, buffer_address(other)[0]}
    assert len(addresses) == 2
    other[:] = b"\2" * (4 * MiB)
    assert numbers.sum() == 100  # untouched by the second buffer
    del numbers, other
    assert owner.mapped() == 8 * MiB  # both idle, mapped, and not counted as in use
    again = _pool.map_buffer(3 * MiB)  # a kept mapping, with its pages in place
    assert buffer_address(again)[0] in addresses
    assert owner.mapped() == 4 * MiB
    rss = psutil.Process().memory_info().rss
    assert process_memory() <= rss - 4 * MiB + MiB  # the idle mapping is not the process's
    del again
    small = _pool.map_buffer(MiB)  # the kept mappings are more than twice too large:
    assert len(small.obj) == MiB  # a mapping of its own, over one's warm pages
    assert owner.mapped() == 4 * MiB
    del small
    assert _pool.release() >= 8 * MiB and owner.mapped() == 0


def test_a_lying_header_commits_no_memory_for_its_frame():
    """A header declaring a 200 MiB frame, then 5 kB: the process's memory barely moves."""

    _pool.release()  # no warm pages this big frame could be mapped over at once

    async def main() -> None:
        server = RPCServer({}, {})
        address = await server.listen("tcp://127.0.0.1:0")
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        _, writer = await asyncio.open_connection(host, int(port))
        hello = dumps({"op": "handshake", "protocol": PROTOCOL_VERSION})
        writer.write(pack_frames_prelude(hello) + b"".join(bytes(f) for f in hello))
        await async_wait_for(lambda: server._comms, 10, "the comm being served")
        protocol = next(iter(server._comms)).protocol
        before = psutil.Process().memory_info().rss
        declared = 200 * MiB
        writer.write(struct.pack("<QIQ", declared + 12, 1, declared) + b"x" * 5000)
        await writer.drain()
        await async_wait_for(lambda: protocol._big is not None, 10, "the message started")
        assert protocol.committed_bytes() <= EAGER_MAX_BYTES
        assert psutil.Process().memory_info().rss - before < 32 * MiB
        writer.close()
        server.stop()

    run(main())


def test_the_worker_memory_release_empties_the_pool():
    from shoal.worker._allocator import release_free_memory

    owner = _pool.pool()
    fd, _ = owner.take(MiB)
    os.pwrite(fd, b"\1" * MiB, 0)
    owner.give(fd)
    assert owner.held() >= MiB
    release_free_memory()
    wait_for(lambda: owner.held() == 0, 5, "the pool emptied")
