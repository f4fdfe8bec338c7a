"""Actors on a multi-process cluster, as with dask.distributed: ``submit(Cls,
actor=True)`` builds the object on one worker; its methods return
``ActorFuture`` s, its attributes are read remotely, calls run one at a
time, tasks can be given it, and it is dropped with its future."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

import shoal
from shoal import Actor, ActorFuture, ActorLostError, BaseActorFuture, Client, LocalCluster
from tests.polling import wait_for


class Counter:
    n = 0

    def __init__(self, start: int = 0) -> None:
        self.n = start
        self.inside = 0
        self.overlapped = False
        self.lock = threading.Lock()

    def increment(self, by: int = 1) -> int:
        if not self.lock.acquire(blocking=False):  # a concurrent call would find it taken
            self.overlapped = True
            return -1
        try:
            self.n += by
            return self.n
        finally:
            self.lock.release()

    async def current(self) -> int:
        await asyncio.sleep(0)
        return self.n

    def where(self) -> str:
        return shoal.get_worker().address

    def fail(self) -> None:
        raise ValueError("the actor's own error")


def count_up(counter: Actor, times: int) -> int:
    return [counter.increment().result() for _ in range(times)][-1]


def actors_on_workers(client: Client) -> int:
    return sum(client.run(lambda dask_worker: len(dask_worker.actors.actors)).values())


def test_an_actor_keeps_state_on_one_worker_and_answers_calls(proc_client):
    future = proc_client.submit(Counter, 10, actor=True)
    counter = future.result(timeout=20)
    assert isinstance(counter, Actor)
    call = counter.increment()
    assert isinstance(call, ActorFuture) and isinstance(call, BaseActorFuture)
    assert call.result(timeout=10) == 11
    assert counter.increment(5).result(timeout=10) == 16
    assert counter.n == 16  # an attribute, read from the object itself
    assert counter.current().result(timeout=10) == 16  # a coroutine method
    assert counter.where().result(timeout=10) in proc_client.scheduler_info()["workers"]
    with pytest.raises(ValueError, match="the actor's own error"):
        counter.fail().result(timeout=10)


def test_calls_on_one_actor_never_overlap(proc_client):
    counter = proc_client.submit(Counter, actor=True).result(timeout=20)
    calls = [counter.increment() for _ in range(200)]
    assert sorted(c.result(timeout=20) for c in calls) == list(range(1, 201))
    assert counter.overlapped is False


def test_tasks_call_an_actor_given_as_argument_or_as_its_future(proc_client):
    future = proc_client.submit(Counter, actor=True)
    counter = future.result(timeout=20)
    assert proc_client.submit(count_up, counter, 5).result(timeout=30) == 5
    assert proc_client.submit(count_up, future, 5).result(timeout=30) == 10
    assert counter.n == 10


def test_map_makes_one_actor_per_element(proc_client):
    counters = proc_client.gather(proc_client.map(Counter, [1, 2, 3], actor=True))
    assert [c.increment().result(timeout=10) for c in counters] == [2, 3, 4]


def test_an_actor_is_dropped_with_its_future(proc_client):
    wait_for(lambda: actors_on_workers(proc_client) == 0, timeout=20,
             what="actors of earlier tests to be dropped")
    future = proc_client.submit(Counter, actor=True)
    counter = future.result(timeout=20)
    assert actors_on_workers(proc_client) == 1
    del future, counter
    wait_for(lambda: actors_on_workers(proc_client) == 0, timeout=20,
             what="the released actor to be dropped on its worker")


def test_an_async_client_awaits_actor_calls(proc_cluster):
    async def main() -> tuple[int, int]:
        async with Client(proc_cluster, asynchronous=True, timeout=20) as client:
            counter = await client.submit(Counter, 1, actor=True)
            return await counter.increment(), await counter.n

    assert asyncio.run(main()) == (2, 2)


def test_a_dead_worker_holding_an_actor_gives_a_clear_error():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster, timeout=20) as client:
        counter = client.submit(Counter, actor=True).result(timeout=20)
        assert counter.increment().result(timeout=10) == 1
        pid = client.run(os.getpid, workers=[counter._address])[counter._address]
        os.kill(pid, 9)
        with pytest.raises(ActorLostError, match="holding actor"):
            counter.increment().result(timeout=20)


def test_actor_keyword_needs_a_class(proc_client):
    with pytest.raises(TypeError, match="needs a class"):
        proc_client.submit(len, actor=True)


def test_the_actor_example_of_the_dask_page_runs_as_written(tmp_path):
    import re
    import subprocess
    import sys
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "coming-from-dask.md"
    section = doc.read_text().split("## Actors", 1)[1]
    script = tmp_path / "actors.py"
    script.write_text(re.findall(r"```python\n(.*?)```", section, re.DOTALL)[0])
    out = subprocess.run([sys.executable, str(script)], check=False, capture_output=True,
                         text=True, timeout=180, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
