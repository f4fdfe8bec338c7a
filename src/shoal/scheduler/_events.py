"""Events the scheduler's state machine consumes and instructions it emits.

Every event carries a ``stimulus_id`` so a chain of transitions can be traced
back to what caused it.  Instructions are only messages to send: the state
machine never touches a socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class TaskSpec:
    """One task as a client submits it."""

    key: str
    func: str | None  # token of the function in the scheduler's function table
    args: Any  # Serialized (args, kwargs) with dependency placeholders, or None
    dependencies: list[str] = field(default_factory=list)
    priority: int = 0
    workers: list[str] | None = None
    allow_other_workers: bool = False
    resources: dict[str, float] | None = None
    retries: int = 0


@dataclass(slots=True)
class Event:
    stimulus_id: str


@dataclass(slots=True)
class AddWorker(Event):
    address: str
    name: str
    nthreads: int
    memory_limit: int
    resources: dict[str, float] = field(default_factory=dict)
    http_address: str | None = None
    #: what it already holds (key -> nbytes): a worker rejoining a restarted scheduler
    keys: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class RemoveWorker(Event):
    address: str
    reason: str = "connection lost"
    graceful: bool = False  # retired on purpose: its tasks are not to blame


@dataclass(slots=True)
class Heartbeat(Event):
    worker: str
    metrics: dict[str, Any]


@dataclass(slots=True)
class RetireWorkers(Event):
    """These workers are being retired: no new work goes to them."""

    addresses: list[str]


@dataclass(slots=True)
class AddClient(Event):
    client: str


@dataclass(slots=True)
class RemoveClient(Event):
    client: str


@dataclass(slots=True)
class UpdateGraph(Event):
    client: str
    tasks: list[TaskSpec]
    functions: dict[str, Any]  # token -> Serialized function
    wanted: list[str]  # keys the client holds futures for


@dataclass(slots=True)
class UpdateData(Event):
    """Data a client scattered straight to workers."""

    client: str
    who_has: dict[str, list[str]]
    nbytes: dict[str, int]


@dataclass(slots=True)
class ClientReleasesKeys(Event):
    client: str
    keys: list[str]


@dataclass(slots=True)
class ClientWantsKeys(Event):
    client: str
    keys: list[str]


@dataclass(slots=True)
class ClientUnfollowed(Event):
    """The client's report stream from ``worker`` ended: a result that worker
    pushed (``TaskFinished.reported``) may not have reached it.  ``keys``:
    those the client still waits for."""

    client: str
    worker: str
    keys: list[str]


@dataclass(slots=True)
class CancelKeys(Event):
    client: str
    keys: list[str]


@dataclass(slots=True)
class TaskFinished(Event):
    worker: str
    key: str
    nbytes: int
    start: float = 0.0
    stop: float = 0.0
    inline: Any = None  # a small result, serialized, to pass on to waiting clients
    #: the clients the worker sent the result to itself (see worker/_reports.py)
    reported: tuple[str, ...] = ()


@dataclass(slots=True)
class TaskErred(Event):
    worker: str
    key: str
    exception: Any  # Serialized exception
    traceback: str
    exception_text: str


@dataclass(slots=True)
class MissingData(Event):
    """A worker could not find ``key`` on ``errant_worker``."""

    worker: str
    key: str
    errant_worker: str


@dataclass(slots=True)
class AddKeys(Event):
    """A worker now holds copies of these keys (after a fetch or replication)."""

    worker: str
    keys: dict[str, int]


@dataclass(slots=True)
class StealResponse(Event):
    """A worker's answer to a steal request: ``state`` "released" if it gave up the task."""

    worker: str
    key: str
    state: str


@dataclass(slots=True)
class LongRunning(Event):
    """A task on ``worker`` seceded: it runs on, but no longer holds a thread slot."""

    worker: str
    key: str


@dataclass(slots=True)
class Instruction:
    pass


@dataclass(slots=True)
class ToWorker(Instruction):
    worker: str
    msg: dict[str, Any]


@dataclass(slots=True)
class ToClient(Instruction):
    client: str
    msg: dict[str, Any]
