"""Hostile peers over real connections: a fake worker, a fake client, raw bytes.

Each speaks the real protocol through the real comm layer (or raw sockets
for broken framing) to a real scheduler or worker, sends what
:mod:`tests.fuzz.generate` makes, and can tell whether the server still
serves.  Used by the in-process fuzz tests and the live fuzzer alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field
from typing import Any

from shoal.client._loop import LoopRunner
from shoal.comm import CommClosedError, connect
from shoal.comm._core import Comm
from shoal.protocol import PROTOCOL_VERSION, dumps, pack_frames_prelude
from shoal.scheduler import Scheduler
from shoal.worker import Worker

#: A server that does not answer a ping within this long counts as hung.
PING_TIMEOUT = 10.0


@dataclass
class Tally:
    """What a fuzz run did and found."""

    inputs: int = 0
    crashes: int = 0  # a server process exited
    hangs: int = 0  # a server did not answer a ping in time
    stopped_serving: int = 0  # a server answered wrongly, or not at all, afterwards
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.notes) < 50:
            self.notes.append(text)

    def as_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "crashes": self.crashes, "hangs": self.hangs,
                "servers_that_stopped_serving": self.stopped_serving, "notes": self.notes}


async def ping(address: str, timeout: float = PING_TIMEOUT) -> bool:
    """True if ``address`` answers a ping on a fresh connection within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            comm = await connect(address, timeout=timeout)
            try:
                await comm.write({"op": "ping"})
                return await comm.read() == "pong"
            finally:
                comm.abort()
    except (TimeoutError, CommClosedError, OSError):
        return False


class Stream:
    """A registered stream to the scheduler (as a worker or a client), reopened when
    the scheduler hangs up on it; what the scheduler sends back is read and dropped."""

    def __init__(self, address: str, registration: dict[str, Any]) -> None:
        self.address = address
        self.registration = registration
        self.comm: Comm | None = None
        self.reader: asyncio.Task | None = None
        self.received = 0
        self.reopened = 0

    async def open(self) -> None:
        self.close()
        comm = await connect(self.address, timeout=PING_TIMEOUT)
        await comm.write(self.registration)
        async with asyncio.timeout(PING_TIMEOUT):
            answer = await comm.read()
        if not isinstance(answer, dict) or answer.get("status") != "ok":
            comm.abort()
            raise AssertionError(f"registration refused: {answer}")
        self.comm = comm
        self.reader = asyncio.get_running_loop().create_task(self._drain(comm))

    async def _drain(self, comm: Comm) -> None:
        with contextlib.suppress(CommClosedError, Exception):
            while True:
                await comm.read()
                self.received += 1

    async def send(self, batch: list[Any]) -> None:
        if self.comm is None or self.comm.closed():
            self.reopened += 1
            await self.open()
        assert self.comm is not None
        try:
            await self.comm.write(batch)
        except (CommClosedError, TypeError, ValueError, OverflowError):
            pass  # closed by the scheduler, or a value msgpack itself refuses

    def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            self.reader = None
        if self.comm is not None:
            self.comm.abort()
            self.comm = None


async def request(address: str, msg: Any, timeout: float = PING_TIMEOUT) -> Any:
    """Send one request on a fresh connection; the answer, or None if it hung up."""
    try:
        comm = await connect(address, timeout=timeout)
    except (CommClosedError, OSError):
        return None
    try:
        await comm.write(msg)
        if isinstance(msg, dict) and msg.get("op") in ("register-worker", "register-client"):
            timeout = 2.0  # a valid registration keeps the comm: the answer is enough
        async with asyncio.timeout(timeout):
            return await comm.read()
    except (TimeoutError, CommClosedError, TypeError, ValueError, OverflowError):
        return None
    finally:
        comm.abort()


def handshake_bytes() -> bytes:
    frames = dumps({"op": "handshake", "protocol": PROTOCOL_VERSION, "python": "3"})
    return pack_frames_prelude(frames) + b"".join(bytes(f) for f in frames)


async def raw_bytes(address: str, data: bytes, handshake: bool = True) -> None:
    """Write ``data`` on a raw TCP connection (after a handshake) and hang up."""
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    try:
        async with asyncio.timeout(PING_TIMEOUT):
            await loop.sock_connect(sock, (host, int(port)))
            await loop.sock_sendall(sock, (handshake_bytes() if handshake else b"") + data)
    except (OSError, TimeoutError):
        pass
    finally:
        sock.close()


class InProcessCluster:
    """A real scheduler (with HTTP) and workers on a background loop of this process."""

    def __init__(self, n_workers: int = 2) -> None:
        self.runner = LoopRunner("in-process-cluster")
        self.scheduler, self.workers = self.runner.run(lambda: self._start(n_workers), 30)
        self.address = self.scheduler.address

    async def _start(self, n_workers: int) -> tuple[Scheduler, list[Worker]]:
        scheduler = await Scheduler(http_port=0).start()
        workers = [await Worker(scheduler.address, nthreads=1, name=f"w{i}",
                                memory_limit="1GiB").start() for i in range(n_workers)]
        return scheduler, workers

    def run(self, func: Any, timeout: float = 60) -> Any:
        return self.runner.run(func, timeout)

    def healthy(self) -> None:
        """Every server answers, every worker is still registered, the state is valid."""
        async def check() -> None:
            for address in (self.address, *(w.address for w in self.workers)):
                assert await ping(address), f"{address} stopped answering"
        self.run(check)
        assert {w.address for w in self.workers} <= set(self.scheduler.state.workers)
        self.scheduler.state.validate()

    def close(self) -> None:
        async def stop() -> None:
            for w in self.workers:
                await w.close()
            await self.scheduler.close()
        self.run(stop)
        self.runner.stop()
