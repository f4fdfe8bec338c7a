"""The scheduler's task logic as a pure, synchronous state machine.

``SchedulerState.handle(event)`` applies one event and returns the messages
to send; no I/O happens here, which is what makes the logic testable with
random event sequences and fast.

Every change of a task's state goes through :meth:`SchedulerState._transition`:
it looks the move up in a table keyed by ``(start, finish)`` (see
:data:`TRANSITIONS`), refuses a move that is not there, assigns the new state
(nowhere else is ``TaskState.state`` written), records the move in the story
log with the stimulus id of the event that caused it, and calls the function
that does the rest of that move.  Follow-up changes are *recommendations*
processed in a loop rather than recursion, so long chains cannot blow the
stack.  Placement and stealing only return decisions; the messages are
written here.

A task's life::

    released ─▶ waiting ─▶ queued / no-worker ─▶ processing ─▶ memory
        ▲          │                                 │          │
        └──────────┴──────── erred ◀─────────────────┘          │
    forgotten ◀── released ◀────────────────────────────────────┘
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from typing import Any

from .._exceptions import WorkerMemoryError
from .._relations import EMPTY, grow, with_item, without_item
from .._story import DEFAULT_STORY_SIZE, Entry, Story
from ._errors import InvalidTransition, KilledWorkerError, LostDataError
from ._events import (
    AddClient,
    AddKeys,
    AddWorker,
    CancelKeys,
    ClientReleasesKeys,
    ClientUnfollowed,
    ClientWantsKeys,
    Event,
    Heartbeat,
    Instruction,
    LongRunning,
    MissingData,
    RemoveClient,
    RemoveWorker,
    RetireWorkers,
    StealResponse,
    TaskErred,
    TaskFinished,
    TaskSpec,
    ToClient,
    ToWorker,
    UpdateData,
    UpdateGraph,
)
from ._model import ACTIVE, TaskState, WorkerState, key_prefix
from ._placement import Placement
from ._stealing import Stealing
from ._validate import validate_state

Recs = dict[str, str]
#: why a task erred: (serialized exception, traceback, text, the task it erred for)
Failure = tuple[Any, str, str, "TaskState | None"]
Move = Callable[[TaskState, str, Recs, str, Any], None]

#: Every legal move, ``(start, finish)``; :meth:`SchedulerState._table` maps
#: each to the function that performs it.
TRANSITIONS: frozenset[tuple[str, str]] = frozenset({
    ("released", "waiting"),
    ("waiting", "processing"), ("queued", "processing"), ("no-worker", "processing"),
    ("processing", "processing"),  # stolen: moved to another worker
    ("waiting", "queued"), ("no-worker", "queued"),
    ("waiting", "no-worker"),
    ("processing", "memory"),
    # data that arrived from elsewhere (scattered, or announced by a rejoining worker)
    ("released", "memory"), ("waiting", "memory"), ("queued", "memory"),
    ("no-worker", "memory"), ("erred", "memory"),
    ("waiting", "released"), ("queued", "released"), ("no-worker", "released"),
    ("processing", "released"), ("memory", "released"), ("erred", "released"),
    ("released", "erred"), ("waiting", "erred"), ("queued", "erred"),
    ("no-worker", "erred"), ("processing", "erred"),
    ("released", "forgotten"), ("memory", "forgotten"), ("erred", "forgotten"),
})

#: The states a task can be in while the scheduler knows it.
TASK_STATES = ("released", "waiting", "queued", "no-worker", "processing", "memory", "erred")

LEGAL_TRANSITIONS: dict[str, frozenset[str]] = {
    start: frozenset(f for s, f in TRANSITIONS if s == start)
    for start in sorted({s for s, _ in TRANSITIONS})
}

#: Recommendations that events overtook: a task recommended for "waiting"
#: that has meanwhile erred or been scheduled is left where it is.
_STALE: dict[str, frozenset[str]] = {
    "waiting": frozenset({"erred", "memory", "processing", "queued", "no-worker"}),
    "processing": frozenset({"erred", "memory", "processing", "queued"}),
}
_FORGETTABLE = frozenset({"released", "memory", "erred"})
#: The argument of a move to "released" when the worker no longer has the task.
GONE = "gone"
#: The most keys one ``free-keys`` message carries (see ``SchedulerState._free``).
FREE_KEYS_CHUNK = 10_000

#: How many times a task may be running on a worker that dies before it is
#: blamed for the deaths and failed.
DEFAULT_ALLOWED_FAILURES = 3

#: Who wants the keys a rejoining worker announced until a client claims them
#: (the server releases them for this holder after a grace period).
REJOIN_HOLDER = "<rejoined-worker>"

#: The pseudo-client that wants fire-and-forget tasks until they finish.
FIRE_AND_FORGET = "fire-and-forget"
#: Holders in ``who_wants`` that are no client: nothing is reported to them.
_NOT_CLIENTS = (REJOIN_HOLDER, FIRE_AND_FORGET)


class SchedulerState:
    """Tasks, workers and clients, and the rules that move tasks along."""

    def __init__(
        self,
        allowed_failures: int = DEFAULT_ALLOWED_FAILURES,
        clock: Callable[[], float] = time.time,
        story_size: int = DEFAULT_STORY_SIZE,
    ) -> None:
        self.tasks: dict[str, TaskState] = {}
        #: prefix -> state -> how many tasks: kept as tasks move, so that the
        #: dashboard never walks a million tasks
        self.prefix_counts: dict[str, dict[str, int]] = {}
        self.workers: dict[str, WorkerState] = {}
        self.clients: set[str] = set()
        #: client -> the workers whose word that they reported to it directly
        #: (``TaskFinished.reported``) is not taken: its stream from them ended
        self.unfollowed: dict[str, set[str]] = {}
        self.functions: dict[str, Any] = {}
        #: functions each client has sent: kept while the client is connected,
        #: so that it sends each function only once
        self.client_functions: dict[str, set[str]] = {}
        self.function_refs: dict[str, int] = {}
        self.allowed_failures = allowed_failures
        self.clock = clock
        self.placement = Placement(self)
        self.stealing = Stealing(self)
        self.out: list[Instruction] = []
        #: worker -> the latest of its messages in ``out`` (see ``_free``)
        self._told: dict[str, ToWorker] = {}
        self.story_log = Story(story_size)
        self._record = self.story_log.entries.extend
        self._now = clock()
        self._generation = itertools.count()
        self._handlers: dict[type, Callable[[Any], None]] = {
            AddWorker: self._add_worker,
            RemoveWorker: self._remove_worker,
            RetireWorkers: self._retire_workers,
            Heartbeat: self._heartbeat,
            AddClient: self._add_client,
            RemoveClient: self._remove_client,
            UpdateGraph: self._update_graph,
            UpdateData: self._update_data,
            ClientReleasesKeys: self._client_releases_keys,
            ClientWantsKeys: self._client_wants_keys,
            ClientUnfollowed: self._client_unfollowed,
            CancelKeys: self._cancel_keys,
            TaskFinished: self._task_finished,
            TaskErred: self._task_erred,
            MissingData: self._missing_data,
            AddKeys: self._add_keys,
            StealResponse: self._steal_response,
            LongRunning: self._long_running,
        }
        self._table: dict[tuple[str, str], Move] = self._moves()
        # counters read by metrics
        self.counts = {"finished": 0, "erred": 0, "recomputed": 0, "lost": 0}
        self.idle_since: float | None = clock()

    def _moves(self) -> dict[tuple[str, str], Move]:
        by_finish: dict[str, Move] = {
            "waiting": self._released_to_waiting,
            "processing": self._to_processing,
            "queued": self._to_queued,
            "no-worker": self._to_no_worker,
            "memory": self._to_memory,
            "released": self._to_released,
            "erred": self._to_erred,
            "forgotten": self._to_forgotten,
        }
        table = {move: by_finish[move[1]] for move in TRANSITIONS}
        table["processing", "processing"] = self._stolen
        return table

    # ------------------------------------------------------------------ API

    def handle(self, *events: Event) -> list[Instruction]:
        """Apply events in order and return the instructions they produced."""
        self._now = self.clock()
        for event in events:
            self._handlers[type(event)](event)
        for ts, victim in self.stealing.balance():
            self._tell(victim.address, {"op": "steal-request", "key": ts.key})
        out, self.out = self.out, []
        self._told.clear()
        self._update_idle()
        return out

    def story(self, *keys: str) -> list[Entry]:
        """The recorded transitions of ``keys``, oldest first."""
        return self.story_log.of(set(keys))

    # --------------------------------------------------------- workers

    def _add_worker(self, ev: AddWorker) -> None:
        if ev.address in self.workers:
            return
        ws = WorkerState(ev.address, ev.name, ev.nthreads, ev.memory_limit, ev.resources)
        ws.http_address = ev.http_address
        ws.last_seen = self._now
        self.workers[ev.address] = ws
        self.placement.loads.refile(ws)
        recs: Recs = {}
        if ev.keys:
            self._adopt_held(ws, ev.keys, recs, ev.stimulus_id)
        self._give_work(ws, recs, ev.stimulus_id)

    def _adopt_held(self, ws: WorkerState, keys: dict[str, int], recs: Recs, stim: str) -> None:
        """A rejoining worker's data: kept, and held until a client claims it."""
        stale = []
        for key, nbytes in keys.items():
            ts = self.tasks.get(key)
            if ts is None:
                ts = TaskState(key, key_prefix(key), None, None, (0, next(self._generation), 0))
                self._add_task(ts)
                ts.who_wants = (REJOIN_HOLDER,)
            if ts.state == "memory":
                self._add_replica(ts, ws)
            elif ts.state == "erred":
                stale.append(key)
            else:
                self._transition(ts, "memory", recs, stim, ([ws], nbytes))
        if stale:
            self._free(ws.address, stale)

    def _remove_worker(self, ev: RemoveWorker) -> None:
        ws = self.workers.pop(ev.address, None)
        if ws is None:
            return
        self.placement.set_status(ws, "closed")
        for distrusted in self.unfollowed.values():  # it will report nothing more
            distrusted.discard(ev.address)
        recs: Recs = {}
        stim = ev.stimulus_id
        # Only the tasks it was probably running are suspects: it runs them
        # in priority order, one per thread.
        suspects = set(sorted(ws.processing, key=lambda t: t.priority)[: ws.nthreads])
        for ts in list(ws.processing):
            if ts in suspects and not ev.graceful:
                ts.suspicious += 1
            if ts.suspicious > self.allowed_failures:
                error = KilledWorkerError(ts.key, ts.suspicious, ev.reason)
                self._transition(ts, "erred", recs, stim, _failure(error))
            else:
                self._transition(ts, "released", recs, stim, GONE)
        lost = []
        for ts in ws.has_what:
            ts.who_has = without_item(ts.who_has, ws)
            if not ts.who_has:
                lost.append(ts)
        ws.has_what.clear()
        self.counts["lost"] += len(lost)
        for ts in lost:  # at once: no task may be placed meanwhile as if they were there
            if ts.state == "memory":
                self._transition(ts, "released", recs, stim)
        self._transitions(recs, stim)
        for other in self.workers.values():
            self._fill(other, recs, stim)

    def _retire_workers(self, ev: RetireWorkers) -> None:
        for address in ev.addresses:
            ws = self.workers.get(address)
            if ws is not None and ws.status in ACTIVE:
                self.placement.set_status(ws, "closing")

    def _heartbeat(self, ev: Heartbeat) -> None:
        ws = self.workers.get(ev.worker)
        if ws is not None:
            ws.last_seen = self._now
            ws.metrics = ev.metrics
            paused = ev.metrics.get("paused")
            if type(paused) is bool and ws.status in ACTIVE and paused != (ws.status == "paused"):
                self._set_paused(ws, paused, ev.stimulus_id)
            stuck = ev.metrics.get("memory_stuck_failure")
            if ws.status == "paused" and type(stuck) is str and stuck:
                self._fail_stuck(ws, stuck, ev.stimulus_id)

    def _set_paused(self, ws: WorkerState, paused: bool, stim: str) -> None:
        """A worker paused for memory gets no new work (placement and stealing take
        only ``running`` workers), and what waits on it unstarted is asked back for
        the others; once it resumes it is given work again."""
        self.placement.set_status(ws, "paused" if paused else "running")
        if paused:
            for ts in self.stealing.evacuate(ws):
                self._tell(ws.address, {"op": "steal-request", "key": ts.key})
        else:
            self._give_work(ws, {}, stim)

    def _fail_stuck(self, ws: WorkerState, why: str, stim: str) -> None:
        """``ws`` stays paused for good (its spill disk is full, past its stuck timeout).
        While no worker runs, what waits for one that ``ws`` could run would wait for
        ever: it fails, saying why, as the tasks waiting on ``ws`` itself do."""
        if any(other.status == "running" for other in self.workers.values()):
            return
        failure = _failure(WorkerMemoryError(why))
        recs: Recs = {}
        for ts in [t for t in self.tasks.values() if t.state in ("queued", "no-worker")]:
            if ts.state in ("queued", "no-worker") and self.placement.fits(ts, ws):
                self._transition(ts, "erred", recs, stim, failure)
        self._transitions(recs, stim)

    def _give_work(self, ws: WorkerState, recs: Recs, stim: str) -> None:
        """``ws`` can take work (it joined, or resumed): what waited for a worker, and roots."""
        for ts in self.tasks.values():
            if ts.state == "no-worker" and self.placement.valid(ts, ws):
                recs[ts.key] = "processing"
        self._transitions(recs, stim)
        self._fill(ws, recs, stim)

    # --------------------------------------------------------- clients

    def _add_client(self, ev: AddClient) -> None:
        self.clients.add(ev.client)

    def _maybe_drop_function(self, token: str) -> None:
        if token in self.function_refs:
            return
        if any(token in pinned for pinned in self.client_functions.values()):
            return
        self.functions.pop(token, None)
        for ws in self.workers.values():
            ws.functions_sent.discard(token)

    def _remove_client(self, ev: RemoveClient) -> None:
        self.clients.discard(ev.client)
        self.unfollowed.pop(ev.client, None)
        for token in self.client_functions.pop(ev.client, ()):
            self._maybe_drop_function(token)
        keys = [ts.key for ts in self.tasks.values() if ev.client in ts.who_wants]
        self._client_releases_keys(ClientReleasesKeys(ev.stimulus_id, ev.client, keys))

    def _update_graph(self, ev: UpdateGraph) -> None:
        pinned = self.client_functions.setdefault(ev.client, set())
        for token, func in ev.functions.items():
            self.functions.setdefault(token, func)
            pinned.add(token)
        generation = next(self._generation)
        recs: Recs = {}
        touched: list[TaskState] = []
        for order, spec in enumerate(ev.tasks):
            ts = self.tasks.get(spec.key)
            if ts is None:
                ts = self._new_task(spec, (-spec.priority, generation, order))
                if ts is None:
                    continue
            elif ts.func is None and ts.run_args is None and spec.func is not None:
                self._adopt_lineage(ts, spec, (-spec.priority, generation, order))
            elif ts.state == "erred" and spec.retries:
                recs[ts.key] = "released"
            touched.append(ts)
        for key in ev.wanted:
            ts = self.tasks.get(key)
            if ts is None:
                self.out.append(ToClient(ev.client, {"op": "task-erred", "key": key,
                                "exception": None, "traceback": "",
                                "exception_text": f"{key!r} could not be created: one of its inputs was "
                                "released before it arrived, or its function was never sent"}))
                continue
            self._want(ts, ev.client)
        # recommendations are taken last in first out: added in reverse, the tasks of
        # a graph are placed (and queued) in their own order, which keeps a map's
        # roots one run of the queue (see Placement)
        for ts in reversed(touched):
            if ts.state == "released" and ts.key not in recs and self._wanted(ts):
                recs[ts.key] = "waiting"
        self._transitions(recs, ev.stimulus_id)

    def _dependencies_of(self, spec: TaskSpec) -> list[TaskState] | None:
        """The tasks ``spec`` depends on, or None when one is unknown or its function is."""
        if spec.func is not None and spec.func not in self.functions:
            return None  # reported through `wanted`
        deps = []
        for dep_key in spec.dependencies:
            dep = self.tasks.get(dep_key)
            if dep is None:
                return None  # its erring is reported through `wanted`
            deps.append(dep)
        return deps

    def _new_task(
        self, spec: TaskSpec, priority: tuple[int, int, int]
    ) -> TaskState | None:
        deps = self._dependencies_of(spec)
        if deps is None:
            return None
        ts = TaskState(spec.key, key_prefix(spec.key), spec.func, spec.args, priority)
        self._set_spec(ts, spec, deps)
        self._add_task(ts)
        return ts

    def _adopt_lineage(self, ts: TaskState, spec: TaskSpec, priority: tuple) -> None:
        """Data that arrived without lineage (from a rejoining worker) gets the
        client's recipe, so it can be recomputed should it be lost again."""
        deps = self._dependencies_of(spec)
        if deps is None:
            return
        ts.func, ts.run_args, ts.priority = spec.func, spec.args, priority
        self._set_spec(ts, spec, deps)

    def _set_spec(self, ts: TaskState, spec: TaskSpec, deps: list[TaskState]) -> None:
        ts.retries = spec.retries
        if spec.workers:
            ts.worker_restrictions = set(spec.workers)
            ts.loose_restrictions = spec.allow_other_workers
        if spec.resources:
            ts.resource_restrictions = dict(spec.resources)
        if spec.func is not None:
            self.function_refs[spec.func] = self.function_refs.get(spec.func, 0) + 1
        for dep in deps:
            ts.dependencies = grow(ts.dependencies)
            ts.dependencies.add(dep)
            dep.dependents = grow(dep.dependents)
            dep.dependents.add(ts)

    def _update_data(self, ev: UpdateData) -> None:
        recs: Recs = {}
        for key, addresses in ev.who_has.items():
            workers = [self.workers[a] for a in addresses if a in self.workers]
            if not workers:
                continue
            ts = self.tasks.get(key)
            if ts is None:
                ts = TaskState(key, key_prefix(key), None, None, (0, next(self._generation), 0))
                self._add_task(ts)
            if ts.state != "memory":
                ts.who_wants = with_item(ts.who_wants, ev.client)
                self._transition(ts, "memory", recs, ev.stimulus_id,
                                 (workers, ev.nbytes.get(key, 0)))
            else:
                for ws in workers:
                    self._add_replica(ts, ws)
                self._want(ts, ev.client)
        self._transitions(recs, ev.stimulus_id)

    def _want(self, ts: TaskState, client: str) -> None:
        if client in ts.who_wants or (client == FIRE_AND_FORGET
                                      and ts.state in ("memory", "erred")):
            return
        ts.who_wants = (*ts.who_wants, client)
        if ts.state == "memory":
            self._report_memory(ts, [client])
        elif ts.state == "erred":
            self._report_erred(ts, [client])

    def _client_wants_keys(self, ev: ClientWantsKeys) -> None:
        recs: Recs = {}
        for key in ev.keys:
            ts = self.tasks.get(key)
            if ts is not None:
                self._want(ts, ev.client)
                if ts.state == "released":
                    recs[key] = "waiting"
        self._transitions(recs, ev.stimulus_id)

    def _client_unfollowed(self, ev: ClientUnfollowed) -> None:
        """Whatever ``ev.worker`` pushed to the client and said so before this
        is reported again; what it says from now on is not taken."""
        if ev.client not in self.clients:
            return
        self.unfollowed.setdefault(ev.client, set()).add(ev.worker)
        for key in ev.keys:
            ts = self.tasks.get(key)
            if ts is not None and ts.state == "memory" and ev.client in ts.who_wants:
                self._report_memory(ts, [ev.client])

    def _client_releases_keys(self, ev: ClientReleasesKeys) -> None:
        recs: Recs = {}
        for key in ev.keys:
            ts = self.tasks.get(key)
            if ts is None or ev.client not in ts.who_wants:
                continue
            ts.who_wants = without_item(ts.who_wants, ev.client)
            if not self._wanted(ts):
                recs[key] = "forgotten" if not ts.dependents else "released"
        self._transitions(recs, ev.stimulus_id)

    def _cancel_keys(self, ev: CancelKeys) -> None:
        """Cancel for every client: the tasks and everything depending on them."""
        doomed: list[TaskState] = []
        stack = [self.tasks[k] for k in ev.keys if k in self.tasks]
        seen: set[str] = set()
        while stack:
            ts = stack.pop()
            if ts.key in seen or ts.state in ("memory", "erred"):
                continue
            seen.add(ts.key)
            doomed.append(ts)
            stack.extend(ts.dependents)
        recs: Recs = {}
        for ts in doomed:
            for client in ts.who_wants:
                self.out.append(ToClient(client, {"op": "cancelled-keys", "keys": [ts.key]}))
            ts.who_wants = ()
        for ts in doomed:
            if ts.key in self.tasks and not self._wanted(ts):
                recs[ts.key] = "released"
        self._transitions(recs, ev.stimulus_id)

    # --------------------------------------------------------- task results

    def _task_finished(self, ev: TaskFinished) -> None:
        ts = self.tasks.get(ev.key)
        ws = self.workers.get(ev.worker)
        if ws is None:
            return
        if ts is None or ts.state != "processing" or ts.processing_on is not ws:
            if ts is not None and ts.state == "memory":
                self._add_replica(ts, ws)
            else:  # a result nobody wants any more (released, or stolen)
                self._free(ws.address, [ev.key])
            return
        recs: Recs = {}
        self._transition(ts, "memory", recs, ev.stimulus_id, ev)
        self._transitions(recs, ev.stimulus_id)
        self._fill(ws, recs, ev.stimulus_id)

    def _task_erred(self, ev: TaskErred) -> None:
        ts = self.tasks.get(ev.key)
        ws = self.workers.get(ev.worker)
        if ts is None or ws is None or ts.processing_on is not ws:
            return
        recs: Recs = {}
        if ts.retries > 0:
            ts.retries -= 1
            self._transition(ts, "released", recs, ev.stimulus_id, GONE)
        else:
            failure = (ev.exception, ev.traceback, ev.exception_text, None)
            self._transition(ts, "erred", recs, ev.stimulus_id, failure)
        self._transitions(recs, ev.stimulus_id)
        self._fill(ws, recs, ev.stimulus_id)

    def _missing_data(self, ev: MissingData) -> None:
        ts = self.tasks.get(ev.key)
        errant = self.workers.get(ev.errant_worker)
        if ts is None or errant is None or errant not in ts.who_has:
            return
        ts.who_has = without_item(ts.who_has, errant)
        errant.has_what.discard(ts)
        errant.nbytes -= ts.nbytes
        recs: Recs = {}
        if not ts.who_has:
            recs[ts.key] = "released"
        self._transitions(recs, ev.stimulus_id)

    def _add_keys(self, ev: AddKeys) -> None:
        ws = self.workers.get(ev.worker)
        if ws is None:
            return
        stale = []
        for key in ev.keys:
            ts = self.tasks.get(key)
            if ts is not None and ts.state == "memory":
                self._add_replica(ts, ws)
            else:
                stale.append(key)
        if stale:
            self._free(ws.address, stale)

    def _steal_response(self, ev: StealResponse) -> None:
        decision = self.stealing.response(ev.worker, ev.key, ev.state)
        if decision is None:
            return
        ts, thief = decision
        recs: Recs = {}
        if thief is not None:
            self._transition(ts, "processing", recs, ev.stimulus_id, thief)
        else:  # the thief is gone or paused, or the victim paused: place it afresh
            self._transition(ts, "released", recs, ev.stimulus_id, GONE)
        self._transitions(recs, ev.stimulus_id)

    def _long_running(self, ev: LongRunning) -> None:
        """A task seceded: its thread slot on the worker takes other work."""
        ts, ws = self.tasks.get(ev.key), self.workers.get(ev.worker)
        if ts is None or ws is None or ts.processing_on is not ws:
            return
        self.placement.secede(ts, ws)
        recs: Recs = {}
        self._fill(ws, recs, ev.stimulus_id)
        self._transitions(recs, ev.stimulus_id)

    # --------------------------------------------------------- transitions

    def _transitions(self, recs: Recs, stimulus: str) -> None:
        while recs:
            key, finish = recs.popitem()
            ts = self.tasks.get(key)
            if ts is None or ts.state == finish or ts.state in _STALE.get(finish, ()):
                continue
            self._recommended(ts, finish, recs, stimulus)

    def _recommended(self, ts: TaskState, finish: str, recs: Recs, stim: str) -> None:
        """Carry out a recommendation: the transitions it takes from where ``ts`` is."""
        start = ts.state
        if finish == "forgotten" and start not in _FORGETTABLE:
            # released first; being unwanted it recommends its own forgetting
            self._transition(ts, "released", recs, stim)
        elif finish == "processing":
            if start == "released":
                self._recommended(ts, "waiting", recs, stim)  # which recommends processing
            elif not ts.waiting_on:  # an input may have been lost since
                self._schedule(ts, recs, stim)
        elif finish == "waiting":
            if ts.run_args is None and ts.func is None:
                self._transition(ts, "erred", recs, stim, _failure(LostDataError(ts.key)))
                return
            for dep in ts.dependencies:
                if dep.state == "erred":
                    failure = (dep.exception, dep.traceback, dep.exception_text, dep)
                    self._transition(ts, "erred", recs, stim, failure)
                    return
            self._transition(ts, "waiting", recs, stim)
        elif finish != "erred":  # erring is never recommended: it needs a cause
            self._transition(ts, finish, recs, stim)

    def _schedule(self, ts: TaskState, recs: Recs, stim: str) -> None:
        """Place a ready task: on a worker, in the queue, or as no-worker."""
        ws = self.placement.decide(ts)
        if ws is not None:
            self._transition(ts, "processing", recs, stim, ws)
        elif ts.state != "queued" and self.placement.queueable(ts) and self.workers:
            self._transition(ts, "queued", recs, stim)
        elif ts.state == "waiting":
            self._transition(ts, "no-worker", recs, stim)

    def _transition(self, ts: TaskState, finish: str, recs: Recs, stim: str,
                    arg: Any = None) -> None:
        """The one place a task's state changes: checked, recorded, then carried out."""
        start = ts.state
        move = self._table.get((start, finish))
        if move is None:
            raise InvalidTransition(
                f"{ts.key!r}: {start} -> {finish} is not allowed (stimulus {stim})")
        ts.state = finish
        self._record((ts.key, start, finish, stim, self._now))
        counts = self.prefix_counts[ts.prefix]
        counts[start] -= 1
        if finish != "forgotten":
            counts[finish] += 1
        elif not any(counts.values()):
            del self.prefix_counts[ts.prefix]
        move(ts, start, recs, stim, arg)

    def _add_task(self, ts: TaskState) -> None:
        """A new task (released), counted by prefix and state for the dashboard."""
        self.tasks[ts.key] = ts
        counts = self.prefix_counts.get(ts.prefix)
        if counts is None:
            counts = self.prefix_counts[ts.prefix] = dict.fromkeys(TASK_STATES, 0)
        counts["released"] += 1

    def _check(self, ts: TaskState, finish: str) -> None:
        if (ts.state, finish) not in self._table:
            raise InvalidTransition(f"{ts.key!r}: {ts.state} -> {finish} is not allowed")

    # ------------------------------------------------ the moves of the table

    def _released_to_waiting(self, ts: TaskState, start: str, recs: Recs, stim: str,
                             arg: Any) -> None:
        ts.waiting_on = {dep for dep in ts.dependencies if dep.state != "memory"} or EMPTY
        for dep in ts.dependencies:
            dep.waiters = grow(dep.waiters)
            dep.waiters.add(ts)
            if dep.state == "released":
                recs[dep.key] = "waiting"
        if not ts.waiting_on:
            recs[ts.key] = "processing"

    def _to_processing(self, ts: TaskState, start: str, recs: Recs, stim: str,
                       ws: WorkerState) -> None:
        if start == "queued":
            self.placement.dequeue(ts)
        self._assign(ts, ws)

    def _stolen(self, ts: TaskState, start: str, recs: Recs, stim: str,
                thief: WorkerState) -> None:
        assert ts.processing_on is not None
        self.placement.unassign(ts, ts.processing_on)
        self._assign(ts, thief)

    def _assign(self, ts: TaskState, ws: WorkerState) -> None:
        self.placement.occupy(ts, ws)
        ts.processing_on = ws
        msg: dict = {"op": "compute-task", "key": ts.key, "func": ts.func,
                     "args": ts.run_args, "priority": list(ts.priority)}
        if ts.func is not None and ts.func not in ws.functions_sent:
            msg["function"] = self.functions[ts.func]
            ws.functions_sent.add(ts.func)
        if ts.dependencies:
            msg["who_has"] = {d.key: [w.address for w in d.who_has] for d in ts.dependencies}
            msg["nbytes"] = {d.key: d.nbytes for d in ts.dependencies}
        if ts.resource_restrictions:
            msg["resources"] = ts.resource_restrictions
        if ts.who_wants:
            # the clients that wait: a small result may travel inline, and
            # straight to those that follow this worker (worker/_reports.py)
            clients = [c for c in ts.who_wants if c not in _NOT_CLIENTS]
            if clients:
                msg["report"] = clients
        self._tell(ws.address, msg)

    def _to_queued(self, ts: TaskState, start: str, recs: Recs, stim: str, arg: Any) -> None:
        self.placement.enqueue(ts)

    def _to_no_worker(self, ts: TaskState, start: str, recs: Recs, stim: str,
                      arg: Any) -> None:
        pass  # it waits for a worker it may run on (see _add_worker)

    def _to_memory(self, ts: TaskState, start: str, recs: Recs, stim: str, arg: Any) -> None:
        inline = None
        reported: tuple[str, ...] = ()
        if type(arg) is TaskFinished:  # computed where it was processing
            ws = ts.processing_on
            assert ws is not None
            self.placement.unassign(ts, ws)
            ts.processing_on = None
            ts.nbytes = arg.nbytes
            if arg.stop > arg.start > 0:
                self.placement.record_duration(ts, arg.stop - arg.start)
            self._add_replica(ts, ws)
            self.counts["finished"] += 1
            if ts.ever_finished:
                self.counts["recomputed"] += 1
            ts.ever_finished = True
            inline = arg.inline
            if arg.reported:
                reported = tuple(c for c in arg.reported
                                 if arg.worker not in self.unfollowed.get(c, ()))
        else:  # (workers, nbytes): scattered, or held by a rejoining worker
            workers, nbytes = arg
            if start == "processing":  # the run is not needed any more
                ws = ts.processing_on
                assert ws is not None
                self.placement.unassign(ts, ws)
                ts.processing_on = None
                if ws not in workers:
                    self._free(ws.address, [ts.key])
                self._fill(ws, recs, stim)
            elif start == "queued":
                self.placement.dequeue(ts)
            ts.exception = ts.traceback = ts.exception_text = None
            ts.waiting_on = EMPTY
            ts.nbytes = nbytes
            for ws in workers:
                self._add_replica(ts, ws)
        self._on_memory(ts, recs, inline, reported)

    def _on_memory(self, ts: TaskState, recs: Recs, inline: Any = None,
                   reported: tuple[str, ...] = ()) -> None:
        """``ts`` is in memory; ``reported``: the clients its worker told already."""
        for dts in ts.waiters:
            if ts in dts.waiting_on:
                dts.waiting_on.discard(ts)
            if not dts.waiting_on and dts.state == "waiting":
                recs[dts.key] = "processing"
        self._release_inputs(ts, recs)
        if ts.who_wants:
            clients = ts.who_wants
            if reported:
                clients = tuple(c for c in clients if c not in reported)
            self._report_memory(ts, clients, inline)
            ts.who_wants = without_item(ts.who_wants, FIRE_AND_FORGET)
        if not self._wanted(ts):
            recs[ts.key] = "forgotten" if not ts.dependents else "released"

    def _release_inputs(self, ts: TaskState, recs: Recs) -> None:
        """``ts`` no longer needs its inputs: release those nobody else needs."""
        for dep in ts.dependencies:
            if ts in dep.waiters:
                dep.waiters.discard(ts)
            if not self._wanted(dep) and dep.state in ("memory", "waiting", "queued",
                                                       "no-worker", "processing"):
                recs[dep.key] = "released"

    def _to_erred(self, ts: TaskState, start: str, recs: Recs, stim: str,
                  failure: Failure) -> None:
        exception, traceback, text, blame = failure
        if start == "processing":
            ws = ts.processing_on
            assert ws is not None
            self.placement.unassign(ts, ws)
            ts.processing_on = None
            if blame is not None:  # it may still be running there
                self._free(ws.address, [ts.key])
            self._fill(ws, recs, stim)
        elif start == "queued":
            self.placement.dequeue(ts)
        ts.exception, ts.traceback, ts.exception_text = exception, traceback, text
        if blame is not None:
            ts.erred_on_behalf_of = blame.key
        ts.waiting_on = EMPTY
        self.counts["erred"] += 1
        self._release_inputs(ts, recs)
        for dts in list(ts.waiters):
            if dts.state not in ("erred", "memory", "forgotten"):
                self._transition(dts, "erred", recs, stim, (exception, traceback, text, ts))
        ts.waiters = EMPTY
        if ts.who_wants:
            self._report_erred(ts, ts.who_wants)
        if FIRE_AND_FORGET in ts.who_wants:
            ts.who_wants = without_item(ts.who_wants, FIRE_AND_FORGET)
            if not self._wanted(ts):
                recs[ts.key] = "forgotten" if not ts.dependents else "released"

    def _to_released(self, ts: TaskState, start: str, recs: Recs, stim: str,
                     arg: Any) -> None:
        if start == "processing":
            ws = ts.processing_on
            assert ws is not None
            self.placement.unassign(ts, ws)
            ts.processing_on = None
            if arg is not GONE:
                self._free(ws.address, [ts.key])
            self._fill(ws, recs, stim)
        elif start == "memory":
            self._drop_replicas(ts)
        elif start == "queued":
            self.placement.dequeue(ts)
        ts.waiting_on = EMPTY
        ts.exception = ts.traceback = ts.exception_text = None
        for dts in ts.waiters:
            if dts.state == "waiting":
                dts.waiting_on = grow(dts.waiting_on)
                dts.waiting_on.add(ts)
            elif dts.state in ("processing", "queued", "no-worker"):
                recs[dts.key] = "released"
        if start == "memory":
            for client in ts.who_wants:
                self.out.append(ToClient(client, {"op": "lost-key", "key": ts.key}))
        if self._wanted(ts):
            recs[ts.key] = "waiting"
        elif not ts.dependents:
            recs[ts.key] = "forgotten"
        else:
            self._release_inputs(ts, recs)

    def _to_forgotten(self, ts: TaskState, start: str, recs: Recs, stim: str,
                      arg: Any) -> None:
        if start == "memory":
            self._drop_replicas(ts)
        del self.tasks[ts.key]
        if ts.func is not None:
            refs = self.function_refs[ts.func] - 1
            if refs:
                self.function_refs[ts.func] = refs
            else:
                del self.function_refs[ts.func]
                self._maybe_drop_function(ts.func)
        for dep in ts.dependencies:
            if ts in dep.dependents:
                dep.dependents.discard(ts)
            if ts in dep.waiters:
                dep.waiters.discard(ts)
            if not dep.dependents and not dep.who_wants and dep.state in _FORGETTABLE:
                recs[dep.key] = "forgotten"
            elif not self._wanted(dep) and dep.state not in ("released", "erred", "forgotten"):
                recs[dep.key] = "released"
        ts.dependencies = EMPTY

    # --------------------------------------------------------- helpers

    def _fill(self, ws: WorkerState, recs: Recs, stim: str) -> None:
        """Hand queued roots to ``ws`` while it has free slots."""
        for ts in self.placement.take(ws):
            self._transition(ts, "processing", recs, stim, ws)

    def _wanted(self, ts: TaskState) -> bool:
        return bool(ts.who_wants or ts.waiters)

    def _add_replica(self, ts: TaskState, ws: WorkerState) -> None:
        if ws not in ts.who_has:
            ts.who_has = (*ts.who_has, ws)
            ws.has_what.add(ts)
            ws.nbytes += ts.nbytes

    def _drop_replicas(self, ts: TaskState) -> None:
        for ws in ts.who_has:
            ws.has_what.discard(ts)
            ws.nbytes -= ts.nbytes
            self._free(ws.address, [ts.key])
        ts.who_has = ()

    def _tell(self, address: str, msg: dict[str, Any]) -> None:
        """Send ``msg`` to the worker at ``address`` (every message to a worker goes here)."""
        inst = ToWorker(address, msg)
        self.out.append(inst)
        self._told[address] = inst

    def _free(self, address: str, keys: Iterable[str]) -> None:
        """Tell a worker to free ``keys``: in the message before, if that is a free-keys too.

        Releasing many keys at once (a client dropping its futures, a graph
        forgotten) frees them one by one, and a message costs more than a
        key, both here and in the worker, where each is read and checked and
        becomes an event of its own: 4,000 keys took 20 ms of the worker's
        loop as 4,000 messages.  Joining only the worker's latest message of
        this pass keeps the order of what each worker is told (messages to
        different workers travel on different streams, and have no order
        between them); a message holds at most :data:`FREE_KEYS_CHUNK` keys,
        so forgetting a huge graph still makes messages of a bounded size.
        """
        last = self._told.get(address)
        if (last is not None and last.msg["op"] == "free-keys"
                and len(last.msg["keys"]) < FREE_KEYS_CHUNK):
            last.msg["keys"].extend(keys)
        else:
            self._tell(address, {"op": "free-keys", "keys": list(keys)})

    def _report_memory(self, ts: TaskState, clients: Iterable[str], inline: Any = None) -> None:
        workers = [ws.address for ws in ts.who_has]
        for client in clients:
            if client == REJOIN_HOLDER:
                continue
            msg = {"op": "key-in-memory", "key": ts.key, "workers": workers, "nbytes": ts.nbytes}
            if inline is not None:
                msg["value"] = inline
            self.out.append(ToClient(client, msg))

    def _report_erred(self, ts: TaskState, clients: Iterable[str]) -> None:
        for client in clients:
            self.out.append(ToClient(client, {
                "op": "task-erred", "key": ts.key, "exception": ts.exception,
                "traceback": ts.traceback, "exception_text": ts.exception_text,
            }))

    def _update_idle(self) -> None:
        busy = self.placement.loads.processing or self.placement.queued
        if busy:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = self.clock()

    def who_has(self, keys: Iterable[str]) -> dict[str, list[str]]:
        """Each key's holders, active workers before closing ones (the best to ask first)."""
        out = {}
        for key in keys:
            ts = self.tasks.get(key)
            holders = sorted(ts.who_has, key=_leaving) if ts is not None else []
            out[key] = [ws.address for ws in holders]
        return out

    # --------------------------------------------------------- validation

    def validate(self) -> None:
        """Check every invariant; raises AssertionError naming the broken one."""
        validate_state(self)


def _failure(error: Exception) -> Failure:
    """An error the scheduler itself raises for a task, in the form a worker reports."""
    from ..protocol import serialize

    return serialize(error), "", str(error), None


__all__ = [
    "LEGAL_TRANSITIONS",
    "TRANSITIONS",
    "InvalidTransition",
    "KilledWorkerError",
    "LostDataError",
    "SchedulerState",
]


def _leaving(ws: WorkerState) -> bool:
    return ws.status not in ACTIVE
