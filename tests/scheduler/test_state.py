"""The scheduler's state machine, driven directly: no sockets."""

from __future__ import annotations

import pytest

from shoal.protocol import serialize
from shoal.scheduler._events import (
    AddClient,
    AddWorker,
    CancelKeys,
    ClientReleasesKeys,
    ClientUnfollowed,
    Heartbeat,
    MissingData,
    RemoveClient,
    RemoveWorker,
    RetireWorkers,
    StealResponse,
    TaskErred,
    TaskFinished,
    TaskSpec,
    ToClient,
    ToWorker,
    UpdateData,
    UpdateGraph,
)
from shoal.scheduler._state import REJOIN_HOLDER, InvalidTransition, SchedulerState

S = "test"


def spec(key: str, *deps: str, **kw) -> TaskSpec:
    return TaskSpec(key, "f", b"args", list(deps), **kw)


def graph(*specs: TaskSpec, client: str = "c", wanted: list[str] | None = None) -> UpdateGraph:
    return UpdateGraph(S, client, list(specs), {"f": b"F"},
                       wanted if wanted is not None else [s.key for s in specs])


def computes(out, worker=None):
    return [i.msg["key"] for i in out if isinstance(i, ToWorker)
            and i.msg["op"] == "compute-task" and (worker is None or i.worker == worker)]


def reports(out, op):
    return [i.msg.get("key") for i in out if isinstance(i, ToClient) and i.msg["op"] == op]


@pytest.fixture
def state() -> SchedulerState:
    s = SchedulerState()
    s.handle(AddWorker(S, "w1", "w1", 1, 10**9), AddWorker(S, "w2", "w2", 1, 10**9),
             AddClient(S, "c"))
    yield s
    s.validate()


def test_independent_task_runs_and_is_reported(state):
    out = state.handle(graph(spec("a")))
    assert computes(out) == ["a"]
    worker = next(i.worker for i in out if isinstance(i, ToWorker))
    out = state.handle(TaskFinished(S, worker, "a", 100))
    assert reports(out, "key-in-memory") == ["a"]
    assert state.tasks["a"].state == "memory"


def _clients_told(out, key):
    return sorted(i.client for i in out if isinstance(i, ToClient)
                  and i.msg["op"] == "key-in-memory" and i.msg["key"] == key)


def test_compute_task_names_the_clients_that_wait(state):
    out = state.handle(graph(spec("a"), spec("b", "a"), wanted=["b"]))
    msgs = {i.msg["key"]: i.msg for i in out if isinstance(i, ToWorker)}
    assert "report" not in msgs["a"]  # an input: no client waits for it
    worker = next(i.worker for i in out if isinstance(i, ToWorker))
    state.handle(AddClient(S, "d"))
    state.handle(UpdateGraph(S, "d", [], {}, ["b"]))
    out = state.handle(TaskFinished(S, worker, "a", 8))
    msgs = {i.msg["key"]: i.msg for i in out if isinstance(i, ToWorker)}
    assert msgs["b"]["report"] == ["c", "d"]


def test_a_result_the_worker_pushed_is_not_reported_again_to_that_client(state):
    state.handle(AddClient(S, "d"))
    out = state.handle(graph(spec("a")))
    worker = next(i.worker for i in out if isinstance(i, ToWorker))
    state.handle(UpdateGraph(S, "d", [], {}, ["a"]))
    out = state.handle(TaskFinished(S, worker, "a", 8, inline=b"v", reported=("c",)))
    assert _clients_told(out, "a") == ["d"]  # "c" had it from the worker


def test_unfollowed_reports_again_and_distrusts_that_worker(state):
    out = state.handle(graph(spec("a"), spec("b")))
    where = {i.msg["key"]: i.worker for i in out if isinstance(i, ToWorker)}
    # "a" was pushed, and the push may be lost: the client says so
    state.handle(TaskFinished(S, where["a"], "a", 8, inline=b"v", reported=("c",)))
    out = state.handle(ClientUnfollowed(S, "c", where["a"], ["a", "b", "gone"]))
    assert _clients_told(out, "a") == ["c"]
    assert _clients_told(out, "b") == []  # not done yet
    # from now on that worker's word is not taken for this client
    if where["b"] == where["a"]:
        out = state.handle(TaskFinished(S, where["b"], "b", 8, inline=b"v", reported=("c",)))
        assert _clients_told(out, "b") == ["c"]
    else:
        out = state.handle(TaskFinished(S, where["b"], "b", 8, inline=b"v", reported=("c",)))
        assert _clients_told(out, "b") == []  # another worker: still followed
    state.handle(RemoveClient(S, "c"))
    assert "c" not in state.unfollowed


