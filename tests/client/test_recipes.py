"""The recipes a client keeps to make its keys again on a restarted scheduler.

Without sockets: states by key as the client holds them, a map's column of
recipes, and what would be resubmitted.  The restart itself, on real
processes, is in test_scheduler_restart.py.
"""

from __future__ import annotations

import gc

from shoal.client._future import FutureState
from shoal.client._recipes import Column, ColumnBuilder, keep_recipes, resubmission
from shoal.protocol import Serialized, deserialize, serialize_call

FUNC = Serialized([b"the function"])


def _column(states: dict[str, FutureState], n: int, fields: dict | None = None) -> Column:
    """A map of ``n`` tasks without inputs, key ``k<i>`` of argument ``i``, all held."""
    builder = ColumnBuilder()
    for i in range(n):
        builder.add(f"k{i}", serialize_call((i,), {}).compact())
    column = Column(({"func": "inc-token", **(fields or {})}, FUNC))
    column.fill(builder.packed())
    for key in column.packed.keys:
        states[key] = FutureState(key)
        states[key].recipe = column
    return column


def _args(task: dict) -> int:
    return deserialize(task["args"])[0][0]


def test_a_column_packs_its_arguments_and_gives_them_back_as_sent():
    states: dict[str, FutureState] = {}
    column = _column(states, 600)
    packed = column.packed
    assert len(packed.blob) < 600 * 30 and packed.bounds.itemsize == 4
    args = packed.args(250, 500)
    assert [deserialize(a)[0][0] for a in args] == list(range(250, 500))
    assert all(type(a) is bytes for a in args)
    assert packed.args(500, 750) == packed.args(500, 600)  # the last slice is short


def test_arguments_with_frames_of_their_own_are_kept_aside():
    big = Serialized([b"stream", memoryview(b"x" * 100)])
    builder = ColumnBuilder()
    builder.add("a", b"small")
    builder.add("b", big)
    builder.add("c", b"tiny")
    packed = builder.packed()
    assert packed.args(0, 3) == [b"small", big, b"tiny"]
    assert packed.subset([1, 2]).args(0, 2) == [big, b"tiny"]


def test_everything_wanted_is_resubmitted_once_with_the_calls_fields():
    states: dict[str, FutureState] = {}
    column = _column(states, 5, {"retries": 2})
    states["k1"].cancel()
    states["k2"].fail(None, "", "boom")
    wanted, tasks, functions = resubmission(states)
    assert wanted == ["k0", "k3", "k4"]
    assert [(t["key"], _args(t), t["func"], t["retries"]) for t in tasks] == [
        ("k0", 0, "inc-token", 2), ("k3", 3, "inc-token", 2), ("k4", 4, "inc-token", 2)]
    assert functions == {"inc-token": FUNC}
    assert column.held(states) == [0, 1, 2, 3, 4]  # failed or cancelled: still its recipe


def test_a_column_repacks_once_half_of_its_keys_are_let_go():
    states: dict[str, FutureState] = {}
    column = _column(states, 10)
    before = column.packed
    for key in ("k0", "k2", "k4", "k6", "k8"):
        del states[key]
        column.forget(states)
    assert column.packed is before  # half gone: not yet
    del states["k9"]
    column.forget(states)
    assert column.packed.keys == ["k1", "k3", "k5", "k7"]
    assert [deserialize(a)[0][0] for a in column.packed.args(0, 4)] == [1, 3, 5, 7]
    assert len(before.keys) == 10 and before.args(9, 10)  # a graph being sent reads it whole
    assert [t["key"] for t in resubmission(states)[1]] == ["k1", "k3", "k5", "k7"]


def test_a_key_mapped_again_belongs_to_the_newer_column():
    states: dict[str, FutureState] = {}
    old = _column(states, 4)
    builder = ColumnBuilder()
    builder.add("k1", serialize_call((1,), {}).compact())
    new = Column(({"func": "inc-token"}, FUNC))
    new.fill(builder.packed())
    states["k1"].recipe = new
    assert old.held(states) == [0, 2, 3]
    assert sorted(t["key"] for t in resubmission(states)[1]) == ["k0", "k1", "k2", "k3"]


def test_a_dependent_keeps_the_recipe_of_an_input_from_a_column_it_outlives():
    states: dict[str, FutureState] = {}
    _column(states, 3)
    states["total"] = FutureState("total")
    keep_recipes(states, [{"key": "total", "func": "sum-token", "args": b"(refs)",
                           "deps": ["k0", "k2"]}], ({"func": "sum-token"}, FUNC))
    for key in ("k0", "k1", "k2"):  # every future of the map let go of
        recipe = states.pop(key).recipe
        recipe.forget(states)
    wanted, tasks, _functions = resubmission(states)
    assert wanted == ["total"]
    assert [t["key"] for t in tasks] == ["k2", "k0", "total"]  # inputs first
    assert [_args(t) for t in tasks[:2]] == [2, 0]


def test_tasks_with_no_fields_of_their_own_share_their_functions_call():
    """Submitted one at a time, tasks of one function keep one call between them,
    with or without inputs; a task's own fields, and its inputs' keys, are its
    own; each comes back as it was sent."""
    states: dict[str, FutureState] = {}
    call = ({"func": "add-token"}, FUNC)
    graphs = [
        [{"key": "a", "func": "add-token", "args": b"(1, 2)"}],
        [{"key": "b", "func": "add-token", "args": b"(a, 1)", "deps": ["a"]}],
        [{"key": "c", "func": "add-token", "args": b"(a, b)", "deps": ["a", "b"],
          "retries": 3}],
    ]
    for graph in graphs:
        for task in graph:
            states[task["key"]] = FutureState(task["key"])
        keep_recipes(states, graph, call)
    a, b, c = (states[k].recipe for k in "abc")
    assert a[2] is call and b[2] is call
    assert c[2] == ({"func": "add-token", "retries": 3}, FUNC)
    assert b[3] == (a,) and b[4] == ("a",)
    gc.collect()
    assert not gc.is_tracked(b[4])  # a tuple of strings: the collector lets go of it
    wanted, tasks, functions = resubmission(states)
    assert wanted == ["a", "b", "c"]
    assert tasks == [task for graph in graphs for task in graph]
    assert functions == {"add-token": FUNC}
