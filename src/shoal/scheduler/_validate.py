"""The scheduler's invariants, checked by ``SchedulerState.validate()``.

Tests call it after every event; it is the definition of a consistent state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._state import SchedulerState


def validate_state(state: SchedulerState) -> None:
    """Check every invariant; raises AssertionError naming the broken one."""
    recount: dict[str, dict[str, int]] = {}
    queue = state.placement.queued_tasks()
    for key, ts in state.tasks.items():
        assert ts.key == key
        ts.validate()
        by_state = recount.setdefault(ts.prefix, {})
        by_state[ts.state] = by_state.get(ts.state, 0) + 1
        for dep in ts.dependencies:
            assert dep.key in state.tasks, f"{key}: dependency {dep.key} forgotten"
            assert ts in dep.dependents, f"{key} not among {dep.key}'s dependents"
        if ts.state == "processing":
            ws = ts.processing_on
            assert ws is not None and ws.address in state.workers and ts in ws.processing
        if ts.state == "queued":
            assert ts in queue, f"{key} queued but not in the queue"
        for ws in ts.who_has:
            assert ws.address in state.workers and ts in ws.has_what
    kept = {prefix: {s: n for s, n in counts.items() if n}
            for prefix, counts in state.prefix_counts.items()}
    assert kept == recount, f"counts by prefix {kept} != {recount}"
    for ws in state.workers.values():
        ws.validate()
        for ts in ws.has_what:
            assert ts.key in state.tasks and ts.state == "memory"
    state.placement.loads.check(state.workers)
    assert len(queue) == state.placement.queued, (len(queue), state.placement.queued)
    for ts in queue:
        assert state.tasks.get(ts.key) is ts, f"{ts.key}: queued but forgotten"
    for ts in state.stealing.in_flight:
        assert ts.state == "processing", f"{ts.key}: stealing a task that is {ts.state}"
    for token in state.function_refs:
        assert token in state.functions
    pinned = set().union(*state.client_functions.values()) if state.client_functions else set()
    assert set(state.functions) <= set(state.function_refs) | pinned, "function leaked"
    refs: dict[str, int] = {}
    for ts in state.tasks.values():
        if ts.func is not None:
            refs[ts.func] = refs.get(ts.func, 0) + 1
    assert refs == state.function_refs, "function reference counts drifted"