def test_unfollowed_distrusts_a_push_that_comes_after_it(state):
    out = state.handle(graph(spec("a")))
    worker = next(i.worker for i in out if isinstance(i, ToWorker))
    out = state.handle(ClientUnfollowed(S, "c", worker, ["a"]))
    assert _clients_told(out, "a") == []
    out = state.handle(TaskFinished(S, worker, "a", 8, inline=b"v", reported=("c",)))
    assert _clients_told(out, "a") == ["c"]
    state.handle(RemoveWorker(S, worker))  # it reports nothing more: forgotten
    assert state.unfollowed == {"c": set()}


def test_unfollowed_from_an_unknown_client_changes_nothing(state):
    state.handle(ClientUnfollowed(S, "nobody", "w1", ["a"]))
    assert state.unfollowed == {}


def test_function_is_sent_once_per_worker(state):
    out = state.handle(graph(*(spec(f"t{i}") for i in range(4))))
    sent = [i.msg for i in out if isinstance(i, ToWorker)]
    by_worker: dict[str, int] = {}
    for inst in out:
        if isinstance(inst, ToWorker) and "function" in inst.msg:
            by_worker[inst.worker] = by_worker.get(inst.worker, 0) + 1
    assert len(sent) == 4 and all(n == 1 for n in by_worker.values())


def test_dependent_goes_to_the_worker_holding_the_big_input(state):
    state.handle(graph(spec("a"), spec("b")))
    state.handle(TaskFinished(S, state.tasks["a"].processing_on.address, "a", 10**8))
    holder = next(iter(state.tasks["a"].who_has)).address
    out = state.handle(graph(spec("c", "a")))
    assert computes(out, holder) == ["c"]


def test_input_released_once_no_longer_needed(state):
    state.handle(graph(spec("a"), spec("b", "a"), wanted=["b"]))
    wa = state.tasks["a"].processing_on.address
    state.handle(TaskFinished(S, wa, "a", 8))
    wb = state.tasks["b"].processing_on.address
    out = state.handle(TaskFinished(S, wb, "b", 8))
    assert state.tasks["a"].state == "released"
    assert any(isinstance(i, ToWorker) and i.msg == {"op": "free-keys", "keys": ["a"]}
               for i in out)


def test_release_forgets_everything(state):
    state.handle(graph(spec("a"), spec("b", "a"), wanted=["b"]))
    state.handle(TaskFinished(S, state.tasks["a"].processing_on.address, "a", 8))
    state.handle(TaskFinished(S, state.tasks["b"].processing_on.address, "b", 8))
    state.handle(ClientReleasesKeys(S, "c", ["b"]))
    assert state.tasks == {}
    assert list(state.functions) == ["f"]  # kept for the client, which sends it once
    state.handle(RemoveClient(S, "c"))
    assert state.functions == {}


def test_releasing_many_keys_tells_each_worker_once(state):
    keys = [f"k{i}" for i in range(40)]
    state.handle(graph(*(spec(k) for k in keys)))
    held: dict[str, list[str]] = {}
    for k in keys:
        w = state.tasks[k].processing_on.address
        state.handle(TaskFinished(S, w, k, 8))
        held.setdefault(w, []).append(k)
    assert len(held) == 2  # both workers hold some
    out = state.handle(ClientReleasesKeys(S, "c", keys))
    frees = [(i.worker, i.msg) for i in out if isinstance(i, ToWorker)]
    assert sorted(w for w, _ in frees) == sorted(held)  # one message per worker
    for w, msg in frees:
        assert msg["op"] == "free-keys" and sorted(msg["keys"]) == sorted(held[w])
    assert state.tasks == {}


