"""The op catalogue refuses what the state machines must never see, naming the field."""

from __future__ import annotations

import pytest

from shoal.protocol._ops import FROM_CLIENT, FROM_WORKER, SCHEDULER_OPEN, check_message
from shoal.protocol._schema import (
    AnyOf,
    Anything,
    Blob,
    Bool,
    Int,
    InvalidMessage,
    ListOf,
    MapOf,
    Nullable,
    Num,
    Record,
    Str,
)

REGISTER = {"op": "register-worker", "address": "tcp://h:1", "name": "w", "nthreads": 2,
            "memory_limit": 0}


@pytest.mark.parametrize(("table", "msg", "field"), [
    (SCHEDULER_OPEN, {**REGISTER, "nthreads": 0}, "nthreads"),
    (SCHEDULER_OPEN, {**REGISTER, "nthreads": "x"}, "nthreads"),
    (SCHEDULER_OPEN, {**REGISTER, "nthreads": True}, "nthreads"),
    (SCHEDULER_OPEN, {**REGISTER, "resources": {"GPU": "1"}}, "resources['GPU']"),
    (FROM_CLIENT, {"op": "update-graph", "wanted": [], "tasks": [{"key": "a"},
                   {"key": "b", "retries": "x"}]}, "tasks[1].retries"),
    (FROM_CLIENT, {"op": "update-data", "who_has": {"k": ["tcp://h:1"]}, "nbytes": None},
     "nbytes"),
    (FROM_WORKER, {"op": "task-finished", "key": "k", "nbytes": -1}, "nbytes"),
    (FROM_WORKER, {"op": "task-finished", "key": "k", "nbytes": 1, "stop": float("nan")},
     "stop"),
    (FROM_WORKER, {"op": "add-keys"}, "keys"),
    (FROM_WORKER, {"op": "add-keys", "keys": {}, "surprise": 1}, "surprise"),
    (FROM_WORKER, {"op": "nope"}, "op"),
])
def test_bad_fields_are_refused_by_name(table, msg, field):
    with pytest.raises(InvalidMessage) as exc:
        check_message(table, msg)
    assert exc.value.field == field
    assert str(exc.value).startswith(field)


def test_optional_fields_may_be_null_and_the_op_is_not_a_field():
    op, fields = check_message(FROM_WORKER, {"op": "task-finished", "key": "k", "nbytes": 3,
                                             "value": None})
    assert op == "task-finished" and fields == {"key": "k", "nbytes": 3, "value": None}


def test_specs_describe_themselves_in_their_errors():
    spec = Record({"sizes": ListOf(Int(lo=0)), "rate": Num(lo=0), "name": Str(max_length=3)})
    negative = "sizes[1]: expected an integer of at least 0, got -2"
    for value, text in (({"sizes": [1, -2], "rate": 1, "name": "a"}, negative),
                        ({"sizes": [], "rate": float("inf"), "name": "a"}, "rate"),
                        ({"sizes": [], "rate": 1, "name": "abcd"}, "name: a string of 4")):
        with pytest.raises(InvalidMessage, match=text.replace("[", r"\[").replace("]", r"\]")):
            spec.check(value, "")


def _accepted_by_check(spec, value) -> bool:
    try:
        spec.check(value, "")
    except InvalidMessage:
        return False
    return True


def test_the_fast_answer_agrees_with_the_explanation_on_every_message():
    """``Spec.ok`` (asked of every message) and ``Spec.check`` (which says what is
    wrong) must agree: a value ``ok`` lets through is one ``check`` accepts."""
    import random

    from shoal.protocol import _ops
    from tests.fuzz.generate import AWKWARD, Inputs

    tables = [_ops.SCHEDULER_RPC, _ops.SCHEDULER_OPEN, _ops.FROM_WORKER, _ops.FROM_CLIENT,
              _ops.WORKER_RPC, _ops.FROM_SCHEDULER, _ops.TO_CLIENT]
    inputs = Inputs(random.Random(11))
    checked = refused = 0
    for i in range(6_000):
        table = tables[i % len(tables)]
        msg = inputs.maybe_broken(table)
        op = msg.get("op") if isinstance(msg, dict) else None
        specs = [table[op]] if type(op) is str and op in table else list(table.values())
        fields = {k: v for k, v in msg.items() if k != "op"} if isinstance(msg, dict) else msg
        for spec in specs:
            explained_ok = _accepted_by_check(spec, fields)
            assert spec.ok(fields) == explained_ok, (spec.describe(), msg)
            checked += 1
            refused += not explained_ok
    for value in AWKWARD:
        for spec in (Str(max_length=3, min_length=1), Int(lo=0, hi=5), Num(lo=0),
                     ListOf(Str(max_length=2)), ListOf(Int())):
            assert spec.ok(value) == _accepted_by_check(spec, value), (spec.describe(), value)
    assert checked > 6_000 and 0 < refused < checked


def test_the_compiled_answer_handles_every_kind_of_spec():
    """``ok`` of maps and lists is generated code; hold it to ``check`` on the
    shapes the catalogue does not happen to use."""
    from tests.fuzz.generate import AWKWARD

    inner = Record({"n": Num(lo=0.5, hi=float("inf")), "s": Nullable(Str(max_length=2))},
                   optional=["s"])
    specs = [
        Record({"a": Int(lo=-1, hi=1)}, extra=AnyOf(Bool(), ListOf(Int(), min_length=1,
                                                                   max_length=2))),
        MapOf(Str(min_length=1), inner),
        ListOf(inner, max_length=3),
        ListOf(AnyOf(Blob(), Anything())),
    ]
    values = [*AWKWARD, {"a": 0}, {"a": 0, "x": True}, {"a": 0, "x": [1]}, {"a": 0, "x": []},
              {"a": 0, 1: True}, {"a": 2}, {"a": True}, {"k": {"n": 1}}, {"k": {"n": 0.25}},
              {"k": {"n": float("nan")}}, {"k": {"n": 1, "s": None}}, {"k": {"n": 1, "s": "abc"}},
              {"": {"n": 1}}, [{"n": 3}], [{"n": 3}] * 4, [{"s": "a"}], [b"x", None, 1]]
    for spec in specs:
        for value in values:
            assert spec.ok(value) == _accepted_by_check(spec, value), (spec.describe(), value)
