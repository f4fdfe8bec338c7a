"""The worker's task logic as a pure, synchronous state machine.

The worker server feeds it events (a task assigned by the scheduler, an
execution that finished, a fetch from a peer that came back) and carries out
the instructions it returns (run this task, fetch these keys from that peer,
send this message to the scheduler).  Values themselves live in the data
store; the state machine only tracks which keys are held and how big they
are.

Task states on a worker::

    compute tasks:  waiting ─▶ ready ─▶ executing ─▶ memory / error
    inputs:         fetch ─▶ flight ─▶ memory

Every change of a task's state goes through :meth:`WorkerState._transition`,
checked against a table keyed by ``(start, finish)`` that points at the
function performing the move, and recorded in a bounded story log with the
stimulus id of the event that caused it.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._exceptions import InvalidTransition
from .._relations import EMPTY, grow
from .._story import DEFAULT_STORY_SIZE, Entry, Story

#: Every legal move, ``(start, finish)``.
TRANSITIONS: frozenset[tuple[str, str]] = frozenset({
    ("released", "waiting"), ("released", "ready"), ("waiting", "ready"),
    ("ready", "executing"), ("cancelled", "executing"),
    # a worker stuck paused (see FailReady) fails what it cannot start
    ("ready", "error"),
    ("executing", "memory"), ("executing", "error"), ("executing", "cancelled"),
    ("released", "fetch"), ("flight", "fetch"), ("fetch", "flight"),
    ("flight", "memory"),
    # an input being fetched that the scheduler now wants computed here
    ("fetch", "waiting"), ("fetch", "ready"), ("flight", "waiting"), ("flight", "ready"),
    # data placed here directly (scattered)
    ("released", "memory"), ("fetch", "memory"), ("flight", "memory"),
    ("waiting", "memory"), ("ready", "memory"),
    ("waiting", "released"), ("ready", "released"), ("cancelled", "released"),
    ("fetch", "released"), ("flight", "released"), ("memory", "released"),
    ("error", "released"),
})

LEGAL_TRANSITIONS: dict[str, frozenset[str]] = {
    start: frozenset(f for s, f in TRANSITIONS if s == start)
    for start in sorted({s for s, _ in TRANSITIONS})
}

_ids = itertools.count()


def _stimulus() -> str:
    """The id of an event built without one (in tests)."""
    return f"event-{next(_ids)}"

#: When tasks take less than this on average, more per thread are handed to
#: the executor ahead, so a thread goes from one tiny task to the next without
#: waiting for the event loop in between: as many as cover PREFETCH_SECONDS
#: of work, at most PREFETCH_PER_THREAD.  Tiny tasks then cost one hand-over
#: between the loop and a thread per batch, not per task.
PREFETCH_BELOW_SECONDS = 0.005
PREFETCH_SECONDS = 0.002
PREFETCH_PER_THREAD = 32

#: Most fetches in flight at once, and most bytes asked of one peer at once.
MAX_CONCURRENT_FETCHES = 8
TARGET_FETCH_BYTES = 64 * 1024 * 1024
#: A peer is asked again before it has answered only while every answer
#: awaited from it is this large, and at most MAX_FETCHES_PER_PEER times:
#: the peer then copies the next block while this worker stores the last
#: one, instead of each side waiting for the other.  Small fetches are
#: not pipelined, so that what waits meanwhile is asked in one batch.
PIPELINE_FETCH_BYTES = 4 * 1024 * 1024
MAX_FETCHES_PER_PEER = 2


# ------------------------------------------------------------------ events


@dataclass(slots=True)
class ComputeTask:
    key: str
    func: str | None
    args: Any
    priority: tuple
    who_has: dict[str, list[str]] = field(default_factory=dict)
    nbytes: dict[str, int] = field(default_factory=dict)
    resources: dict[str, float] | None = None
    #: the clients that wait for it: a small result may go inline (and to them)
    report: tuple[str, ...] = ()
    stimulus_id: str = field(default_factory=_stimulus)


@dataclass(slots=True)
class FreeKeys:
    keys: list[str]
    stimulus_id: str = field(default_factory=_stimulus)


@dataclass(slots=True)
class ExecuteSuccess:
    key: str
    nbytes: int
    start: float
    stop: float
    inline: Any = None  # the result, serialized, when small and reported
    #: the clients the server sent the result to itself (see _reports.py)
    reported: tuple[str, ...] = ()
    stimulus_id: str = field(default_factory=_stimulus)


@dataclass(slots=True)
class ExecuteFailure:
    key: str
    exception: Any
    traceback: str
    exception_text: str
    stimulus_id: str = field(default_factory=_stimulus)


@dataclass(slots=True)
class GatherDone:
    worker: str
    received: dict[str, int]  # key -> nbytes now held
    missing: list[str]  # keys the peer did not have
    peer_gone: bool = False
    stimulus_id: str = field(default_factory=_stimulus)


@dataclass(slots=True)
class AcquireReplicas:
    """Fetch copies of these keys (used when other workers retire)."""

    who_has: dict[str, list[str]]
    nbytes: dict[str, int]
    stimulus_id: str = field(default_factory=_stimulus)


@dataclass(slots=True)
class StealRequest:
    """The scheduler wants to move ``key`` elsewhere if it has not started."""

    key: str
    stimulus_id: str = field(default_factory=_stimulus)


@dataclass(slots=True)
class AddData:
    """Values placed here directly (scattered): key -> nbytes."""

    nbytes: dict[str, int]
    stimulus_id: str = field(default_factory=_stimulus)


@dataclass(slots=True)
class SchedulerLost:
    """The connection to the scheduler dropped: keep results, drop the rest."""

    stimulus_id: str = field(default_factory=_stimulus)


@dataclass(slots=True)
class SetPaused:
    paused: bool
    stimulus_id: str = field(default_factory=_stimulus)


@dataclass(slots=True)
class FailReady:
    """The worker cannot start its ready tasks (stuck paused): fail them with this."""

    exception: Any
    exception_text: str
    stimulus_id: str = field(default_factory=_stimulus)


@dataclass(slots=True)
class Secede:
    """This task left its thread slot: it waits on tasks it submitted."""

    key: str
    stimulus_id: str = field(default_factory=_stimulus)


@dataclass(slots=True)
class Rejoin:
    """This seceded task wants a thread slot back."""

    key: str
    stimulus_id: str = field(default_factory=_stimulus)


# ------------------------------------------------------------ instructions


@dataclass(slots=True)
class Execute:
    key: str


@dataclass(slots=True)
class Gather:
    worker: str
    keys: list[str]
    total_nbytes: int


@dataclass(slots=True)
class Send:
    msg: dict[str, Any]


@dataclass(slots=True)
class Forget:
    """Drop a value from the data store."""

    key: str


@dataclass(slots=True)
class Rejoined:
    """This seceded task holds a thread slot again: let it go on."""

    key: str


class WTask:
    __slots__ = (
        "args",
        "dependencies",
        "dependents",
        "func",
        "key",
        "nbytes",
        "priority",
        "replica",
        "report",
        "resources",
        "state",
        "who_has",
    )

    def __init__(self, key: str) -> None:
        self.key = key
        self.state = "released"
        self.func: str | None = None
        self.args: Any = None
        self.priority: tuple = ()
        # empty relations share one frozenset until something is added (see
        # ``grow``): most tasks here have no inputs and are fetched by no one
        self.dependencies: set[WTask] = EMPTY
        self.dependents: set[WTask] = EMPTY
        self.report: tuple[str, ...] = ()
        self.who_has: set[str] = EMPTY
        self.nbytes = 0
        self.resources: dict[str, float] | None = None
        self.replica = False  # held for others (a fetched input), not computed here

    def __repr__(self) -> str:
        return f"<WTask {self.key!r} {self.state}>"


class WorkerState:
    def __init__(self, address: str, nthreads: int, resources: dict[str, float] | None = None,
                 story_size: int = DEFAULT_STORY_SIZE,
                 clock: Callable[[], float] = time.time) -> None:
        self.address = address
        self.nthreads = nthreads
        self.total_resources = dict(resources or {})
        self.available_resources = dict(resources or {})
        self.tasks: dict[str, WTask] = {}
        self.ready: list[tuple[tuple, int, WTask]] = []
        self.executing: set[WTask] = set()
        #: executing, but out of the thread slots (see ``Secede``), and those
        #: of them waiting for a slot back
        self.seceded: set[WTask] = set()
        self.rejoining: list[WTask] = []
        #: peer -> the fetches from it in flight: the tasks asked and their bytes
        self.busy_workers: dict[str, list[tuple[frozenset[WTask], int]]] = {}
        self.fetching: set[WTask] = set()  # tasks in state "fetch"
        self.fetch_by_peer: dict[str, set[WTask]] = {}  # the same, by who has them
        self.paused = False
        self.avg_duration: float | None = None
        self._counter = itertools.count()
        self.out: list[Any] = []
        self.counts = {"executed": 0, "failed": 0, "fetched": 0}
        self.clock = clock
        self.story_log = Story(story_size)
        self._record = self.story_log.entries.extend
        self._now = clock()
        self._stim = ""
        moves: dict[str, Callable[[WTask, str, Any], None]] = {
            "waiting": self._to_waiting, "ready": self._to_ready, "executing": self._to_executing,
            "memory": self._to_memory, "error": self._to_error,
            "cancelled": _nothing, "fetch": self._to_fetch_state,
            "flight": self._to_flight, "released": self._to_released,
        }
        self._table = {move: moves[move[1]] for move in TRANSITIONS}

    # ------------------------------------------------------------ API

    def handle(self, *events: Any) -> list[Any]:
        self._now = self.clock()
        for ev in events:
            self._stim = ev.stimulus_id
            getattr(self, "_" + type(ev).__name__)(ev)
        self._ensure_computing()
        self._ensure_communicating()
        out, self.out = self.out, []
        return out

    def held(self) -> dict[str, int]:
        """The results held here (key -> nbytes), as announced to a new scheduler."""
        return {key: ts.nbytes for key, ts in self.tasks.items() if ts.state == "memory"}

    def story(self, *keys: str) -> list[Entry]:
        return self.story_log.of(set(keys))

    def _transition(self, ts: WTask, finish: str, arg: Any = None) -> None:
        """The one place a task's state changes: checked, recorded, then carried out."""
        start = ts.state
        move = self._table.get((start, finish))
        if move is None:
            raise InvalidTransition(
                f"{ts.key!r}: {start} -> {finish} is not allowed (stimulus {self._stim})")
        ts.state = finish
        self._record((ts.key, start, finish, self._stim, self._now))
        move(ts, start, arg)

    # ------------------------------------------------------------ events

    def _AddData(self, ev: AddData) -> None:
        for key, nbytes in ev.nbytes.items():
            ts = self.tasks.get(key)
            if ts is None:
                ts = self.tasks[key] = WTask(key)
            if ts.state in ("executing", "cancelled"):
                continue  # the value is stored; the run's outcome decides its state
            if ts.state == "memory":
                ts.nbytes = nbytes
            else:
                self._transition(ts, "memory", nbytes)

    def _SchedulerLost(self, ev: SchedulerLost) -> None:
        for ts in list(self.tasks.values()):
            if ts.state in ("memory", "executing", "cancelled"):
                self._done_with_inputs(ts)
            if ts.state == "executing":
                self._transition(ts, "cancelled")
        for ts in list(self.tasks.values()):
            if ts.state not in ("memory", "cancelled", "released"):
                self._transition(ts, "released")

    def _ComputeTask(self, ev: ComputeTask) -> None:
        ts = self.tasks.get(ev.key)
        if ts is None:
            ts = self.tasks[ev.key] = WTask(ev.key)
        elif ts.state in ("memory", "executing", "waiting", "ready"):
            if ts.state == "memory":
                self.out.append(Send({"op": "task-finished", "key": ts.key,
                                      "nbytes": ts.nbytes, "start": 0.0, "stop": 0.0}))
            return
        ts.func, ts.args, ts.priority = ev.func, ev.args, tuple(ev.priority)
        if ts.state == "cancelled":  # resubmitted while the old run is still going
            self._transition(ts, "executing")
            return
        ts.report = ev.report
        ts.resources = ev.resources
        ts.replica = False
        for dep_key, workers in ev.who_has.items():
            dep = self.tasks.get(dep_key)
            if dep is None:
                dep = self.tasks[dep_key] = WTask(dep_key)
                dep.replica = True
            if dep.state == "released":
                dep.priority = ts.priority
                self._transition(dep, "fetch", workers)
            elif dep.state == "fetch":
                self._add_peers(dep, workers)
            else:
                dep.who_has = grow(dep.who_has)
                dep.who_has.update(w for w in workers if w != self.address)
            dep.nbytes = ev.nbytes.get(dep_key, dep.nbytes)
            ts.dependencies = grow(ts.dependencies)
            ts.dependencies.add(dep)
            dep.dependents = grow(dep.dependents)
            dep.dependents.add(ts)
        self._maybe_ready(ts)

    def _add_peers(self, ts: WTask, peers: Any) -> None:
        """More peers to fetch a task in state fetch from."""
        new = [w for w in peers if w != self.address and w not in ts.who_has]
        ts.who_has = grow(ts.who_has)
        ts.who_has.update(new)
        for peer in new:
            self.fetch_by_peer.setdefault(peer, set()).add(ts)

    def _leave_fetch(self, ts: WTask) -> None:
        self.fetching.discard(ts)
        for peer in ts.who_has:
            tasks = self.fetch_by_peer.get(peer)
            if tasks is not None:
                tasks.discard(ts)

    def _maybe_ready(self, ts: WTask) -> None:
        if all(dep.state == "memory" for dep in ts.dependencies):
            self._transition(ts, "ready")
        elif ts.state != "waiting":
            self._transition(ts, "waiting")

    def _FreeKeys(self, ev: FreeKeys) -> None:
        for key in ev.keys:
            ts = self.tasks.get(key)
            if ts is None:
                continue
            if ts.state == "executing":
                self._transition(ts, "cancelled")
                continue
            if ts.state == "cancelled":
                continue
            if ts.dependents and any(
                d.state in ("waiting", "ready", "executing") for d in ts.dependents
            ):
                ts.replica = True  # still an input of work here; keep it
                continue
            self._transition(ts, "released")

    @property
    def prefetch(self) -> int:
        """Tasks handed to the executor beyond one per thread (see above)."""
        avg = self.avg_duration
        if avg is None or avg >= PREFETCH_BELOW_SECONDS:
            return 0
        ahead = max(2, min(PREFETCH_PER_THREAD, int(PREFETCH_SECONDS / max(avg, 1e-7))))
        return self.nthreads * ahead

    def _ExecuteSuccess(self, ev: ExecuteSuccess) -> None:
        if ev.stop >= ev.start > 0:
            seconds = ev.stop - ev.start
            avg = self.avg_duration
            self.avg_duration = seconds if avg is None else 0.9 * avg + 0.1 * seconds
        ts = self.tasks.get(ev.key)
        if ts is None or ts.state not in ("executing", "cancelled"):
            return
        self.counts["executed"] += 1
        if ts.state == "cancelled":
            self.out.append(Forget(ts.key))
            self._transition(ts, "released")
        else:
            self._transition(ts, "memory", ev)

    def _ExecuteFailure(self, ev: ExecuteFailure) -> None:
        ts = self.tasks.get(ev.key)
        if ts is None or ts.state not in ("executing", "cancelled"):
            return
        self.counts["failed"] += 1
        if ts.state == "executing":
            self._transition(ts, "error", ev)
        self._transition(ts, "released")

    def _GatherDone(self, ev: GatherDone) -> None:
        keys = self._answered(ev.worker, ev.received.keys() | set(ev.missing))
        if ev.peer_gone:  # whatever was asked of it, fetch nothing more from it
            self._forget_peer(ev.worker)
        received = []
        for ts in keys:
            if ts.state != "flight" or self.tasks.get(ts.key) is not ts:
                continue  # released meanwhile; the server did not store it
            if ts.key in ev.received:
                self._transition(ts, "memory", ev.received[ts.key])
                received.append(ts.key)
                continue
            if ev.worker in ts.who_has:
                ts.who_has.discard(ev.worker)
            self._transition(ts, "fetch")
            if not ts.who_has:
                self.out.append(
                    Send({"op": "missing-data", "key": ts.key, "errant_worker": ev.worker})
                )
        if received:
            self.out.append(
                Send({"op": "add-keys", "keys": {k: self.tasks[k].nbytes for k in received}})
            )

    @property
    def in_flight_workers(self) -> dict[str, frozenset[WTask]]:
        """peer -> the tasks being fetched from it, over all its fetches in flight."""
        return {peer: frozenset().union(*(tasks for tasks, _ in asks))
                for peer, asks in self.busy_workers.items()}

    def _answered(self, peer: str, answered: set[str]) -> frozenset[WTask]:
        """The tasks of the fetch from ``peer`` that asked for the keys
        ``answered``, no longer in flight (and if none asked exactly those,
        of every fetch that asked for one of them)."""
        asks = self.busy_workers.pop(peer, [])
        done = [a for a in asks if {ts.key for ts in a[0]} == answered][:1]
        done = done or [a for a in asks if any(ts.key in answered for ts in a[0])]
        rest = [a for a in asks if a not in done]
        if rest:
            self.busy_workers[peer] = rest
        return frozenset().union(*(tasks for tasks, _ in done))

    def _forget_peer(self, worker: str) -> None:
        self.fetch_by_peer.pop(worker, None)
        for ts in self.tasks.values():
            if worker in ts.who_has:
                ts.who_has.discard(worker)

    def _AcquireReplicas(self, ev: AcquireReplicas) -> None:
        for key, workers in ev.who_has.items():
            ts = self.tasks.get(key)
            if ts is None:
                ts = self.tasks[key] = WTask(key)
                ts.replica = True
                ts.priority = (-1,)
            if ts.state == "released":
                self._transition(ts, "fetch", workers)
            elif ts.state == "fetch":
                self._add_peers(ts, workers)
            else:
                continue
            ts.nbytes = ev.nbytes.get(key, ts.nbytes)

    def _StealRequest(self, ev: StealRequest) -> None:
        ts = self.tasks.get(ev.key)
        state = ts.state if ts is not None else "released"
        if ts is not None and not ts.replica and ts.state in ("ready", "waiting"):
            self._transition(ts, "released")
            state = "released"
        self.out.append(Send({"op": "steal-response", "key": ev.key, "state": state}))

    def _SetPaused(self, ev: SetPaused) -> None:
        self.paused = ev.paused

    def _FailReady(self, ev: FailReady) -> None:
        failure = ExecuteFailure("", ev.exception, "", ev.exception_text, ev.stimulus_id)
        for _, _, ts in sorted(self.ready):
            if ts.state == "ready" and self.tasks.get(ts.key) is ts:
                self.counts["failed"] += 1
                self._transition(ts, "error", failure)
                self._transition(ts, "released")
        self.ready.clear()

    def _Secede(self, ev: Secede) -> None:
        ts = self.tasks.get(ev.key)
        if ts is None or ts not in self.executing:
            return
        self.executing.discard(ts)
        self.seceded.add(ts)
        self.out.append(Send({"op": "long-running", "key": ts.key}))

    def _Rejoin(self, ev: Rejoin) -> None:
        ts = self.tasks.get(ev.key)
        if ts is None or ts not in self.seceded:
            self.out.append(Rejoined(ev.key))  # nothing to wait for
        elif ts not in self.rejoining:
            self.rejoining.append(ts)

    def _grant_rejoins(self) -> None:
        while self.rejoining and len(self.executing) < self.nthreads:
            ts = self.rejoining.pop(0)
            self.seceded.discard(ts)
            self.executing.add(ts)
            self.out.append(Rejoined(ts.key))

    # ------------------------------------------------------------ the moves of the table

    def _to_waiting(self, ts: WTask, start: str, arg: Any) -> None:
        if start == "fetch":
            self._leave_fetch(ts)

    def _to_ready(self, ts: WTask, start: str, arg: Any) -> None:
        if start == "fetch":
            self._leave_fetch(ts)
        heapq.heappush(self.ready, (ts.priority, next(self._counter), ts))

    def _to_executing(self, ts: WTask, start: str, arg: Any) -> None:
        if start == "ready":  # (from cancelled: the old run is still going)
            self.executing.add(ts)
            self.out.append(Execute(ts.key))

    def _to_memory(self, ts: WTask, start: str, arg: Any) -> None:
        if start == "executing":  # arg: the ExecuteSuccess
            self._finish_execution(ts)
            ts.nbytes = arg.nbytes
            msg = {"op": "task-finished", "key": ts.key, "nbytes": arg.nbytes,
                   "start": arg.start, "stop": arg.stop}
            if arg.inline is not None:
                msg["value"] = arg.inline
            if arg.reported:
                msg["reported"] = list(arg.reported)
            self.out.append(Send(msg))
            self._done_with_inputs(ts)
            return
        ts.nbytes = arg  # fetched from a peer, or placed here directly
        if start == "flight":
            self.counts["fetched"] += 1
        elif start == "fetch":
            self._leave_fetch(ts)
        self._done_with_inputs(ts)
        for dts in ts.dependents:
            if dts.state == "waiting":
                self._maybe_ready(dts)

    def _to_error(self, ts: WTask, start: str, ev: ExecuteFailure) -> None:
        if start == "executing":
            self._finish_execution(ts)
        self.out.append(Send({"op": "task-erred", "key": ts.key, "exception": ev.exception,
                              "traceback": ev.traceback,
                              "exception_text": ev.exception_text}))
        self._done_with_inputs(ts)

    def _to_fetch_state(self, ts: WTask, start: str, peers: Any) -> None:
        """Into state fetch, from any of ``peers`` (added to what it knew)."""
        ts.who_has = grow(ts.who_has)
        ts.who_has.update(w for w in peers or () if w != self.address)
        self.fetching.add(ts)
        for peer in ts.who_has:
            self.fetch_by_peer.setdefault(peer, set()).add(ts)

    def _to_flight(self, ts: WTask, start: str, arg: Any) -> None:
        self._leave_fetch(ts)

    def _to_released(self, ts: WTask, start: str, arg: Any) -> None:
        """Dropped here; an answer to a fetch in flight will be dropped too."""
        if start == "memory":
            self.out.append(Forget(ts.key))
        elif start == "fetch":
            self._leave_fetch(ts)
        elif start == "cancelled":
            self._finish_execution(ts)
        self.tasks.pop(ts.key, None)
        for dep in ts.dependencies:
            if ts in dep.dependents:
                dep.dependents.discard(ts)
            if not dep.dependents and dep.replica and dep.state in ("fetch", "flight"):
                self._transition(dep, "released")
        ts.dependencies = EMPTY
        for dts in list(ts.dependents):
            if dts.state in ("waiting", "ready"):
                # an input vanished under a waiting task: the scheduler will
                # reassign it; drop it here
                if ts in dts.dependencies:
                    dts.dependencies.discard(ts)
                self._transition(dts, "released")

    def _finish_execution(self, ts: WTask) -> None:
        self.executing.discard(ts)
        self.seceded.discard(ts)
        if ts in self.rejoining:
            self.rejoining.remove(ts)
        if ts.resources:
            for name, amount in ts.resources.items():
                self.available_resources[name] = self.available_resources.get(name, 0) + amount

    def _done_with_inputs(self, ts: WTask) -> None:
        for dep in ts.dependencies:
            if ts in dep.dependents:
                dep.dependents.discard(ts)
        ts.dependencies = EMPTY

    # ------------------------------------------------------------ driving

    def _ensure_computing(self) -> None:
        self._grant_rejoins()
        ready = self.ready
        limit = self.nthreads + self.prefetch
        while ready and len(self.executing) < limit and not self.paused:
            _, _, ts = ready[0]
            if ts.state != "ready" or self.tasks.get(ts.key) is not ts:
                heapq.heappop(ready)
                continue
            if ts.resources and not self._acquire_resources(ts.resources):
                break
            heapq.heappop(ready)
            self._transition(ts, "executing")

    def _acquire_resources(self, need: dict[str, float]) -> bool:
        avail = self.available_resources
        if any(avail.get(name, 0) < amount for name, amount in need.items()):
            return False
        for name, amount in need.items():
            avail[name] -= amount
        return True

    def _ensure_communicating(self) -> None:
        busy = self.busy_workers
        in_flight = sum(map(len, busy.values()))
        for peer in list(self.fetch_by_peer):
            tasks = self.fetch_by_peer[peer]
            if not tasks:
                del self.fetch_by_peer[peer]
                continue
            asks = busy.get(peer, ())
            if asks and (len(asks) >= MAX_FETCHES_PER_PEER
                         or any(size < PIPELINE_FETCH_BYTES for _, size in asks)):
                continue
            if in_flight >= MAX_CONCURRENT_FETCHES:
                return
            chosen: list[WTask] = []
            size = 0
            for ts in sorted(tasks, key=lambda t: t.priority):
                if chosen and size + ts.nbytes > TARGET_FETCH_BYTES:
                    break
                chosen.append(ts)
                size += ts.nbytes
            for ts in chosen:
                self._transition(ts, "flight")
            busy.setdefault(peer, []).append((frozenset(chosen), size))
            in_flight += 1
            self.out.append(Gather(peer, [ts.key for ts in chosen], size))

    def validate(self) -> None:
        flying = frozenset().union(*self.in_flight_workers.values())
        for key, ts in self.tasks.items():
            assert ts.key == key
            assert ts.state in LEGAL_TRANSITIONS, ts
            for dep in ts.dependencies:
                assert ts in dep.dependents, f"{key}: not among {dep.key}'s dependents"
            if ts.state == "ready":
                assert all(d.state == "memory" for d in ts.dependencies)
            if ts.state == "flight":
                assert ts in flying
            assert (ts.state == "fetch") == (ts in self.fetching), f"{key}: fetch set"
            if ts.state == "fetch":
                assert all(ts in self.fetch_by_peer.get(w, ()) for w in ts.who_has), key
        for peer, waiting in self.fetch_by_peer.items():
            assert all(t.state == "fetch" and peer in t.who_has for t in waiting), peer
        assert all(self.busy_workers.values())  # a peer answered of all is no longer busy
        assert len(self.executing) <= self.nthreads * (1 + PREFETCH_PER_THREAD)
        for ts in self.executing | self.seceded:
            assert ts.state in ("executing", "cancelled")
        assert not self.executing & self.seceded
        assert all(ts in self.seceded for ts in self.rejoining)


def _nothing(ts: WTask, start: str, arg: Any) -> None:
    """A move with no effect beyond the new state."""