def test_only_adjacent_frees_to_a_worker_are_joined(state):
    mine = ["a"]
    state._free("w1", mine)
    state._free("w2", ["x"])
    state._free("w1", ["b"])
    state.out.append(ToClient("c", {"op": "key-in-memory", "key": "z"}))
    state._tell("w1", {"op": "compute-task", "key": "c"})
    state._free("w1", ["c"])
    state._free("w2", ["y"])
    out = state.handle()
    assert [(type(i).__name__, getattr(i, "worker", None), i.msg) for i in out] == [
        ("ToWorker", "w1", {"op": "free-keys", "keys": ["a", "b"]}),
        ("ToWorker", "w2", {"op": "free-keys", "keys": ["x", "y"]}),
        ("ToClient", None, {"op": "key-in-memory", "key": "z"}),
        ("ToWorker", "w1", {"op": "compute-task", "key": "c"}),
        ("ToWorker", "w1", {"op": "free-keys", "keys": ["c"]}),  # after the compute: kept apart
    ]
    assert mine == ["a"]  # a list the message was made with is not changed


def test_joined_frees_are_bounded(state, monkeypatch):
    from shoal.scheduler import _state

    monkeypatch.setattr(_state, "FREE_KEYS_CHUNK", 3)
    for i in range(7):
        state._free("w1", [f"k{i}"])
    out = state.handle()
    assert [i.msg["keys"] for i in out] == [["k0", "k1", "k2"], ["k3", "k4", "k5"], ["k6"]]


def test_error_propagates_to_dependents(state):
    state.handle(graph(spec("a"), spec("b", "a"), spec("c", "b"), wanted=["c"]))
    out = state.handle(TaskErred(S, state.tasks["a"].processing_on.address, "a",
                                 serialize(ValueError("x")), "tb", "ValueError: x"))
    assert reports(out, "task-erred") == ["c"]
    assert {ts.state for ts in state.tasks.values()} == {"erred"}


def test_retries_rerun_a_failed_task(state):
    state.handle(graph(spec("a", retries=1)))
    out = state.handle(TaskErred(S, state.tasks["a"].processing_on.address, "a", None, "", "x"))
    assert computes(out) == ["a"] and state.tasks["a"].retries == 0


def test_lost_worker_result_is_recomputed(state):
    state.handle(graph(spec("a"), spec("b", "a"), wanted=["a", "b"]))
    wa = state.tasks["a"].processing_on.address
    state.handle(TaskFinished(S, wa, "a", 8))
    state.validate()
    out = state.handle(RemoveWorker(S, wa))
    assert "a" in computes(out)
    assert state.tasks["b"].state == "waiting"
    assert reports(out, "lost-key") == ["a"]


def test_task_killing_workers_is_failed(state):
    state.allowed_failures = 1
    state.handle(AddWorker(S, "w3", "w3", 1, 10**9))
    state.handle(graph(spec("bad")))
    for _ in range(2):
        state.handle(RemoveWorker(S, state.tasks["bad"].processing_on.address))
        state.validate()
    assert state.tasks["bad"].state == "erred"
    assert "died" in state.tasks["bad"].exception_text


def test_lost_scattered_data_errs(state):
    out = state.handle(UpdateData(S, "c", {"x": ["w1"]}, {"x": 8}))
    assert reports(out, "key-in-memory") == ["x"]
    out = state.handle(RemoveWorker(S, "w1"))
    assert reports(out, "task-erred") == ["x"]
    assert "scattered" in state.tasks["x"].exception_text


def test_cancel_cancels_dependents(state):
    state.handle(graph(spec("a"), spec("b", "a")))
    out = state.handle(CancelKeys(S, "c", ["a"]))
    cancelled = [i.msg["keys"][0] for i in out if isinstance(i, ToClient)]
    assert sorted(cancelled) == ["a", "b"] and state.tasks == {}


def test_client_leaving_releases_its_work(state):
    state.handle(graph(spec("a"), spec("b", "a")))
    state.handle(RemoveClient(S, "c"))
    assert state.tasks == {}


def test_missing_data_triggers_recompute(state):
    state.handle(graph(spec("a"), spec("b", "a"), wanted=["b"]))
    wa = state.tasks["a"].processing_on.address
    state.handle(TaskFinished(S, wa, "a", 8))
    wb = state.tasks["b"].processing_on.address
    out = state.handle(MissingData(S, wb, "a", wa))
    assert "a" in computes(out)


def test_restricted_task_waits_for_its_worker(state):
    out = state.handle(graph(spec("a", workers=["w9"])))
    assert state.tasks["a"].state == "no-worker" and not computes(out)
    out = state.handle(AddWorker(S, "w9", "w9", 1, 10**9))
    assert computes(out, "w9") == ["a"]


