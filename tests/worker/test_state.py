"""The worker's state machine, driven directly: no sockets, no threads."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.worker._state import (
    MAX_FETCHES_PER_PEER,
    PIPELINE_FETCH_BYTES,
    PREFETCH_PER_THREAD,
    TARGET_FETCH_BYTES,
    AcquireReplicas,
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
    Secede,
    Send,
    SetPaused,
    WorkerState,
)


def sent(out, op):
    return [i.msg for i in out if isinstance(i, Send) and i.msg["op"] == op]


def test_ready_task_executes_and_reports():
    ws = WorkerState("me", 1)
    out = ws.handle(ComputeTask("a", "f", None, (0,)))
    assert [i.key for i in out if isinstance(i, Execute)] == ["a"]
    out = ws.handle(ExecuteSuccess("a", 8, 1.0, 2.0))
    assert sent(out, "task-finished") == [{"op": "task-finished", "key": "a", "nbytes": 8,
                                           "start": 1.0, "stop": 2.0}]
    ws.validate()


def test_the_report_names_the_clients_told_directly():
    ws = WorkerState("me", 1)
    ws.handle(ComputeTask("a", "f", None, (0,), report=("c1", "c2")))
    assert ws.tasks["a"].report == ("c1", "c2")
    out = ws.handle(ExecuteSuccess("a", 8, 1.0, 2.0, inline=b"v", reported=("c1",)))
    assert sent(out, "task-finished") == [{"op": "task-finished", "key": "a", "nbytes": 8,
                                           "start": 1.0, "stop": 2.0, "value": b"v",
                                           "reported": ["c1"]}]
    ws.validate()


def test_threads_bound_concurrency_and_priority_orders():
    ws = WorkerState("me", 1)
    out = ws.handle(ComputeTask("late", "f", None, (5,)), ComputeTask("early", "f", None, (1,)))
    assert [i.key for i in out if isinstance(i, Execute)] == ["early"]
    out = ws.handle(ExecuteSuccess("early", 1, 0, 0))
    assert [i.key for i in out if isinstance(i, Execute)] == ["late"]


def test_missing_input_is_fetched_then_task_runs():
    ws = WorkerState("me", 2)
    out = ws.handle(ComputeTask("b", "f", None, (0,), {"a": ["peer"]}, {"a": 10}))
    gathers = [i for i in out if isinstance(i, Gather)]
    assert [(g.worker, g.keys) for g in gathers] == [("peer", ["a"])]
    ws.validate()
    out = ws.handle(GatherDone("peer", {"a": 10}, []))
    assert [i.key for i in out if isinstance(i, Execute)] == ["b"]
    assert sent(out, "add-keys") == [{"op": "add-keys", "keys": {"a": 10}}]


def test_peer_without_the_data_is_reported_missing():
    ws = WorkerState("me", 1)
    ws.handle(ComputeTask("b", "f", None, (0,), {"a": ["peer"]}, {"a": 10}))
    out = ws.handle(GatherDone("peer", {}, ["a"], peer_gone=True))
    assert sent(out, "missing-data") == [{"op": "missing-data", "key": "a",
                                          "errant_worker": "peer"}]
    ws.validate()


def test_other_replica_is_tried_after_a_failed_fetch():
    ws = WorkerState("me", 1)
    ws.handle(ComputeTask("b", "f", None, (0,), {"a": ["p1", "p2"]}, {"a": 10}))
    first = next(iter(ws.in_flight_workers))
    out = ws.handle(GatherDone(first, {}, ["a"], peer_gone=True))
    assert [g.worker for g in out if isinstance(g, Gather)] == [{"p1": "p2", "p2": "p1"}[first]]


def test_large_fetches_from_one_peer_are_pipelined_small_ones_batched():
    big = max(PIPELINE_FETCH_BYTES, TARGET_FETCH_BYTES // 2 + 1)  # one block per fetch
    ws = WorkerState("me", 1)
    out = []
    for i in range(4):
        out += ws.handle(ComputeTask(f"use{i}", "f", None, (i,), {f"b{i}": ["peer"]},
                                     {f"b{i}": big}))
    asked = [g.keys for g in out if isinstance(g, Gather)]
    assert asked == [["b0"], ["b1"]][:MAX_FETCHES_PER_PEER]  # the next asked before b0 came
    # the second answer first: only its own task leaves flight, b0 stays awaited
    out = ws.handle(GatherDone("peer", {"b1": big}, []))
    assert ws.tasks["b1"].state == "memory" and ws.tasks["b0"].state == "flight"
    assert [g.keys for g in out if isinstance(g, Gather)] == [["b2"]]
    ws.validate()
    out = ws.handle(GatherDone("peer", {}, ["b0"]))  # the peer lost b0
    assert ws.tasks["b0"].state == "fetch" and sent(out, "missing-data")
    assert [g.keys for g in out if isinstance(g, Gather)] == [["b3"]]
    ws.validate()

    small = WorkerState("me", 1)
    out = []
    for i in range(4):
        out += small.handle(ComputeTask(f"use{i}", "f", None, (i,), {f"s{i}": ["peer"]},
                                        {f"s{i}": 10}))
    assert [g.keys for g in out if isinstance(g, Gather)] == [["s0"]]
    out = small.handle(GatherDone("peer", {"s0": 10}, []))
    assert [sorted(g.keys) for g in out if isinstance(g, Gather)] == [["s1", "s2", "s3"]]
    small.validate()


def test_failure_is_reported():
    ws = WorkerState("me", 1)
    ws.handle(ComputeTask("a", "f", None, (0,)))
    out = ws.handle(ExecuteFailure("a", None, "tb", "ValueError: x"))
    assert sent(out, "task-erred")[0]["exception_text"] == "ValueError: x"
    assert "a" not in ws.tasks


def test_free_while_executing_discards_the_result():
    ws = WorkerState("me", 1)
    ws.handle(ComputeTask("a", "f", None, (0,)))
    ws.handle(FreeKeys(["a"]))
    out = ws.handle(ExecuteSuccess("a", 8, 0, 0))
    assert not sent(out, "task-finished") and any(isinstance(i, Forget) for i in out)
    assert "a" not in ws.tasks


def test_resources_limit_concurrency():
    ws = WorkerState("me", 4, {"GPU": 1})
    out = ws.handle(ComputeTask("g1", "f", None, (0,), resources={"GPU": 1}),
                    ComputeTask("g2", "f", None, (1,), resources={"GPU": 1}))
    assert [i.key for i in out if isinstance(i, Execute)] == ["g1"]
    out = ws.handle(ExecuteSuccess("g1", 1, 0, 0))
    assert [i.key for i in out if isinstance(i, Execute)] == ["g2"]


def test_paused_worker_starts_nothing_until_resumed():
    ws = WorkerState("me", 1)
    ws.handle(SetPaused(True))
    assert not [i for i in ws.handle(ComputeTask("a", "f", None, (0,))) if isinstance(i, Execute)]
    assert [i.key for i in ws.handle(SetPaused(False)) if isinstance(i, Execute)] == ["a"]


def test_a_stuck_worker_fails_its_ready_tasks_through_the_table():
    ws = WorkerState("me", 2, {"GPU": 1})
    ws.handle(SetPaused(True))
    ws.handle(ComputeTask("a", "f", None, (1,)),
              ComputeTask("g", "f", None, (0,), resources={"GPU": 1}),
              ComputeTask("w", "f", None, (2,), {"x": ["peer"]}, {"x": 1}))
    out = ws.handle(FailReady("exc", "WorkerMemoryError: disk full", "stuck-1"))
    erred = sent(out, "task-erred")
    assert [m["key"] for m in erred] == ["g", "a"]  # in priority order
    assert all(m["exception"] == "exc" and m["exception_text"] == "WorkerMemoryError: disk full"
               for m in erred)
    assert "a" not in ws.tasks and "g" not in ws.tasks and not ws.ready
    assert ws.tasks["w"].state == "waiting"  # not ready: it may still run once x arrives
    assert ws.available_resources == {"GPU": 1}  # a ready task holds no resources
    assert [e[1:4] for e in ws.story("a")][-2:] == [("ready", "error", "stuck-1"),
                                                    ("error", "released", "stuck-1")]
    assert ws.counts["failed"] == 2
    ws.validate()
    # resumed, a new task runs as before
    out = ws.handle(SetPaused(False), ComputeTask("b", "f", None, (0,)))
    assert [i.key for i in out if isinstance(i, Execute)] == ["b"]


def test_acquire_replicas_fetches_and_reports():
    ws = WorkerState("me", 1)
    out = ws.handle(AcquireReplicas({"x": ["old"]}, {"x": 5}))
    assert [g.keys for g in out if isinstance(g, Gather)] == [["x"]]
    out = ws.handle(GatherDone("old", {"x": 5}, []))
    assert sent(out, "add-keys") == [{"op": "add-keys", "keys": {"x": 5}}]


ops = st.lists(st.tuples(st.sampled_from(["compute", "finish", "fail", "free", "gather_ok",
                                          "gather_fail", "pause", "resume"]),
                         st.integers(0, 50)), max_size=80)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_random_events_keep_invariants(events):
    ws = WorkerState("me", 2)
    n = 0
    for op, i in events:
        keys = sorted(ws.tasks)
        if op == "compute":
            n += 1
            deps = {keys[i % len(keys)]: ["peer"]} if keys and i % 2 else {}
            size = PIPELINE_FETCH_BYTES if i % 3 == 0 else 1  # large ones are pipelined
            ws.handle(ComputeTask(f"t{n}", "f", None, (i,), deps, {k: size for k in deps}))
        elif op in ("finish", "fail") and ws.executing:
            ts = sorted(ws.executing, key=lambda t: t.key)[i % len(ws.executing)]
            ws.handle(ExecuteSuccess(ts.key, 1, 0, 0) if op == "finish"
                      else ExecuteFailure(ts.key, None, "", "x"))
        elif op == "free" and keys:
            ws.handle(FreeKeys([keys[i % len(keys)]]))
        elif op.startswith("gather") and ws.in_flight_workers:
            worker = min(ws.in_flight_workers)
            asks = ws.busy_workers[worker]  # answer one of its fetches
            keys_in_flight = [t.key for t in asks[i % len(asks)][0]]
            ok = op == "gather_ok"
            ws.handle(GatherDone(worker, {k: 1 for k in keys_in_flight} if ok else {},
                                 [] if ok else keys_in_flight))
        elif op == "pause":
            ws.handle(SetPaused(True))
        elif op == "resume":
            ws.handle(SetPaused(False))
        ws.validate()


def test_tiny_tasks_are_prefetched_into_the_executor():
    ws = WorkerState("me", 1)
    ws.handle(ComputeTask("warm", "f", None, (0,)))
    ws.handle(ExecuteSuccess("warm", 1, 1.0, 1.0001))  # 0.1 ms tasks: 2 ms cover 20
    out = ws.handle(*(ComputeTask(f"t{i}", "f", None, (i,)) for i in range(30)))
    assert len([i for i in out if isinstance(i, Execute)]) == 1 + ws.prefetch == 21
    ws.validate()


def test_prefetching_is_bounded_whatever_the_tasks_speed():
    ws = WorkerState("me", 2)
    ws.handle(ComputeTask("warm", "f", None, (0,)))
    ws.handle(ExecuteSuccess("warm", 1, 1.0, 1.0))  # too fast to time
    out = ws.handle(*(ComputeTask(f"t{i}", "f", None, (i,)) for i in range(200)))
    assert len([i for i in out if isinstance(i, Execute)]) == 2 * (1 + PREFETCH_PER_THREAD)
    ws.validate()


def test_slow_tasks_are_not_prefetched():
    ws = WorkerState("me", 1)
    ws.handle(ComputeTask("warm", "f", None, (0,)))
    ws.handle(ExecuteSuccess("warm", 1, 1.0, 2.0))
    out = ws.handle(*(ComputeTask(f"t{i}", "f", None, (i,)) for i in range(10)))
    assert len([i for i in out if isinstance(i, Execute)]) == 1


def test_a_seceded_task_frees_its_slot_and_rejoins_when_one_is_free():
    state = WorkerState("tcp://w", nthreads=1)
    out = state.handle(ComputeTask("a", "f", None, (0,), {}, {}, None, False),
                       ComputeTask("b", "f", None, (1,), {}, {}, None, False))
    assert [i.key for i in out if type(i) is Execute] == ["a"]
    out = state.handle(Secede("a"))
    assert Send({"op": "long-running", "key": "a"}) in out
    assert [i.key for i in out if type(i) is Execute] == ["b"]
    state.validate()
    assert not [i for i in state.handle(Rejoin("a")) if type(i) is Rejoined]  # b holds it
    out = state.handle(ExecuteSuccess("b", 1, 0.0, 0.0))
    assert Rejoined("a") in out
    state.validate()
    state.handle(ExecuteSuccess("a", 1, 0.0, 0.0))
    assert not state.executing and not state.seceded
    state.validate()
