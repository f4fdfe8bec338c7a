"""The op catalogue refuses what the state machines must never see, naming the field."""

from __future__ import annotations

import pytest

from shoal.protocol._ops import FROM_CLIENT, FROM_WORKER, SCHEDULER_OPEN, check_message
from shoal.protocol._schema import Int, InvalidMessage, ListOf, Num, Record, Str

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
