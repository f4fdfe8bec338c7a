"""The rebalance plan, on the pure state machine: moves that even out the
bytes held, never a move that widens a gap, only the keys asked for."""

from __future__ import annotations

from shoal.scheduler._events import AddClient, AddWorker, UpdateData
from shoal.scheduler._rebalance import plan
from shoal.scheduler._state import SchedulerState

S = "test"


def cluster(sizes: dict[str, int], workers: int = 3) -> SchedulerState:
    state = SchedulerState()
    state.handle(*(AddWorker(S, f"w{i}", f"w{i}", 1, 10**9) for i in range(workers)),
                 AddClient(S, "c"))
    state.handle(UpdateData(S, "c", {k: ["w0"] for k in sizes}, sizes))
    return state


def loads_after(state: SchedulerState, moves) -> dict[str, int]:
    load = {a: ws.nbytes for a, ws in state.workers.items()}
    for ts, sender, recipient in moves:
        load[sender.address] -= ts.nbytes
        load[recipient.address] += ts.nbytes
    return load


def test_equal_results_spread_evenly():
    state = cluster({f"k{i}": 100 for i in range(9)})
    moves = plan(list(state.workers.values()))
    assert sorted(loads_after(state, moves).values()) == [300, 300, 300]
    assert all(sender.address == "w0" for _, sender, _ in moves)
    state.validate()


def test_one_big_result_is_not_moved_when_that_would_not_narrow_the_gap():
    state = cluster({"big": 1000}, workers=2)
    assert plan(list(state.workers.values())) == []


def test_largest_first_and_only_the_keys_asked_for():
    state = cluster({"a": 500, "b": 100, "c": 100, "d": 100}, workers=2)
    moves = plan(list(state.workers.values()))
    assert [ts.key for ts, _, _ in moves] == ["a"]  # 800/0 becomes 300/500
    assert sorted(loads_after(state, moves).values()) == [300, 500]
    only = plan(list(state.workers.values()), keys={"d"})
    assert [ts.key for ts, _, _ in only] == ["d"]
