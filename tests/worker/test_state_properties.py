"""Random event sequences against the worker's state machine.

A model of the data store, changed only the way the worker server changes it
(results stored before their event, fetched values stored while in flight,
``Forget`` instructions obeyed), must hold exactly the keys in memory after
every event; every state change must be in the story, by a legal move; and
releasing everything (the scheduler frees every key, every run and fetch
comes back) must leave no task, no stored value and nothing running.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.worker._state import (
    TRANSITIONS,
    AcquireReplicas,
    AddData,
    ComputeTask,
    Execute,
    ExecuteFailure,
    ExecuteSuccess,
    FailReady,
    Forget,
    FreeKeys,
    Gather,
    GatherDone,
    Rejoin,
    Rejoined,
    SchedulerLost,
    Secede,
    SetPaused,
    StealRequest,
    WorkerState,
)

from ..stories import check_story, snapshot

OPS = ["compute", "compute", "compute", "finish", "finish", "fail", "free", "gather_ok",
       "gather_fail", "gather_gone", "pause", "resume", "steal", "scatter", "replicate", "lost",
       "secede", "rejoin", "fail_ready"]
ops = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 50)), min_size=5, max_size=80)


class Driver:
    def __init__(self) -> None:
        self.ws = WorkerState("me", 2)
        self.store: set[str] = set()
        self.running: set[str] = set()  # handed to the executor, not yet reported
        self.dead: set[str] = set()  # peers found gone, and not named again since
        self.rejoining: set[str] = set()  # seceded runs that asked for a slot back
        self.n = 0

    def handle(self, *events) -> None:
        ws = self.ws
        before = snapshot(ws.tasks)
        recorded = len(ws.story_log)
        for inst in ws.handle(*events):
            if isinstance(inst, Execute):
                assert inst.key not in self.running, f"{inst.key} started twice"
                assert ws.tasks[inst.key].state == "executing"
                self.running.add(inst.key)
            elif isinstance(inst, Forget):
                self.store.discard(inst.key)
            elif isinstance(inst, Rejoined):
                assert inst.key in self.rejoining, f"{inst.key} rejoined unasked"
                self.rejoining.discard(inst.key)
            elif isinstance(inst, Gather):
                assert all(ws.tasks[k].state == "flight" for k in inst.keys)
                assert inst.worker not in self.dead, f"fetching from {inst.worker}, known gone"
        ws.validate()
        check_story(before, snapshot(ws.tasks), ws.story_log.since(recorded),
                    TRANSITIONS)
        in_memory = {k for k, t in ws.tasks.items() if t.state == "memory"}
        assert self.store == in_memory, f"store {sorted(self.store)} != memory {sorted(in_memory)}"

    def step(self, op: str, i: int) -> None:
        ws = self.ws
        keys = sorted(ws.tasks)
        if op == "compute":
            self.n += 1
            deps = {keys[i % len(keys)]: ["peer", "other"][: 1 + i % 2]} if keys and i % 3 else {}
            self.dead.difference_update(*deps.values())
            self.handle(ComputeTask(f"t{self.n}", "f", None, (i,), deps, {k: 1 for k in deps}))
        elif op in ("finish", "fail") and self.running:
            key = sorted(self.running)[i % len(self.running)]
            self.running.discard(key)
            self.rejoining.discard(key)  # a run that ends no longer waits for a slot
            if op == "finish":
                self.store.add(key)  # the server stores the value, then reports
                self.handle(ExecuteSuccess(key, 1, 0, 0))
            else:
                self.handle(ExecuteFailure(key, None, "", "x"))
        elif op == "free" and keys:
            self.handle(FreeKeys([keys[i % len(keys)]]))
        elif op.startswith("gather") and ws.in_flight_workers:
            self.gather(min(ws.in_flight_workers), op == "gather_ok", op == "gather_gone")
        elif op in ("pause", "resume"):
            self.handle(SetPaused(op == "pause"))
        elif op == "steal" and keys:
            self.handle(StealRequest(keys[i % len(keys)]))
        elif op == "scatter":
            key = f"s{i}"
            self.store.add(key)
            self.handle(AddData({key: 3}))
        elif op == "replicate":
            self.dead.discard("peer")
            self.handle(AcquireReplicas({f"r{i}": ["peer"]}, {f"r{i}": 2}))
        elif op == "lost":
            self.handle(SchedulerLost())
        elif op == "fail_ready":
            self.handle(FailReady(None, "WorkerMemoryError: stuck"))
        elif op in ("secede", "rejoin") and self.running:
            key = sorted(self.running)[i % len(self.running)]
            if op == "secede":
                self.handle(Secede(key))
            else:
                self.rejoining.add(key)
                self.handle(Rejoin(key))

    def gather(self, peer: str, ok: bool, gone: bool = False) -> None:
        keys = [t.key for t in self.ws.in_flight_workers[peer]]
        if ok:  # the server stores what arrives for keys still in flight
            self.store.update(k for k in keys if self.ws.tasks.get(k) is not None
                              and self.ws.tasks[k].state == "flight")
        if gone:
            self.dead.add(peer)
        self.handle(GatherDone(peer, {k: 1 for k in keys} if ok else {}, [] if ok else keys,
                               peer_gone=gone))

    def release_everything(self) -> None:
        for _ in range(1000):
            ws = self.ws
            if not (ws.tasks or self.running or ws.in_flight_workers):
                return
            if ws.tasks:
                self.handle(FreeKeys(sorted(ws.tasks)))
            if self.running:
                key = min(self.running)
                self.running.discard(key)
                self.rejoining.discard(key)
                self.store.add(key)
                self.handle(ExecuteSuccess(key, 1, 0, 0))
            if ws.in_flight_workers:
                self.gather(min(ws.in_flight_workers), True)
        raise AssertionError(f"could not release everything: {self.ws.tasks}")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_random_events_keep_store_story_and_invariants(events):
    d = Driver()
    for op, i in events:
        d.step(op, i)
    d.release_everything()
    ws = d.ws
    assert ws.tasks == {} and d.store == set() and not ws.executing
    assert not ws.seceded and not ws.rejoining
    assert not ws.fetching and not any(ws.fetch_by_peer.values())
    assert not ws.in_flight_workers and not ws.busy_workers
    assert ws.available_resources == ws.total_resources


def test_scheduler_lost_keeps_results_and_drops_the_rest():
    d = Driver()
    d.handle(ComputeTask("a", "f", None, (0,)), ComputeTask("b", "f", None, (1,)),
             ComputeTask("c", "f", None, (2,), {"x": ["peer"]}, {"x": 5}))
    d.running.discard("a")
    d.store.add("a")
    d.handle(ExecuteSuccess("a", 8, 0, 0))
    d.handle(SchedulerLost("scheduler-lost-1"))
    assert d.ws.held() == {"a": 8}
    assert {k: t.state for k, t in d.ws.tasks.items()} == {"a": "memory", "b": "cancelled"}
    d.running.discard("b")
    d.store.add("b")
    d.handle(ExecuteSuccess("b", 1, 0, 0))  # the run that was going: its result is dropped
    assert d.ws.held() == {"a": 8} and d.store == {"a"}
    assert any(e[3] == "scheduler-lost-1" for e in d.ws.story("b"))


def test_a_peer_found_gone_is_not_asked_again():
    """Even when the keys asked of it were released and asked for again meanwhile."""
    d = Driver()
    d.handle(AcquireReplicas({"r": ["peer"]}, {"r": 2}))  # in flight from peer
    d.handle(FreeKeys(["r"]))
    d.handle(AcquireReplicas({"r": ["peer"]}, {"r": 2}))  # again, while the first is out
    d.dead.add("peer")
    d.handle(GatherDone("peer", {}, ["r"], peer_gone=True))
    assert "r" not in d.ws.tasks or d.ws.tasks["r"].state != "flight"
