"""The index of running workers by load (scheduler/_loads.py), alone and as the
state machine keeps it: every answer it gives must be the one a pass over the
workers would give, and ``validate()`` checks it after every event here."""

from __future__ import annotations

from collections import Counter

from shoal.scheduler._events import (
    AddClient,
    AddWorker,
    Heartbeat,
    LongRunning,
    RemoveWorker,
    RetireWorkers,
    TaskFinished,
    TaskSpec,
    ToWorker,
    UpdateGraph,
)
from shoal.scheduler._loads import Loads
from shoal.scheduler._model import TaskState, WorkerState
from shoal.scheduler._state import SchedulerState

S = "test"


def _task(key: str) -> TaskState:
    return TaskState(key, "p", None, None, (0, 0, 0))


def _give(loads: Loads, ws: WorkerState, n: int) -> None:
    for i in range(n):
        ws.processing[_task(f"{ws.address}-{len(ws.processing)}-{i}")] = 0.0
        loads.processing += 1
    loads.refile(ws)


def test_the_least_busy_worker_of_each_thread_count_and_the_counts():
    loads = Loads()
    one = [WorkerState(f"one-{i}", f"one-{i}", 1, 10**9) for i in range(3)]
    four = WorkerState("four", "four", 4, 10**9)
    for ws in [*one, four]:
        loads.refile(ws)
    assert list(loads.least_busy()) == [one[2], four]  # of equals, the last filed
    assert (loads.idle, loads.saturated) == (4, 0)

    _give(loads, one[0], 1)
    _give(loads, one[1], 3)
    _give(loads, four, 5)
    assert list(loads.least_busy()) == [one[2], four]
    assert (loads.idle, loads.saturated) == (1, 2)  # one-2 idle; one-1 and four oversubscribed

    for ws in one:
        ws.status = "paused"
        loads.refile(ws)
    assert list(loads.least_busy()) == [four]  # only running workers are filed
    assert loads.ring == [four] and (loads.idle, loads.saturated) == (0, 1)
    loads.check({ws.address: ws for ws in [*one, four]})


def _cluster(workers: int, threads: int = 1) -> SchedulerState:
    state = SchedulerState()
    state.handle(*[AddWorker(S, f"w{i}", f"w{i}", threads, 10**9) for i in range(workers)],
                 AddClient(S, "c"))
    state.validate()
    return state


def _computes(out) -> list[tuple[str, str]]:
    return [(i.worker, i.msg["key"]) for i in out
            if isinstance(i, ToWorker) and i.msg["op"] == "compute-task"]


def _roots(state: SchedulerState, n: int, name: str = "r") -> list[tuple[str, str]]:
    specs = [TaskSpec(f"{name}-{i}", "f", b"a") for i in range(n)]
    out = state.handle(UpdateGraph(S, "c", specs, {"f": b"F"}, [s.key for s in specs]))
    state.validate()
    return _computes(out)


def test_roots_fill_every_worker_evenly_before_any_gets_more():
    state = _cluster(100)
    sent = _roots(state, 150)  # 100 threads; each worker has 2 slots for a new prefix
    per_worker = Counter(worker for worker, _ in sent)
    assert len(per_worker) == 100 and sorted(set(per_worker.values())) == [1, 2]
    assert len(sent) == 150

    more = _roots(state, 100, "s")  # 50 slots left: the workers with one task take them
    assert {w for w, _ in more} == {w for w, n in per_worker.items() if n == 1}
    assert len(more) == 50 and state.placement.queued == 50
    assert state.placement.loads.idle == 0 and state.placement.loads.saturated == 100

    worker, key = sent[0]
    out = state.handle(TaskFinished(S, worker, key, 8))  # a slot frees: the queue's next
    state.validate()
    assert [w for w, _ in _computes(out)] == [worker]


def _more(state: SchedulerState, keys: list[str]) -> list[tuple[str, str]]:
    specs = [TaskSpec(key, "f", b"a") for key in keys]
    out = state.handle(UpdateGraph(S, "c", specs, {"f": b"F"}, keys))
    state.validate()
    return _computes(out)


def test_no_room_for_a_prefix_is_remembered_only_until_a_slot_frees():
    # a graph's roots ask for a worker with room one by one; once none had room,
    # the next are queued without a pass, until a finish, a secession or a worker
    # joining makes room again: a new root of the same prefix must go out at once
    state = _cluster(1)
    sent = _roots(state, 5)  # one thread: 2 slots, 3 roots queued
    assert len(sent) == 2 and state.placement.queued == 3
    todo = list(sent)
    while todo:
        worker, key = todo.pop(0)
        todo += _computes(state.handle(TaskFinished(S, worker, key, 8)))
        state.validate()
    assert state.placement.queued == 0 and state.workers["w0"].busy == 0
    assert _more(state, ["r-5"]) == [("w0", "r-5")]

    assert _more(state, ["r-6", "r-7"]) == [("w0", "r-6")]  # full again: r-7 queued
    assert _more(state, ["r-8"]) == []
    state.handle(LongRunning(S, "w0", "r-5"))  # its slot frees: the queue's next takes it
    state.validate()
    assert state.placement.queued == 1
    state.handle(AddWorker(S, "w1", "w1", 1, 10**9))  # room on a new worker
    state.validate()
    assert state.placement.queued == 0
    assert _more(state, ["r-9"]) == [("w1", "r-9")]


def test_the_index_follows_pauses_retirements_and_departures():
    state = _cluster(4)
    _roots(state, 8)
    state.handle(Heartbeat(S, "w0", {"paused": True}))
    state.validate()
    assert state.placement.loads.filed.keys() == {state.workers[f"w{i}"] for i in (1, 2, 3)}
    state.handle(RetireWorkers(S, ["w1"]))
    state.validate()
    state.handle(RemoveWorker(S, "w2", "gone"))
    state.validate()
    assert state.placement.loads.ring == [state.workers["w3"]]
    sent = _roots(state, 3, "late")  # only w3 takes new work
    assert {w for w, _ in sent} <= {"w3"}
    state.handle(Heartbeat(S, "w0", {"paused": False}))
    state.validate()
    assert state.workers["w0"] in state.placement.loads.filed


def test_stealing_needs_an_idle_thread_and_an_oversubscribed_worker():
    state = _cluster(2)
    sent = _roots(state, 4)  # 2 slots each: both workers hold one task more than threads
    loads = state.placement.loads
    assert (loads.idle, loads.saturated) == (0, 2)
    assert state.stealing.balance() == []  # no thief
    for worker, key in [s for s in sent if s[0] == "w0"]:
        state.handle(TaskFinished(S, worker, key, 8))
        state.validate()
    # w0 is idle now and w1 still has a task waiting behind its thread: asked back
    assert loads.idle == 1 and loads.saturated == 1
    assert [ts.key for ts in state.stealing.in_flight] == [key for w, key in sent if w == "w1"][1:]
