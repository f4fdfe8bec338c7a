"""This machine's limits, measured in the same run as the systems.

A scheduler's round trip cannot beat the operating system's: one tiny task
is two messages out and two back (client -> scheduler -> worker and back),
so the floor for it is **twice an asyncio echo round trip over loopback**
between two processes.  Moving a value from one worker to another through a
socket cannot beat **one loopback socket's bandwidth**, measured here between
two processes with preallocated buffers on both sides (no copies in Python).
Each figure of the table is shown with its ratio to these.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import statistics
import time
from typing import Any

ECHO_MESSAGE = b"x" * 64
ECHO_WARMUP = 200
ECHO_SAMPLES = 2_000
BANDWIDTH_CHUNK = 8 * 1024 * 1024
BANDWIDTH_BYTES = 2 * 1024 * 1024 * 1024
BANDWIDTH_ROUNDS = 3
JOIN_SECONDS = 30.0


def _echo_server(port_queue: Any) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.readexactly(len(ECHO_MESSAGE))
                writer.write(data)
        except asyncio.IncompleteReadError:
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_queue.put(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


async def _echo_samples(port: int, n: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP,
                                                         socket.TCP_NODELAY, 1)
    samples = []
    for i in range(ECHO_WARMUP + n):
        start = time.perf_counter()
        writer.write(ECHO_MESSAGE)
        await reader.readexactly(len(ECHO_MESSAGE))
        if i >= ECHO_WARMUP:
            samples.append(time.perf_counter() - start)
    writer.close()
    return samples


def echo_round_trip(n: int = ECHO_SAMPLES) -> dict[str, float]:
    """Median and p99 of an asyncio echo between two processes over loopback (ms)."""
    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    server = ctx.Process(target=_echo_server, args=(ports,), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=JOIN_SECONDS)
        samples = sorted(asyncio.run(_echo_samples(port, n)))
    finally:
        server.terminate()
        server.join(JOIN_SECONDS)
    return {"echo_median_ms": statistics.median(samples) * 1e3,
            "echo_p99_ms": samples[min(len(samples) - 1, round(0.99 * len(samples)) - 1)] * 1e3}


def _sender(port: int, total: int) -> None:
    chunk = memoryview(bytearray(BANDWIDTH_CHUNK))
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sent = 0
        while sent < total:
            sock.sendall(chunk[: min(BANDWIDTH_CHUNK, total - sent)])
            sent += BANDWIDTH_CHUNK


def socket_bandwidth(total: int = BANDWIDTH_BYTES) -> float:
    """MB/s through one loopback TCP socket between two processes (best of a few rounds)."""
    ctx = multiprocessing.get_context("spawn")
    rates = []
    buffer = memoryview(bytearray(BANDWIDTH_CHUNK))
    for _ in range(BANDWIDTH_ROUNDS):
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            sender = ctx.Process(target=_sender, args=(listener.getsockname()[1], total),
                                 daemon=True)
            sender.start()
            conn, _ = listener.accept()
            with conn:
                received = conn.recv_into(buffer)
                start = time.perf_counter()
                while received < total:
                    got = conn.recv_into(buffer)
                    if not got:
                        break
                    received += got
                elapsed = time.perf_counter() - start
            sender.join(JOIN_SECONDS)
        rates.append(received / elapsed / 1e6)
    return max(rates)


def floors(sizes: dict[str, int]) -> dict[str, Any]:
    """The machine's floors: the echo round trip (x2 for a task's) and socket bandwidth."""
    echo = echo_round_trip(sizes.get("floor_echo_n", ECHO_SAMPLES))
    bandwidth = socket_bandwidth(sizes.get("floor_bandwidth_bytes", BANDWIDTH_BYTES))
    return {**echo, "floor_roundtrip_ms": 2 * echo["echo_median_ms"],
            "floor_socket_MB_per_s": bandwidth}
