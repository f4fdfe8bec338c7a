"""Every op a peer may send, and the shape of its message: one catalogue.

The scheduler and the worker check each message against these before
acting on it (``check_message``); a message that does not fit is refused
with an error naming the field.  The tables are grouped by who sends what
to whom, which is also where each is checked:

==================  ======================================================
``SCHEDULER_RPC``   requests to the scheduler (answered on the same comm)
``SCHEDULER_OPEN``  the first message of a worker's or client's stream
``FROM_WORKER``     a worker's stream to the scheduler
``FROM_CLIENT``     a client's stream to the scheduler
``WORKER_RPC``      requests to a worker (peers, clients, the scheduler)
``FROM_SCHEDULER``  the scheduler's stream to a worker
``TO_CLIENT``       a worker's stream of results to a client (checked by
                    the client)
==================  ======================================================

Limits on sizes are the wire's (``MAX_MESSAGE_BYTES``); here are the types,
ranges and required fields.  References (does that worker exist?) are the
state machines' to judge, since only they know.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._schema import (
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

__all__ = [
    "FROM_CLIENT",
    "FROM_SCHEDULER",
    "FROM_WORKER",
    "MAX_NTHREADS",
    "MAX_RETRIES",
    "SCHEDULER_OPEN",
    "SCHEDULER_RPC",
    "TO_CLIENT",
    "WORKER_RPC",
    "check_message",
]

#: Most threads a worker may announce, and most retries a task may ask for.
MAX_NTHREADS = 100_000
MAX_RETRIES = 1_000

KEY = Str(max_length=64 * 1024, min_length=1)
KEYS = ListOf(KEY)
ADDRESS = Str(max_length=1024, min_length=1)
ADDRESSES = ListOf(ADDRESS)
CLIENT = Str(max_length=1024, min_length=1)
SIZE = Int(lo=0)
RESOURCES = MapOf(Str(max_length=256, min_length=1), Num(lo=0))
WHO_HAS = MapOf(KEY, ADDRESSES)
NBYTES = MapOf(KEY, SIZE)
SCALAR = Nullable(AnyOf(Num(), Bool(), Str()))
EMPTY = Record({})
NAME = Str(max_length=64 * 1024, min_length=1)
TIMEOUT = Nullable(Num(lo=0))
COUNT = Nullable(Int(lo=0))
#: Values pickled with their futures as keys (datasets, variables, queues).
STORED = {"name": NAME, "data": Blob(), "keys": KEYS, "request": Str(max_length=1024)}

#: A pickled plugin and the name it is registered under.
PLUGIN = {"plugin": Blob(), "name": NAME, "idempotent": Bool()}

TASK = Record(
    {
        "key": KEY,
        "func": Str(max_length=1024),
        "args": Blob(),
        "deps": KEYS,
        "priority": Int(),
        "workers": ADDRESSES,
        "allow_other_workers": Bool(),
        "resources": RESOURCES,
        "retries": Int(lo=0, hi=MAX_RETRIES),
    },
    optional=("func", "args", "deps", "priority", "workers", "allow_other_workers",
              "resources", "retries"),
)

#: The tasks of one ``map`` as columns: one function and the same restrictions
#: for all, and per task a key and its arguments (``keys`` and ``args`` are of
#: one length, which the scheduler checks).  Every one of them is wanted.  A
#: million tasks cost a million strings and blobs here, not a million maps.
CALLS = Record(
    {
        "func": Str(max_length=1024),
        "keys": KEYS,
        "args": ListOf(Blob()),
        "priority": Int(),
        "workers": ADDRESSES,
        "allow_other_workers": Bool(),
        "resources": RESOURCES,
        "retries": Int(lo=0, hi=MAX_RETRIES),
    },
    optional=("priority", "workers", "allow_other_workers", "resources", "retries"),
)

SCHEDULER_RPC: dict[str, Record] = {
    "who_has": Record({"keys": KEYS}),
    "scheduler_info": EMPTY,
    "broadcast": Record({"worker_op": Str(max_length=256, min_length=1),
                         "workers": Nullable(ADDRESSES)},
                        optional=("workers",), extra=Anything()),
    "gather": Record({"keys": KEYS}),
    "retire_workers": Record({"workers": ADDRESSES, "n": Int(lo=0), "close": Bool()},
                             optional=("workers", "n", "close")),
    "adaptive_target": EMPTY,
    "story": Record({"keys": KEYS, "workers": Bool()}, optional=("workers",)),
    "has_what": EMPTY,
    "replicate": Record({"keys": KEYS, "n": COUNT, "timeout": TIMEOUT},
                        optional=("n", "timeout")),
    "rebalance": Record({"keys": Nullable(KEYS), "workers": Nullable(ADDRESSES),
                         "timeout": TIMEOUT}, optional=("keys", "workers", "timeout")),
    "get_logs": Record({"n": COUNT}, optional=("n",)),
    "get_task_stream": Record({"since": Num(lo=0)}, optional=("since",)),
    "restart": Record({"timeout": TIMEOUT}, optional=("timeout",)),
    "run_function": Record({"function": Blob(), "args": Blob(), "kwargs": Blob()},
                           optional=("args", "kwargs")),
    "event_set": Record({"name": NAME}),
    "event_clear": Record({"name": NAME}),
    "event_wait": Record({"name": NAME, "timeout": TIMEOUT}, optional=("timeout",)),
    "event_is_set": Record({"name": NAME}),
    "semaphore_acquire": Record({"name": NAME, "lease": NAME, "max_leases": Int(lo=1),
                                 "timeout": TIMEOUT, "lease_timeout": TIMEOUT},
                                optional=("max_leases", "timeout", "lease_timeout")),
    "semaphore_refresh": Record({"name": NAME, "leases": ListOf(NAME)}),
    "semaphore_release": Record({"name": NAME, "lease": NAME}),
    "semaphore_value": Record({"name": NAME}),
    "multilock_acquire": Record({"names": ListOf(NAME), "lease": NAME, "num_locks": COUNT,
                                 "timeout": TIMEOUT}, optional=("num_locks", "timeout")),
    "multilock_release": Record({"lease": NAME}),
    "multilock_held": Record({"names": ListOf(NAME)}),
    "variable_get": Record({"name": NAME, "client": NAME, "timeout": TIMEOUT},
                           optional=("timeout",)),
    "variable_delete": Record({"name": NAME}),
    "queue_get": Record({"name": NAME, "client": NAME, "timeout": TIMEOUT},
                        optional=("timeout",)),
    "queue_size": Record({"name": NAME}),
    "get_dataset": Record({"name": NAME, "client": NAME}),
    "list_datasets": EMPTY,
    "unpublish_dataset": Record({"name": NAME}),
    "ping": EMPTY,
    "catch_up": Record({"workers": ADDRESSES}),
    "register_scheduler_plugin": Record(PLUGIN, optional=("idempotent",)),
    "register_worker_plugin": Record(PLUGIN, optional=("idempotent",)),
    "register_nanny_plugin": Record({**PLUGIN, "restart": Bool()},
                                    optional=("idempotent", "restart")),
    "unregister_plugin": Record({"name": NAME}),
    "nanny_plugins": EMPTY,
    "terminate": EMPTY,
}

SCHEDULER_OPEN: dict[str, Record] = {
    "register-worker": Record(
        {
            "address": ADDRESS,
            "name": AnyOf(Str(max_length=1024, min_length=1), Int()),
            "nthreads": Int(lo=1, hi=MAX_NTHREADS),
            "memory_limit": SIZE,
            "resources": RESOURCES,
            "http_address": Str(max_length=1024),
            "pid": Int(lo=0),
            "host": Str(max_length=1024),
            "keys": NBYTES,
            "nanny": Bool(),
        },
        optional=("resources", "http_address", "pid", "host", "keys", "nanny"),
    ),
    "register-client": Record({"client": CLIENT}),
}

FROM_WORKER: dict[str, Record] = {
    "task-finished": Record(
        {"key": KEY, "nbytes": SIZE, "start": Num(lo=0), "stop": Num(lo=0), "value": Blob(),
         "reported": ListOf(CLIENT)},
        optional=("start", "stop", "value", "reported"),
    ),
    "task-erred": Record(
        {"key": KEY, "exception": Blob(), "traceback": Str(max_length=1 << 20),
         "exception_text": Str(max_length=1 << 20)},
        optional=("exception", "traceback", "exception_text"),
    ),
    "missing-data": Record({"key": KEY, "errant_worker": ADDRESS}),
    "add-keys": Record({"keys": NBYTES}),
    "steal-response": Record({"key": KEY, "state": Str(max_length=64)}),
    "heartbeat": Record(
        {"metrics": Record(
            {"memory_process": SIZE, "memory_managed": SIZE, "memory_spilled": SIZE,
             "executing": SIZE, "bytes_served": SIZE, "bytes_fetched": SIZE,
             "paused": Bool(), "memory_state": Str(max_length=64), "cpu": Num(lo=0)},
            optional=("memory_process", "memory_managed", "memory_spilled", "executing",
                      "bytes_served", "bytes_fetched", "paused", "memory_state", "cpu"),
            extra=SCALAR,
        )},
        optional=("metrics",),
    ),
    "long-running": Record({"key": KEY}),
    "task-output": Record({"kind": Str(max_length=64), "text": Str(max_length=1 << 20),
                           "category": Str(max_length=1024)}, optional=("category",)),
    "caught-up": Record({"token": Int(lo=0)}),  # the answer to a catch-up
    "goodbye": EMPTY,
}

FROM_CLIENT: dict[str, Record] = {
    "update-graph": Record({"tasks": ListOf(TASK), "functions": MapOf(Str(max_length=1024), Blob()),
                            "wanted": KEYS, "calls": CALLS}, optional=("functions", "calls")),
    "client-releases-keys": Record({"keys": KEYS}),
    "client-wants-keys": Record({"keys": KEYS}),
    "unfollowed": Record({"worker": ADDRESS, "keys": KEYS}),
    "cancel-keys": Record({"keys": KEYS}),
    "update-data": Record({"who_has": WHO_HAS, "nbytes": NBYTES}),
    "fire-and-forget": Record({"keys": KEYS}),
    "publish-dataset": Record({**STORED, "override": Bool()}, optional=("override",)),
    "variable-set": Record(STORED),
    "queue-put": Record({**STORED, "maxsize": Int(lo=0), "timeout": TIMEOUT},
                        optional=("maxsize", "timeout")),
    "release-hold": Record({"hold": AnyOf(Int(), Str(max_length=1024))}),
    "close-client": EMPTY,
}

WORKER_RPC: dict[str, Record] = {
    "get_data": Record({"keys": KEYS}),
    "update_data": Record({"data": MapOf(KEY, Blob())}),
    "run": Record({"function": Blob(), "args": Blob(), "kwargs": Blob()},
                  optional=("args", "kwargs")),
    "ping": EMPTY,
    "info": EMPTY,
    "get_logs": Record({"n": COUNT}, optional=("n",)),
    "story": Record({"keys": KEYS}),
    "actor_execute": Record({"key": KEY, "method": Str(max_length=1024, min_length=1),
                             "args": Blob(), "kwargs": Blob()}, optional=("args", "kwargs")),
    "actor_attribute": Record({"key": KEY, "attribute": Str(max_length=1024, min_length=1)}),
    "remove_replicas": Record({"keys": KEYS}),
    "profile": Record({"start": Nullable(Num()), "stop": Nullable(Num()),
                       "key": Nullable(Str(max_length=1024))},
                      optional=("start", "stop", "key")),
    "plugin_add": Record({"plugin": Blob(), "name": NAME}),
    "plugin_remove": Record({"name": NAME}),
    # a client's stream for the results it waits for (see worker/_reports.py)
    "client-reports": Record({"client": CLIENT}),
}

FROM_SCHEDULER: dict[str, Record] = {
    "compute-task": Record(
        {"key": KEY, "func": Str(max_length=1024), "args": Blob(), "priority": ListOf(Int()),
         "function": Blob(), "who_has": WHO_HAS, "nbytes": NBYTES, "resources": RESOURCES,
         "report": ListOf(CLIENT)},
        optional=("func", "args", "function", "who_has", "nbytes", "resources", "report"),
    ),
    "free-keys": Record({"keys": KEYS}),
    "acquire-replicas": Record({"who_has": WHO_HAS, "nbytes": NBYTES}),
    "steal-request": Record({"key": KEY}),
    # answer caught-up once what was sent before is sent (see scheduler/_catch_up.py)
    "catch-up": Record({"token": Int(lo=0)}),
    "close": Record({"reason": Str()}, optional=("reason",)),
    "restart": EMPTY,
    "error": Record({"message": Str(max_length=1 << 20)}, extra=Anything()),
}

TO_CLIENT: dict[str, Record] = {
    # the worker that sends it holds the key
    "key-in-memory": Record({"key": KEY, "nbytes": SIZE, "value": Blob()}),
    "error": Record({"message": Str(max_length=1 << 20)}),
}


def check_message(table: Mapping[str, Record], msg: Any) -> tuple[str, dict[str, Any]]:
    """``(op, fields)`` of a message that fits ``table``; else InvalidMessage.

    ``fields`` is the message without its ``op`` (and without ``reply``, the
    request flag every RPC accepts).
    """
    if type(msg) is not dict:
        raise InvalidMessage("", f"a message must be a map, got {type(msg).__name__}")
    op = msg.get("op")
    if type(op) is not str:
        raise InvalidMessage("op", f"expected an operation name, got {op!r}"[:120])
    spec = table.get(op)
    if spec is None:
        raise InvalidMessage("op", f"unknown operation {op[:80]!r}")
    fields = dict(msg)
    del fields["op"]
    fields.pop("reply", None)
    if not spec.ok(fields):  # only a refused message pays for saying what is wrong
        spec.check(fields, "")
        raise InvalidMessage("", f"{op!r} does not fit its shape")
    return op, fields