def test_resources_restrict_placement(state):
    state.handle(AddWorker(S, "gpu", "gpu", 1, 10**9, {"GPU": 2}))
    out = state.handle(graph(spec("a", resources={"GPU": 1})))
    assert computes(out, "gpu") == ["a"]


def test_roots_beyond_the_slots_are_queued(state):
    out = state.handle(graph(*(spec(f"r{i}") for i in range(50))))
    assert len(computes(out)) == sum(state.placement.slots(ws) for ws in state.workers.values())
    assert state.placement.queued == 50 - len(computes(out))
    w = state.workers["w1"]
    first = next(iter(w.processing))
    out = state.handle(TaskFinished(S, "w1", first.key, 8))
    assert len(computes(out, "w1")) == 1  # the one slot it freed


def test_a_root_queued_again_before_its_old_entry_is_reached_is_handed_out_once(state):
    state.handle(AddWorker(S, "w3", "w3", 1, 10**9))
    state.handle(graph(*(spec(f"r{i}") for i in range(12))))
    last = "r11"
    assert state.tasks[last].state == "queued"
    # the last root arrives from elsewhere while queued, then is lost with w3:
    # queued again while its first entry is still in the queue
    state.handle(UpdateData(S, "c", {last: ["w3"]}, {last: 8}))
    state.handle(RemoveWorker(S, "w3"))
    assert state.tasks[last].state == "queued"
    state.validate()
    queued = state.placement.queued
    out = state.handle(AddWorker(S, "big", "big", 64, 10**9))  # room for the whole queue
    given = computes(out, "big")
    assert sorted(given) == sorted(set(given)) and len(given) == queued, given
    assert state.placement.queued == 0 and state.tasks[last].processing_on.address == "big"


def test_result_nobody_asked_for_is_freed_on_its_worker(state):
    out = state.handle(TaskFinished(S, "w1", "unknown", 8))
    assert [(i.worker, i.msg) for i in out] == [("w1", {"op": "free-keys", "keys": ["unknown"]})]


def test_worker_freed_by_erring_dependents_takes_queued_roots(state):
    state.handle(UpdateData(S, "c", {"x": ["w1"]}, {"x": 8}))
    state.handle(graph(spec("b", "x", workers=["w2"])))
    state.handle(graph(*(spec(f"r{i}") for i in range(20))))  # roots queue behind it
    queued = state.placement.queued
    assert queued and state.tasks["b"].processing_on.address == "w2"
    out = state.handle(MissingData(S, "w2", "x", "w1"))  # x, unrecomputable, is gone
    assert state.tasks["b"].state == "erred"
    assert computes(out, "w2") and state.placement.queued < queued


def test_rejoining_worker_data_is_kept_for_clients_then_released(state):
    state.handle(AddWorker(S, "w3", "w3", 1, 10**9, keys={"old": 8}))
    assert state.tasks["old"].state == "memory" and set(state.tasks["old"].who_wants) == {REJOIN_HOLDER}
    out = state.handle(ClientReleasesKeys(S, REJOIN_HOLDER, ["old"]))
    assert state.tasks == {}
    assert [(i.worker, i.msg) for i in out] == [("w3", {"op": "free-keys", "keys": ["old"]})]


def test_resubmitted_graph_reuses_rejoined_data_and_adopts_its_lineage(state):
    state.handle(AddWorker(S, "w3", "w3", 1, 10**9, keys={"a": 8}))
    out = state.handle(graph(spec("a"), spec("b", "a"), wanted=["b"]))
    assert computes(out) == ["b"]  # a is not recomputed
    assert state.tasks["a"].func == "f" and state.tasks["b"] in state.tasks["a"].dependents
    state.handle(ClientReleasesKeys(S, REJOIN_HOLDER, ["a"]))
    assert state.tasks["a"].state == "memory"  # b still needs it
    out = state.handle(RemoveWorker(S, "w3"))  # lost again: recomputed from the recipe
    assert "a" in computes(out)


def test_rejoining_worker_holding_a_running_task_finishes_it(state):
    state.handle(graph(spec("a")))
    runner = state.tasks["a"].processing_on.address
    out = state.handle(AddWorker(S, "w3", "w3", 1, 10**9, keys={"a": 8}))
    assert state.tasks["a"].state == "memory" and reports(out, "key-in-memory") == ["a"]
    assert ToWorker(runner, {"op": "free-keys", "keys": ["a"]}) in out


