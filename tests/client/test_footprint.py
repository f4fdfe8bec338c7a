"""What a client holds per future, for clients that hold a million of them.

A released future's state goes by reference counting alone, recipes and
all; results on one worker share one tuple naming it; a ``map`` of tasks
without inputs travels as columns and still mixes with tasks that have some.
"""

from __future__ import annotations

import gc
import threading

import pytest

from shoal import wait
from shoal._gc import collection_paused
from shoal.client import _client
from shoal.client._future import FutureState
from shoal.client._recipes import Column
from shoal.protocol import SerializationError
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


class _Watched(list):
    """A map's argument list that, at one item, waits for something to be true."""

    def __init__(self, items, at, until):
        super().__init__(items)
        self.at, self.until = at, until

    def __iter__(self):
        for i, item in enumerate(list.__iter__(self)):
            if i == self.at:
                wait_for(self.until, what="the tasks sent so far reaching the scheduler")
            yield item


def test_a_large_map_is_sent_while_it_is_built(client, monkeypatch):
    """Its tasks without inputs go out MAP_SEND_TASKS at a time: the scheduler has
    the first ones while the call is still building the rest; every future's
    recipe is the column of its own batch."""
    monkeypatch.setattr(_client, "MAP_SEND_TASKS", 10)
    first = client.submit(inc, 100)
    args = _Watched(range(45), at=25, until=lambda: client.scheduler_info()["tasks"] >= 21)
    futures = client.map(add, args, [first if i % 9 == 0 else i for i in range(45)])
    assert client.gather(futures) == [i + (101 if i % 9 == 0 else i) for i in range(45)]
    columns = {id(f._state.recipe): f._state.recipe for f in futures
               if f._state.recipe is not None and type(f._state.recipe) is Column}
    assert [len(c.packed.keys) for c in columns.values()] == [10, 10, 10, 10]  # 40 without inputs
    assert gc.isenabled()


def test_no_collection_runs_while_a_map_builds_and_it_comes_back_after(client):
    seen = []  # whether collection is on, at each 1000th argument

    class Recorded(list):
        def __iter__(self):
            for i, item in enumerate(list.__iter__(self)):
                if i % 1000 == 0:
                    seen.append(gc.isenabled())
                yield item

    futures = client.map(inc, Recorded(range(20_000)))
    # automatic collection off all along the build
    assert seen == [False] * 20
    assert gc.isenabled()
    with pytest.raises(SerializationError):  # an argument that cannot be sent, midway
        client.map(inc, [1, 2, threading.Lock(), 4])
    assert gc.isenabled()
    gc.disable()  # a caller that turned collection off keeps it off
    try:
        client.map(inc, range(10))
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert client.gather(futures)[-1] == 20_000


def test_collection_paused_nests_and_restores_what_it_found():
    with collection_paused():
        assert not gc.isenabled()
        with collection_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
