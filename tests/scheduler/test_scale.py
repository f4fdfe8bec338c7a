"""A million tasks at once: what keeps the scheduler small and responsive.

Forgotten task states go by reference counting (the servers freeze old
objects, so a cycle would never be collected), the root queue keeps its
priority order at O(1) per task, and a large read is handled in slices with
the rest of the loop served between them.
"""

from __future__ import annotations

import asyncio
import weakref

import pytest

from shoal.protocol import serialize
from shoal.scheduler import _server
from shoal.scheduler._events import (
    AddClient,
    AddWorker,
    ClientReleasesKeys,
    TaskFinished,
    TaskSpec,
    ToWorker,
    UpdateGraph,
)
from shoal.scheduler._server import HANDLE_SLICE, RELEASE_SLICE
from shoal.scheduler._state import SchedulerState
from tests.fuzz.peers import InProcessCluster, Stream
from tests.polling import async_wait_for

S = "test"


def computes(out):
    return [(i.worker, i.msg["key"]) for i in out
            if isinstance(i, ToWorker) and i.msg["op"] == "compute-task"]


def finish_all(state: SchedulerState, out) -> None:
    """Report every task sent to a worker as finished, until nothing is left to run."""
    todo = computes(out)
    while todo:
        worker, key = todo.pop()
        todo.extend(computes(state.handle(TaskFinished(S, worker, key, 8))))


def test_forgotten_task_states_are_freed_by_reference_counting(no_cyclic_gc):
    state = SchedulerState()
    state.handle(AddWorker(S, "w1", "w1", 1, 10**9), AddWorker(S, "w2", "w2", 2, 10**9),
                 AddClient(S, "c"))
    roots = [TaskSpec(f"r-{i}", "f", b"a") for i in range(50)]
    pairs = [TaskSpec(f"p-{i}", "f", b"a", [f"r-{i}", f"r-{i + 1}"]) for i in range(49)]
    total = TaskSpec("total", "f", b"a", [p.key for p in pairs])
    specs = [*roots, *pairs, total]
    finish_all(state, state.handle(UpdateGraph(S, "c", specs, {"f": b"F"},
                                               [s.key for s in specs])))
    refs = [weakref.ref(ts) for ts in state.tasks.values()]
    assert len(refs) == len(specs) and all(r().state == "memory" for r in refs)

    state.handle(ClientReleasesKeys(S, "c", [s.key for s in specs]))

    assert not state.tasks
    assert [r for r in refs if r() is not None] == []  # no collection ran
    state.validate()


def test_the_root_queue_hands_out_the_highest_priority_first():
    state = SchedulerState()
    state.handle(AddWorker(S, "w1", "w1", 1, 10**9), AddClient(S, "c"))

    def graph(prefix: str, n: int, priority: int = 0) -> list[tuple[str, str]]:
        specs = [TaskSpec(f"{prefix}-{i}", "f", b"a", priority=priority) for i in range(n)]
        return computes(state.handle(UpdateGraph(S, "c", specs, {"f": b"F"},
                                                 [s.key for s in specs])))

    started = graph("low", 6)  # the worker's slots fill, the rest is queued
    assert len(started) < 6
    assert graph("later", 3) == []  # queued behind the first graph, in the same run
    assert graph("urgent", 3, priority=5) == []  # a run of its own, ahead of both
    assert len(state.placement._runs) == 2  # not a run (nor an entry) per task
    running = [key for _, key in started]
    order = []
    while running:
        new = [k for _, k in computes(state.handle(TaskFinished(S, "w1", running.pop(0), 8)))]
        order += new
        running += new
    assert order == ["urgent-0", "urgent-1", "urgent-2",
                     *[f"low-{i}" for i in range(len(started), 6)],
                     "later-0", "later-1", "later-2"]
    state.validate()


@pytest.fixture(scope="module")
def cluster():
    c = InProcessCluster(n_workers=0)
    yield c
    c.close()


def _calls(prefix: str, n: int) -> dict:
    return {"op": "update-graph", "tasks": [], "wanted": [],
            "functions": {"f": serialize(abs)},
            "calls": {"func": "f", "keys": [f"{prefix}-{i}" for i in range(n)],
                      "args": [serialize(((i,), {})).compact() for i in range(n)]}}