def test_illegal_transition_is_refused(state):
    state.handle(graph(spec("a")))
    ts = state.tasks["a"]
    with pytest.raises(InvalidTransition):
        state._check(ts, "forgotten")


def test_idle_worker_steals_unstarted_work():
    s = SchedulerState()
    s.handle(AddWorker(S, "w1", "w1", 1, 10**9), AddClient(S, "c"))
    s.handle(graph(spec("data")))
    s.handle(TaskFinished(S, "w1", "data", 10))
    s.handle(graph(*(spec(f"t{i}", "data") for i in range(10))))
    assert len(s.workers["w1"].processing) == 10
    out = s.handle(AddWorker(S, "w2", "w2", 1, 10**9))
    requests = [i.msg["key"] for i in out if isinstance(i, ToWorker)
                and i.msg["op"] == "steal-request"]
    assert requests and all(i.worker == "w1" for i in out if i.msg["op"] == "steal-request")
    out = s.handle(StealResponse(S, "w1", requests[0], "released"))
    assert computes(out, "w2") == [requests[0]]
    s.handle(StealResponse(S, "w1", requests[1], "executing"))
    assert s.tasks[requests[1]].processing_on.address == "w1"
    s.validate()


# ------------------------------------------------------------ paused workers

def pause(s: SchedulerState, worker: str, paused: bool = True):
    return s.handle(Heartbeat(S, worker, {"paused": paused}))


def steal_requests(out, worker):
    return [i.msg["key"] for i in out if isinstance(i, ToWorker) and i.worker == worker
            and i.msg["op"] == "steal-request"]


def test_a_paused_worker_is_given_no_new_work(state):
    pause(state, "w1")
    assert state.workers["w1"].status == "paused"
    out = state.handle(graph(*(spec(f"r{i}") for i in range(20))))
    assert computes(out) and not computes(out, "w1")
    state.handle(UpdateData(S, "c", {"x": ["w1"]}, {"x": 10**9}))  # big data on w1 ...
    out = state.handle(graph(spec("near-x", "x")))
    assert computes(out) == ["near-x"] and not computes(out, "w1")  # ... still not there


def test_pausing_asks_back_the_unstarted_work_and_others_take_it():
    s = SchedulerState()
    s.handle(AddWorker(S, "w1", "w1", 1, 10**9), AddClient(S, "c"))
    s.handle(UpdateData(S, "c", {"x": ["w1"]}, {"x": 8}))
    s.handle(graph(*(spec(f"t{i}", "x") for i in range(6))))
    s.handle(AddWorker(S, "w2", "w2", 1, 10**9), AddWorker(S, "w3", "w3", 1, 10**9))
    before = set(s.stealing.in_flight)  # what ordinary stealing asked for already
    out = pause(s, "w1")
    assert steal_requests(out, "w1")
    asked = set(s.stealing.in_flight)
    assert asked == set(s.workers["w1"].processing) and before < asked  # all of it, once
    started, *unstarted = sorted(asked, key=lambda ts: ts.key)
    s.handle(StealResponse(S, "w1", started.key, "executing"))  # it keeps what it started
    for ts in unstarted:
        s.handle(StealResponse(S, "w1", ts.key, "released"))
        assert ts.processing_on is None or ts.processing_on.address != "w1"
    assert list(s.workers["w1"].processing) == [started]
    s.validate()


def test_a_paused_worker_neither_steals_nor_is_stolen_from():
    s = SchedulerState()
    s.handle(AddWorker(S, "w1", "w1", 1, 10**9), AddClient(S, "c"))
    s.handle(UpdateData(S, "c", {"x": ["w1"]}, {"x": 8}))
    s.handle(graph(*(spec(f"t{i}", "x") for i in range(6))))
    s.handle(AddWorker(S, "w2", "w2", 1, 10**9))
    s.stealing.in_flight.clear()  # the requests made when w2 joined: not the point here
    pause(s, "w2")
    out = s.handle(Heartbeat(S, "w1", {}))
    assert not steal_requests(out, "w1")  # idle w2 is paused: no thief
    s.validate()


