"""What a client holds per future, for clients that hold a million of them.

A released future's state goes by reference counting alone, recipes and
all; results on one worker share one tuple naming it; a ``map`` of tasks
without inputs travels as columns and still mixes with tasks that have some.
"""

from __future__ import annotations

import gc

import pytest

from shoal import wait
from shoal.client._future import FutureState
from tests.polling import wait_for


def inc(x):
    return x + 1


def add(x, y):
    return x + y


def _states_of(keys: set[str]) -> list[FutureState]:
    return [o for o in gc.get_objects() if type(o) is FutureState and o.key in keys]


def test_released_futures_are_freed_by_reference_counting(client, no_cyclic_gc):
    futures = client.map(inc, range(2_000))
    wait(futures)
    keys = {f.key for f in futures}
    states = [client._states[k] for k in keys]
    assert len({id(s.recipe) for s in states}) == 1  # one column of recipes for the map
    assert set(states[0].recipe.packed.keys) == keys
    assert len({id(s.workers) for s in states}) <= len(client.scheduler_info()["workers"])
    del states
    assert len(_states_of(keys)) == len(keys)

    del futures

    wait_for(lambda: not keys & client._states.keys(), what="the releases")
    assert _states_of(keys) == []  # no collection ran
    wait_for(lambda: client.scheduler_info()["tasks"] == 0, what="the scheduler forgetting")


def test_map_mixes_columns_with_tasks_that_have_inputs(client):
    first = client.submit(inc, 10)
    futures = client.map(add, [first, 1, 2, first], [1, 2, 3, 4], retries=1)
    assert client.gather(futures) == [12, 3, 5, 15]
    assert [f.key for f in futures] == [f.key for f in client.map(add, [first, 1, 2, first],
                                                                  [1, 2, 3, 4], retries=1)]


def test_a_future_submitted_twice_shares_its_state_and_counts_both(client):
    a, b = client.submit(inc, 41), client.submit(inc, 41)
    assert a._state is b._state and a._state.refs == 2
    key = a.key
    del a
    wait_for(lambda: client._states[key].refs == 1, what="one release counted")
    assert b.result() == 42


def test_waits_that_time_out_leave_nothing_on_the_state(client):
    stuck = client.submit(inc, 1, resources={"GPU": 1})  # no worker has one: it cannot run
    for return_when in ("ALL_COMPLETED", "FIRST_COMPLETED"):
        with pytest.raises(TimeoutError):
            wait([stuck], timeout=0.05, return_when=return_when)
    with pytest.raises(TimeoutError):
        stuck.exception(timeout=0.05)
    assert not stuck._state.callbacks  # the waiters were callbacks, each taken back
    stuck.cancel()
    wait_for(lambda: stuck.cancelled(), what="the cancel")
    assert wait([stuck], timeout=5).done == {stuck}