def test_a_large_read_is_handled_in_slices_with_the_loop_served_between(cluster):
    scheduler = cluster.scheduler
    graphs = 8

    async def run() -> list[int]:
        stream = Stream(cluster.address, {"op": "register-client", "client": "slices"})
        seen: list[int] = []

        async def watch() -> None:  # runs whenever the loop gets a turn
            while len(scheduler.state.tasks) < graphs * HANDLE_SLICE:
                seen.append(len(scheduler.state.tasks))
                await asyncio.sleep(0)

        watcher = asyncio.ensure_future(watch())
        try:
            # one write, one read: eight graphs of a slice each
            await stream.send([_calls(f"slice{g}", HANDLE_SLICE) for g in range(graphs)])
            await asyncio.wait_for(watcher, 30)
            await stream.send([{"op": "client-releases-keys",
                                "keys": list(scheduler.state.tasks)}])
            await async_wait_for(lambda: not scheduler.state.tasks, what="tasks released")
        finally:
            watcher.cancel()
            stream.close()
        return seen

    seen = cluster.run(run)
    between = {n for n in seen if 0 < n < graphs * HANDLE_SLICE}
    assert len(between) >= graphs - 1, sorted(set(seen))  # a turn after every slice
    cluster.healthy()


async def _submitted(scheduler, stream: Stream, prefix: str, n: int) -> None:
    """Graphs of ``n`` tasks in all from ``stream``, in the scheduler once this returns."""
    before = len(scheduler.state.tasks)
    await stream.send([_calls(f"{prefix}{g}", HANDLE_SLICE) for g in range(n // HANDLE_SLICE)])
    await async_wait_for(lambda: len(scheduler.state.tasks) == before + n, what="graphs in")


def test_a_departed_clients_keys_are_released_in_slices_with_the_loop_served_between(cluster):
    scheduler = cluster.scheduler
    slices = 4
    n = slices * RELEASE_SLICE

    async def run() -> list[int]:
        stream = Stream(cluster.address, {"op": "register-client", "client": "leaving"})
        await _submitted(scheduler, stream, "leaving", n)
        seen: list[int] = []

        async def watch() -> None:  # runs whenever the loop gets a turn
            while scheduler.state.tasks:
                seen.append(len(scheduler.state.tasks))
                await asyncio.sleep(0)

        watcher = asyncio.ensure_future(watch())
        try:
            stream.close()  # the client goes, holding every one of its n futures
            await asyncio.wait_for(watcher, 30)
        finally:
            watcher.cancel()
        return seen

    seen = cluster.run(run)
    between = {k for k in seen if 0 < k < n}
    assert len(between) >= slices - 1, sorted(set(seen))  # a turn after every slice
    assert "leaving" not in scheduler.state.clients
    cluster.healthy()


def test_a_client_back_while_its_keys_are_released_keeps_what_it_asks_for_again(
        cluster, monkeypatch):
    scheduler = cluster.scheduler
    registration = {"op": "register-client", "client": "back"}
    n = 2 * HANDLE_SLICE
    monkeypatch.setattr(_server, "RELEASE_SLICE", 5)  # the release takes 100 loop turns
    last = f"old{n // HANDLE_SLICE - 1}"  # the graph of the keys released last

    async def run() -> None:
        first = Stream(cluster.address, registration)
        await _submitted(scheduler, first, "old", n)
        first.close()
        again = Stream(cluster.address, registration)
        try:
            # registered only once the old keys are let go of; then asks again
            # for one of those released last
            await again.send([_calls(last, 1)])
            await async_wait_for(lambda: list(scheduler.state.tasks) == [f"{last}-0"],
                                 what="only the key asked for again")
            assert scheduler.state.tasks[f"{last}-0"].who_wants == ("back",)
            assert "back" in scheduler.state.clients
            await again.send([{"op": "client-releases-keys", "keys": [f"{last}-0"]}])
            await async_wait_for(lambda: not scheduler.state.tasks, what="tasks released")
        finally:
            again.close()

    cluster.run(run)
    cluster.healthy()


def test_columns_of_unequal_length_are_refused_and_nothing_is_made(cluster):
    scheduler = cluster.scheduler

    async def run() -> None:
        stream = Stream(cluster.address, {"op": "register-client", "client": "uneven"})
        try:
            msg = _calls("uneven", 3)
            msg["calls"]["args"].pop()
            await stream.send([msg, _calls("even", 2)])
            await async_wait_for(lambda: "even-1" in scheduler.state.tasks, what="next graph")
            assert not [k for k in scheduler.state.tasks if k.startswith("uneven")]
            await stream.send([{"op": "client-releases-keys", "keys": ["even-0", "even-1"]}])
            await async_wait_for(lambda: not scheduler.state.tasks, what="tasks released")
        finally:
            stream.close()

    cluster.run(run)
    cluster.healthy()
