"""The scheduler catching up with workers (scheduler/_catch_up.py).

A real scheduler in this process on loopback TCP; the worker it waits for
is a real connection that registers as a worker and answers (or does not)
the ``catch-up`` the scheduler sends it, so each case is driven step by step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from shoal.comm import Comm, connect
from tests.fuzz.peers import InProcessCluster, request

WAIT = 10.0  # seconds any step below may take


@pytest.fixture(scope="module")
def cluster():
    c = InProcessCluster(n_workers=1)
    yield c
    c.close()


async def fake_worker(cluster: InProcessCluster, address: str) -> Comm:
    comm = await connect(cluster.address)
    await comm.write({"op": "register-worker", "address": address, "name": address,
                      "nthreads": 1, "memory_limit": 0})
    assert (await comm.read())["status"] == "ok"
    return comm


async def next_catch_up(comm: Comm) -> int:
    """The token of the next catch-up the scheduler sends on ``comm``."""
    async with asyncio.timeout(WAIT):
        while True:
            batch = await comm.read()
            for msg in batch if isinstance(batch, list) else [batch]:
                if msg.get("op") == "catch-up":
                    return msg["token"]


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT}s: {what}")
        await asyncio.sleep(0.005)  # polling a condition with a deadline, not a sleep as a sync


def catching_up(cluster: InProcessCluster, workers: list[str]) -> asyncio.Task[Any]:
    return asyncio.ensure_future(request(cluster.address, {"op": "catch_up", "workers": workers},
                                         timeout=WAIT))


def waiting(cluster: InProcessCluster) -> list[asyncio.Future[None]]:
    return [f for _, f in cluster.scheduler.catch_up._waiting.values() if not f.done()]


def test_the_answer_waits_for_the_named_worker_and_its_own_token(cluster):
    fake = "tcp://127.0.0.1:6"

    async def scenario() -> None:
        comm = await fake_worker(cluster, fake)
        try:
            # named twice, and with one that is no worker: one catch-up, for the worker
            asking = catching_up(cluster, [fake, "tcp://127.0.0.1:1", fake])
            token = await next_catch_up(comm)
            ws = cluster.scheduler.state.workers[fake]
            # another token, a malformed one, then a heartbeat: all read in one batch
            await comm.write([{"op": "caught-up", "token": token + 1_000},
                              {"op": "caught-up", "token": "soon"},
                              {"op": "heartbeat", "metrics": {"cpu": 42.0}}])
            await until(lambda: ws.metrics.get("cpu") == 42.0, "the heartbeat read")
            assert not asking.done() and len(waiting(cluster)) == 1
            await comm.write([{"op": "caught-up", "token": token}])
            assert await asking == {"waited": 1, "late": 0}
        finally:
            comm.abort()

    cluster.run(scenario)
    assert cluster.scheduler.catch_up._waiting == {}
    cluster.healthy()


def test_a_worker_that_leaves_ends_the_wait_for_it(cluster):
    fake = "tcp://127.0.0.1:5"

    async def scenario() -> float:
        comm = await fake_worker(cluster, fake)
        asking = catching_up(cluster, [fake])
        await next_catch_up(comm)
        start = time.monotonic()
        comm.abort()  # gone without answering
        assert await asking == {"waited": 1, "late": 0}
        return time.monotonic() - start

    took = cluster.run(scenario)
    assert took < WAIT / 2  # not the timeout: the removal ended it
    assert cluster.scheduler.catch_up._waiting == {}
    cluster.healthy()


def test_unknown_workers_are_answered_at_once(cluster):
    answer = cluster.run(lambda: request(cluster.address, {
        "op": "catch_up", "workers": ["tcp://127.0.0.1:2", "tcp://10.9.9.9:3"]}))
    assert answer == {"waited": 0, "late": 0} and cluster.scheduler.catch_up._waiting == {}
    bad = cluster.run(lambda: request(cluster.address, {"op": "catch_up", "workers": [7]}))
    assert bad["status"] == "error" and bad["field"] == "workers[0]"
    cluster.healthy()


def test_a_real_worker_comes_back(cluster):
    worker = cluster.workers[0].address
    answer = cluster.run(lambda: request(cluster.address, {"op": "catch_up",
                                                          "workers": [worker]}))
    assert answer == {"waited": 1, "late": 0} and cluster.scheduler.catch_up._waiting == {}
    cluster.healthy()
