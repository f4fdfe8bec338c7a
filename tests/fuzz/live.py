"""The live fuzzer: real ``shoal scheduler`` and ``shoal worker`` processes on
loopback, attacked over TCP and HTTP, then checked: still alive, still
answering, still computing.

``run_live(inputs=..., seconds=...)`` stops at whichever bound comes first
and returns a :class:`Tally`.  The default suite runs it briefly
(``test_fuzz_live.py``); ``python -m tests.fuzz --minutes 10`` runs it long.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import time
import urllib.error
import urllib.request

from shoal.cluster._process import ChildProcess
from shoal.protocol._ops import FROM_CLIENT, FROM_WORKER, SCHEDULER_OPEN, SCHEDULER_RPC, WORKER_RPC

from .generate import Inputs, tame
from .peers import Stream, Tally, ping, raw_bytes, request

HTTP_PATHS = ["/api/v1/retire_workers", "/api/v1/workers", "/api/v1/dashboard?since=x",
              "/health", "/metrics", "/nope", "/static/../../etc/passwd", "/api/v1/idle"]
#: Every this many inputs the servers are checked (and once at the end).
CHECK_EVERY = 50


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_body(rng: random.Random, inputs: Inputs) -> bytes:
    roll = rng.random()
    if roll < 0.2:
        depth = rng.choice([10, 1000, 100_000])
        return b"[" * depth + b"]" * depth
    if roll < 0.4:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
    if roll < 0.5:
        # (a valid {"n": 1} would retire the worker the fuzzer checks: not a bug)
        return b'{"n": ' + rng.choice([b"-1", b"0", b"1e999", b"true", b'"1"', b"[1]"]) + b"}"
    if roll < 0.55:
        return b"x" * (2 * 1024 * 1024)
    return repr(inputs.awkward()).encode()


def _http(url: str, method: str, body: bytes | None) -> int:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


class LiveCluster:
    """One scheduler and one worker process, each with HTTP."""

    def __init__(self) -> None:
        env = {"PYTHONFAULTHANDLER": "1"}  # a hung server shows its stacks (see _check)
        self.scheduler = ChildProcess(["--log-level", "ERROR", "scheduler", "--host", "127.0.0.1",
                                       "--port", "0", "--http-port", "0"], env=env)
        info = self.scheduler.wait_announced(60)
        self.address, self.http = info["address"], info["http_address"]
        self.worker_http_port = _free_port()
        self.worker = ChildProcess(["--log-level", "ERROR", "worker", self.address, "--no-nanny",
                                    "--nthreads", "1", "--host", "127.0.0.1",
                                    "--http-port", str(self.worker_http_port)], env=env)
        self.worker_address = self.worker.wait_announced(60)["address"]
        self.worker_http = f"http://127.0.0.1:{self.worker_http_port}"

    def stop(self) -> None:
        self.worker.terminate()
        self.scheduler.terminate()


async def _check(cluster: LiveCluster, tally: Tally) -> bool:
    """Are both servers alive and serving?  Counts what is not."""
    healthy = True
    for name, proc in (("scheduler", cluster.scheduler), ("worker", cluster.worker)):
        if not proc.alive():
            tally.crashes += 1
            tally.note(f"the {name} exited with {proc.proc.poll()}")
            healthy = False
    for name, address, proc in (("scheduler", cluster.address, cluster.scheduler),
                                ("worker", cluster.worker_address, cluster.worker)):
        start = time.monotonic()
        if not await ping(address):
            tally.hangs += 1
            tally.note(f"the {name} did not answer a ping ({time.monotonic() - start:.1f}s); "
                       "its stacks are on stderr")
            if proc.alive():
                os.kill(proc.pid, signal.SIGABRT)  # faulthandler prints every thread's stack
            healthy = False
    loop = asyncio.get_running_loop()
    for url in (cluster.http + "/health", cluster.worker_http + "/health"):
        if await loop.run_in_executor(None, _http, url, "GET", None) != 200:
            tally.stopped_serving += 1
            tally.note(f"{url} stopped answering 200")
            healthy = False
    return healthy


async def _one_input(cluster: LiveCluster, rng: random.Random, inputs: Inputs,
                     worker: Stream, client: Stream) -> None:
    protected = frozenset({cluster.worker_address})
    roll = rng.random()
    if roll < 0.25:
        await worker.send([inputs.maybe_broken(FROM_WORKER) for _ in range(rng.randint(1, 3))])
    elif roll < 0.5:
        await client.send([inputs.maybe_broken(FROM_CLIENT) for _ in range(rng.randint(1, 3))])
    elif roll < 0.65:
        table = rng.choice([SCHEDULER_RPC, SCHEDULER_OPEN])
        await request(cluster.address, tame(inputs.maybe_broken(table), protected), timeout=5)
    elif roll < 0.75:
        await request(cluster.worker_address, tame(inputs.maybe_broken(WORKER_RPC)), timeout=5)
    elif roll < 0.85:
        target = rng.choice([cluster.address, cluster.worker_address])
        table = rng.choice([SCHEDULER_RPC, WORKER_RPC, FROM_CLIENT])
        await raw_bytes(target, inputs.frames_bytes(tame(inputs.maybe_broken(table), protected)),
                        handshake=rng.random() < 0.8)
    else:
        base = rng.choice([cluster.http, cluster.worker_http])
        url = base + rng.choice(HTTP_PATHS)
        method = rng.choice(["GET", "POST", "POST", "PUT", "DELETE"])
        body = _http_body(rng, inputs) if method != "GET" else None
        if "retire" in url and method == "POST":
            body = body if rng.random() < 0.9 else b'{"n": 0}'
        await asyncio.get_running_loop().run_in_executor(None, _http, url, method, body)


def _computes(address: str) -> bool:
    from shoal import Client

    try:
        with Client(address, timeout=20) as client:
            return client.submit(sum, [1, 2, 3], pure=False).result(timeout=60) == 6
    except (TimeoutError, OSError):
        return False


async def _describe(cluster: LiveCluster) -> str:
    """What the scheduler and the worker say they are doing, for the report."""
    info = await request(cluster.address, {"op": "scheduler_info"}) or {}
    workers = {a: {k: w.get(k) for k in ("status", "processing", "executing", "metrics")}
               for a, w in (info.get("workers") or {}).items()}
    worker = await request(cluster.worker_address, {"op": "info"}) or {}
    return repr({"tasks": info.get("tasks"), "counts": info.get("counts"), "workers": workers,
                 "worker_tasks": worker.get("tasks")})[:2000]


def run_live(inputs: int, seconds: float, seed: int = 0) -> Tally:
    """Fuzz a fresh live cluster until ``inputs`` were sent or ``seconds`` passed."""
    tally = Tally()
    cluster = LiveCluster()
    try:
        asyncio.run(_attack(cluster, tally, inputs, seconds, seed))
        if tally.crashes == tally.hangs == 0 and not _computes(cluster.address):
            tally.stopped_serving += 1
            tally.note("the cluster no longer computes sum([1, 2, 3]): "
                       + asyncio.run(_describe(cluster)))
    finally:
        cluster.stop()
    return tally


async def _attack(cluster: LiveCluster, tally: Tally, count: int, seconds: float,
                  seed: int) -> None:
    rng = random.Random(seed)
    inputs = Inputs(rng, keys=["k-0", "k-1", cluster.worker_address])
    fake_worker = Stream(cluster.address, {
        "op": "register-worker", "address": "tcp://127.0.0.1:1", "name": "fuzz-worker",
        "nthreads": 1, "memory_limit": 0})
    fake_client = Stream(cluster.address, {"op": "register-client", "client": "fuzz-client"})
    deadline = time.monotonic() + seconds
    try:
        while tally.inputs < count and time.monotonic() < deadline:
            await _one_input(cluster, rng, inputs, fake_worker, fake_client)
            tally.inputs += 1
            if tally.inputs % CHECK_EVERY == 0 and not await _check(cluster, tally):
                return
    finally:
        fake_worker.close()
        fake_client.close()
    await _check(cluster, tally)