def test_a_resumed_worker_gets_work_again(state):
    pause(state, "w1")
    pause(state, "w2")
    out = state.handle(graph(*(spec(f"r{i}") for i in range(4)),
                             spec("only-w1", workers=["w1"])))
    assert computes(out) == [] and state.placement.queued == 4
    assert state.tasks["only-w1"].state == "no-worker"
    out = pause(state, "w1", False)
    assert state.workers["w1"].status == "running"
    assert "only-w1" in computes(out, "w1") and len(computes(out, "w1")) >= 2
    assert not computes(out, "w2")


def test_pause_reports_from_a_leaving_worker_are_ignored(state):
    state.handle(RetireWorkers(S, ["w1"]))
    pause(state, "w1")
    assert state.workers["w1"].status == "closing"
    pause(state, "w2")
    state.handle(RetireWorkers(S, ["w2"]))  # a paused worker can be retired
    assert state.workers["w2"].status == "closing"


def test_with_every_worker_stuck_paused_what_waits_for_a_worker_fails_saying_why(state):
    pause(state, "w1")
    pause(state, "w2")
    state.handle(graph(spec("r"), spec("only-w1", workers=["w1"]),
                       spec("elsewhere", workers=["w9"])))
    why = "worker w1 cannot start this task: paused for 30.0 s and cannot spill: disk full"
    out = state.handle(Heartbeat(S, "w1", {"paused": True, "memory_stuck_failure": why}))
    assert sorted(reports(out, "task-erred")) == ["only-w1", "r"]
    assert state.tasks["r"].exception_text == why
    assert state.tasks["elsewhere"].state == "no-worker"  # w1 could not run it anyway
    assert not state.placement.queued


def test_a_stuck_worker_fails_nothing_while_another_runs(state):
    pause(state, "w1")
    state.handle(graph(*(spec(f"r{i}") for i in range(10))))
    out = state.handle(Heartbeat(S, "w1", {"paused": True, "memory_stuck_failure": "stuck"}))
    assert not reports(out, "task-erred") and state.placement.queued


def test_root_slots_follow_the_roots_own_durations(state):
    """A worker that just ran tiny tasks is not handed dozens of a new prefix's
    roots: those get the base count until one of them has finished."""
    w1 = state.workers["w1"]
    state.handle(graph(*(spec(f"tiny-{i}") for i in range(2))))
    for ts in list(w1.processing) + list(state.workers["w2"].processing):
        state.handle(TaskFinished(S, ts.processing_on.address, ts.key, 8, 1.0, 1.00001))
    assert state.placement.slots(w1, "tiny") > 10  # 10 us tasks: many cover 4 ms
    out = state.handle(graph(*(spec(f"heavy-{i}") for i in range(40))))
    base = state.placement.slots(w1, "heavy")
    assert base == 2  # 1 thread x SATURATION, rounded up
    assert len(computes(out, "w1")) == base and len(computes(out, "w2")) == base
    first = next(iter(w1.processing))
    out = state.handle(TaskFinished(S, "w1", first.key, 8, 1.0, 1.2))  # 0.2 s each
    assert state.placement.slots(w1) == base and len(computes(out, "w1")) == 1


def test_a_dependent_stays_with_its_input_while_roots_are_queued(state):
    """An idle thread is about to get a queued root, which needs nothing fetched:
    a dependent is not moved from its input to another worker meanwhile, even
    one where it would start sooner; once the queue is empty, it may be."""
    w1, w2 = state.workers["w1"], state.workers["w2"]
    state.handle(graph(*(spec(f"busy-{i}", workers=["w1"]) for i in range(3)),
                       spec("a", workers=["w1"]), spec("a2", "a"),
                       spec("b", workers=["w1"]), spec("b2", "b"),
                       *(spec(f"r-{i}") for i in range(6))))
    assert state.placement.queued and all(ts.prefix == "r" for ts in w2.processing)
    out = state.handle(TaskFinished(S, "w1", "a", 1000))
    assert w1.occupancy > w2.occupancy + 0.4  # w2 would start it sooner
    assert computes(out) == ["a2"] and state.tasks["a2"].processing_on is w1
    while state.placement.queued:
        state.handle(TaskFinished(S, "w2", next(iter(w2.processing)).key, 8))
    while w2.processing:
        state.handle(TaskFinished(S, "w2", next(iter(w2.processing)).key, 8))
    out = state.handle(TaskFinished(S, "w1", "b", 1000))
    assert computes(out) == ["b2"] and state.tasks["b2"].processing_on is w2
