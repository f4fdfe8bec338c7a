"""What the scheduler knows about one task and one worker.

Plain slotted classes: millions of them may exist, and the hot paths touch
their attributes directly.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from .._relations import EMPTY

_HEX_TAIL = re.compile(r"[-_]?[0-9a-f]{8,}$")
#: Prefixes found so far, by the key's first part (it is called for every task).
_PREFIXES: dict[str, str] = {}
MAX_CACHED_PREFIXES = 10_000


def key_prefix(key: str) -> str:
    """``"inc-9f86d08..."`` -> ``"inc"``: groups tasks of one function."""
    head = key.partition("-")[0]
    prefix = _PREFIXES.get(head)
    if prefix is None:
        stripped = _HEX_TAIL.sub("", head)
        if not stripped:
            return key  # all of it is a hash: the key is its own group
        if len(_PREFIXES) >= MAX_CACHED_PREFIXES:
            _PREFIXES.clear()
        # one shared string: a million tasks of one function hold one prefix
        prefix = _PREFIXES[head] = sys.intern(stripped)
    return prefix


class TaskState:
    __slots__ = (
        "__weakref__",
        "dependencies",
        "dependents",
        "erred_on_behalf_of",
        "ever_finished",
        "exception",
        "exception_text",
        "func",
        "key",
        "loose_restrictions",
        "nbytes",
        "prefix",
        "priority",
        "processing_on",
        "resource_restrictions",
        "retries",
        "run_args",
        "state",
        "suspicious",
        "traceback",
        "waiters",
        "waiting_on",
        "who_has",
        "who_wants",
        "worker_restrictions",
    )

    def __init__(
        self, key: str, prefix: str, func: str | None, run_args: Any, priority: tuple
    ) -> None:
        self.key = key
        self.prefix = prefix
        self.func = func
        self.run_args = run_args
        self.priority = priority
        self.state = "released"
        # Most tasks never fill these: they share one empty frozenset until
        # the first element arrives (see ``grow``), which halves a task's size.
        self.dependencies: set[TaskState] = EMPTY
        self.dependents: set[TaskState] = EMPTY
        self.waiting_on: set[TaskState] = EMPTY
        self.waiters: set[TaskState] = EMPTY
        self.who_has: tuple[WorkerState, ...] = ()  # see with_item
        self.who_wants: tuple[str, ...] = ()
        self.nbytes = 0
        self.processing_on: WorkerState | None = None
        self.retries = 0
        self.suspicious = 0
        self.worker_restrictions: set[str] | None = None
        self.loose_restrictions = False
        self.resource_restrictions: dict[str, float] | None = None
        self.exception: Any = None
        self.traceback: str | None = None
        self.exception_text: str | None = None
        self.erred_on_behalf_of: str | None = None
        self.ever_finished = False

    def __repr__(self) -> str:
        return f"<TaskState {self.key!r} {self.state}>"

    def validate(self) -> None:
        key, state = self.key, self.state
        assert bool(self.who_has) == (state == "memory"), f"{key}: who_has vs {state}"
        assert (self.processing_on is not None) == (state == "processing"), f"{key}: processing_on"
        if state == "waiting":
            missing = {d for d in self.dependencies if d.state != "memory"}
            assert self.waiting_on == missing and missing, f"{key}: waiting_on is wrong"
        else:
            assert not self.waiting_on, f"{key}: waiting_on set while {state}"
        if state in ("processing", "queued", "no-worker"):
            assert all(d.state == "memory" for d in self.dependencies), f"{key}: inputs missing"
        if state == "erred":
            assert self.exception_text is not None, f"{key}: erred without an exception"
        assert self.waiters <= self.dependents, f"{key}: waiters not among dependents"
        for w in self.waiters:
            assert w.state not in ("memory", "erred", "forgotten"), f"{key}: stale waiter {w}"


#: Statuses of a worker that is not leaving: ``running``, or ``paused`` for memory
#: (it keeps its data and finishes what it started, but is given no new work).
ACTIVE = ("running", "paused")


class WorkerState:
    __slots__ = (
        "__weakref__",
        "address",
        "functions_sent",
        "has_what",
        "http_address",
        "last_seen",
        "long_running",
        "memory_limit",
        "metrics",
        "name",
        "nbytes",
        "nthreads",
        "occupancy",
        "processing",
        "resources",
        "status",
    )

    def __init__(
        self, address: str, name: str, nthreads: int, memory_limit: int,
        resources: dict[str, float] | None = None,
    ) -> None:
        self.address = address
        self.name = name
        self.nthreads = nthreads
        self.memory_limit = memory_limit
        self.resources = dict(resources or {})
        self.processing: dict[TaskState, float] = {}  # task -> estimated seconds
        self.long_running: set[TaskState] = set()  # of those, seceded: no thread slot held
        self.has_what: set[TaskState] = set()
        self.nbytes = 0
        self.occupancy = 0.0
        self.status = "running"
        self.last_seen = 0.0
        self.http_address: str | None = None
        self.functions_sent: set[str] = set()
        self.metrics: dict[str, Any] = {}

    @property
    def busy(self) -> int:
        """Tasks processing here that hold a thread slot."""
        return len(self.processing) - len(self.long_running)

    def __repr__(self) -> str:
        return f"<WorkerState {self.address} {len(self.processing)} processing>"

    def validate(self) -> None:
        for ts in self.processing:
            assert ts.processing_on is self and ts.state == "processing"
        assert self.nbytes == sum(ts.nbytes for ts in self.has_what), f"{self.address}: nbytes"
        assert self.long_running <= self.processing.keys(), f"{self.address}: long-running"

    def info(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "name": self.name,
            "nthreads": self.nthreads,
            "memory_limit": self.memory_limit,
            "memory": self.nbytes,
            "executing": len(self.processing),
            "in_memory": len(self.has_what),
            "resources": self.resources,
            "status": self.status,
            "last_seen": self.last_seen,
            "metrics": self.metrics,
        }
