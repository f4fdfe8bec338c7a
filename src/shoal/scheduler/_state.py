"""The scheduler's task logic as a pure, synchronous state machine.

``SchedulerState.handle(event)`` applies one event and returns the messages
to send; no I/O happens here, which is what makes the logic testable with
random event sequences and fast.  Every change of a task's state goes
through :meth:`SchedulerState._transition`, checked against
:data:`LEGAL_TRANSITIONS`; follow-up changes are *recommendations* processed
in a loop rather than recursion, so long chains cannot blow the stack.

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

from ._errors import KilledWorkerError, LostDataError
from ._events import (
    AddClient,
    AddKeys,
    AddWorker,
    CancelKeys,
    ClientReleasesKeys,
    ClientWantsKeys,
    Event,
    Instruction,
    LongRunning,
    MissingData,
    RemoveClient,
    RemoveWorker,
    StealResponse,
    TaskErred,
    TaskFinished,
    TaskSpec,
    ToClient,
    ToWorker,
    UpdateData,
    UpdateGraph,
)
from ._model import EMPTY, TaskState, WorkerState, grow, key_prefix
from ._placement import Placement
from ._stealing import Stealing
from ._validate import validate_state

LEGAL_TRANSITIONS: dict[str, frozenset[str]] = {
    "released": frozenset({"waiting", "forgotten", "erred"}),
    "waiting": frozenset({"processing", "queued", "no-worker", "released", "erred"}),
    "queued": frozenset({"processing", "released", "erred"}),
    "no-worker": frozenset({"processing", "released", "erred"}),
    "processing": frozenset({"memory", "released", "erred"}),
    "memory": frozenset({"released", "forgotten"}),
    "erred": frozenset({"released", "forgotten"}),
}

#: Recommendations that events overtook: a task recommended for "waiting"
#: that has meanwhile erred or been scheduled is left where it is.
_STALE: dict[str, frozenset[str]] = {
    "waiting": frozenset({"erred", "memory", "processing", "queued", "no-worker"}),
    "processing": frozenset({"erred", "memory", "processing", "queued"}),
}

#: How many times a task may be running on a worker that dies before it is
#: blamed for the deaths and failed.
DEFAULT_ALLOWED_FAILURES = 3

#: The pseudo-client that wants fire-and-forget tasks until they finish.
FIRE_AND_FORGET = "fire-and-forget"


class InvalidTransition(RuntimeError):
    """A transition not in :data:`LEGAL_TRANSITIONS` was attempted."""


class SchedulerState:
    """Tasks, workers and clients, and the rules that move tasks along."""

    def __init__(
        self,
        allowed_failures: int = DEFAULT_ALLOWED_FAILURES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tasks: dict[str, TaskState] = {}
        self.workers: dict[str, WorkerState] = {}
        self.clients: set[str] = set()
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
        self._generation = itertools.count()
        self._handlers: dict[type, Callable[[Any], None]] = {
            AddWorker: self._add_worker,
            RemoveWorker: self._remove_worker,
            AddClient: self._add_client,
            RemoveClient: self._remove_client,
            UpdateGraph: self._update_graph,
            UpdateData: self._update_data,
            ClientReleasesKeys: self._client_releases_keys,
            ClientWantsKeys: self._client_wants_keys,
            CancelKeys: self._cancel_keys,
            TaskFinished: self._task_finished,
            TaskErred: self._task_erred,
            MissingData: self._missing_data,
            AddKeys: self._add_keys,
            StealResponse: self._steal_response,
            LongRunning: self._long_running,
        }
        # counters read by metrics
        self.counts = {"finished": 0, "erred": 0, "recomputed": 0, "lost": 0}
        self.transition_log: list[tuple[str, str, str, str]] | None = None
        self.idle_since: float | None = clock()

    # ------------------------------------------------------------------ API

    def handle(self, *events: Event) -> list[Instruction]:
        """Apply events in order and return the instructions they produced."""
        for event in events:
            self._handlers[type(event)](event)
        self.stealing.balance()
        out, self.out = self.out, []
        self._update_idle()
        return out

    # --------------------------------------------------------- workers

    def _add_worker(self, ev: AddWorker) -> None:
        if ev.address in self.workers:
            return
        ws = WorkerState(ev.address, ev.name, ev.nthreads, ev.memory_limit, ev.resources)
        ws.http_address = ev.http_address
        ws.last_seen = self.clock()
        self.workers[ev.address] = ws
        recs: dict[str, str] = {}
        for ts in self.tasks.values():
            if ts.state == "no-worker" and self.placement.valid(ts, ws):
                recs[ts.key] = "processing"
        self._transitions(recs, ev.stimulus_id)
        self.placement.fill(ws, ev.stimulus_id)

    def _remove_worker(self, ev: RemoveWorker) -> None:
        ws = self.workers.pop(ev.address, None)
        if ws is None:
            return
        ws.status = "closed"
        recs: dict[str, str] = {}
        # Only the tasks it was probably running are suspects: it runs them
        # in priority order, one per thread.
        suspects = set(sorted(ws.processing, key=lambda t: t.priority)[: ws.nthreads])
        for ts in list(ws.processing):
            self.placement.unassign(ts, ws)
            ts.processing_on = None
            if ts in suspects and not ev.graceful:
                ts.suspicious += 1
            if ts.suspicious > self.allowed_failures:
                self._fail(ts, KilledWorkerError(ts.key, ts.suspicious, ev.reason), recs)
            else:
                ts.state = "released"
                self._log(ts, "processing", "released", ev.stimulus_id)
                recs[ts.key] = "waiting" if self._wanted(ts) else "forgotten"
        for ts in list(ws.has_what):
            ts.who_has.discard(ws)
            if not ts.who_has:
                self.counts["lost"] += 1
                recs[ts.key] = "released"
        ws.has_what.clear()
        self._transitions(recs, ev.stimulus_id)
        for other in self.workers.values():
            self.placement.fill(other, ev.stimulus_id)

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
        recs: dict[str, str] = {}
        touched: list[TaskState] = []
        for order, spec in enumerate(ev.tasks):
            ts = self.tasks.get(spec.key)
            if ts is None:
                ts = self._new_task(spec, (-spec.priority, generation, order))
                if ts is None:
                    continue
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
        for ts in touched:
            if ts.state == "released" and ts.key not in recs and self._wanted(ts):
                recs[ts.key] = "waiting"
        self._transitions(recs, ev.stimulus_id)

    def _new_task(
        self, spec: TaskSpec, priority: tuple[int, int, int]
    ) -> TaskState | None:
        if spec.func is not None and spec.func not in self.functions:
            return None  # reported through `wanted`
        deps = []
        for dep_key in spec.dependencies:
            dep = self.tasks.get(dep_key)
            if dep is None:
                return None  # its erring is reported through `wanted`
            deps.append(dep)
        ts = TaskState(spec.key, key_prefix(spec.key), spec.func, spec.args, priority)
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
        self.tasks[ts.key] = ts
        return ts

    def _update_data(self, ev: UpdateData) -> None:
        recs: dict[str, str] = {}
        for key, addresses in ev.who_has.items():
            workers = [self.workers[a] for a in addresses if a in self.workers]
            if not workers:
                continue
            ts = self.tasks.get(key)
            if ts is None:
                ts = TaskState(key, key_prefix(key), None, None, (0, next(self._generation), 0))
                self.tasks[key] = ts
            if ts.state != "memory":
                ts.who_wants.add(ev.client)
                self._force_memory(ts, workers, ev.nbytes.get(key, 0), recs)
            else:
                for ws in workers:
                    self._add_replica(ts, ws)
                self._want(ts, ev.client)
        self._transitions(recs, ev.stimulus_id)

    def _force_memory(
        self, ts: TaskState, workers: list[WorkerState], nbytes: int, recs: dict[str, str]
    ) -> None:
        """Scattered data arrives in memory from whatever state the key was in."""
        if ts.state == "processing":
            assert ts.processing_on is not None
            self.placement.unassign(ts, ts.processing_on)
            ts.processing_on = None
        self.placement.dequeue(ts)
        ts.exception = ts.traceback = ts.exception_text = None
        old = ts.state
        ts.state = "memory"
        ts.nbytes = nbytes
        for ws in workers:
            self._add_replica(ts, ws)
        self._log(ts, old, "memory", "update-data")
        self._on_memory(ts, recs)

    def _want(self, ts: TaskState, client: str) -> None:
        if client in ts.who_wants or (client == FIRE_AND_FORGET
                                      and ts.state in ("memory", "erred")):
            return
        ts.who_wants.add(client)
        if ts.state == "memory":
            self._report_memory(ts, [client])
        elif ts.state == "erred":
            self._report_erred(ts, [client])

    def _client_wants_keys(self, ev: ClientWantsKeys) -> None:
        recs: dict[str, str] = {}
        for key in ev.keys:
            ts = self.tasks.get(key)
            if ts is not None:
                self._want(ts, ev.client)
                if ts.state == "released":
                    recs[key] = "waiting"
        self._transitions(recs, ev.stimulus_id)

    def _client_releases_keys(self, ev: ClientReleasesKeys) -> None:
        recs: dict[str, str] = {}
        for key in ev.keys:
            ts = self.tasks.get(key)
            if ts is None or ev.client not in ts.who_wants:
                continue
            ts.who_wants.discard(ev.client)
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
        recs: dict[str, str] = {}
        for ts in doomed:
            for client in ts.who_wants:
                self.out.append(ToClient(client, {"op": "cancelled-keys", "keys": [ts.key]}))
            ts.who_wants.clear()
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
                self.out.append(ToWorker(ws.address, {"op": "free-keys", "keys": [ev.key]}))
            return
        self.placement.unassign(ts, ws)
        ts.processing_on = None
        ts.nbytes = ev.nbytes
        if ev.stop > ev.start > 0:
            self.placement.record_duration(ts, ws, ev.stop - ev.start)
        ts.state = "memory"
        self._add_replica(ts, ws)
        self.counts["finished"] += 1
        if ts.ever_finished:
            self.counts["recomputed"] += 1
        ts.ever_finished = True
        self._log(ts, "processing", "memory", ev.stimulus_id)
        recs: dict[str, str] = {}
        self._on_memory(ts, recs, ev.inline)
        self._transitions(recs, ev.stimulus_id)
        self.placement.fill(ws, ev.stimulus_id)

    def _on_memory(self, ts: TaskState, recs: dict[str, str], inline: Any = None) -> None:
        for dts in ts.waiters:
            if ts in dts.waiting_on:
                dts.waiting_on.discard(ts)
            if not dts.waiting_on and dts.state == "waiting":
                recs[dts.key] = "processing"
        self._release_inputs(ts, recs)
        if ts.who_wants:
            self._report_memory(ts, ts.who_wants, inline)
            ts.who_wants.discard(FIRE_AND_FORGET)
        if not self._wanted(ts):
            recs[ts.key] = "forgotten" if not ts.dependents else "released"

    def _release_inputs(self, ts: TaskState, recs: dict[str, str]) -> None:
        """``ts`` no longer needs its inputs: release those nobody else needs."""
        for dep in ts.dependencies:
            if ts in dep.waiters:
                dep.waiters.discard(ts)
            if not self._wanted(dep) and dep.state in ("memory", "waiting", "queued",
                                                       "no-worker", "processing"):
                recs[dep.key] = "released"

    def _task_erred(self, ev: TaskErred) -> None:
        ts = self.tasks.get(ev.key)
        ws = self.workers.get(ev.worker)
        if ts is None or ws is None or ts.processing_on is not ws:
            return
        self.placement.unassign(ts, ws)
        ts.processing_on = None
        recs: dict[str, str] = {}
        if ts.retries > 0:
            ts.retries -= 1
            ts.state = "released"
            self._log(ts, "processing", "released", ev.stimulus_id)
            recs[ts.key] = "waiting"
        else:
            ts.exception, ts.traceback = ev.exception, ev.traceback
            ts.exception_text = ev.exception_text
            self._erred(ts, None, recs, ev.stimulus_id)
        self._transitions(recs, ev.stimulus_id)
        self.placement.fill(ws, ev.stimulus_id)

    def _fail(self, ts: TaskState, error: Exception, recs: dict[str, str]) -> None:
        from ..protocol import serialize

        ts.exception = serialize(error)
        ts.traceback = ""
        ts.exception_text = str(error)
        if ts.state == "processing" and ts.processing_on is not None:
            self.placement.unassign(ts, ts.processing_on)
            ts.processing_on = None
        self._erred(ts, None, recs, "fail")

    def _erred(
        self, ts: TaskState, blame: TaskState | None, recs: dict[str, str], stimulus: str
    ) -> None:
        old = ts.state
        self._check(ts, "erred")
        self.placement.dequeue(ts)
        if blame is not None:
            ts.exception, ts.traceback = blame.exception, blame.traceback
            ts.exception_text = blame.exception_text
            ts.erred_on_behalf_of = blame.key
        ts.state = "erred"
        ts.waiting_on = EMPTY
        self.counts["erred"] += 1
        self._log(ts, old, "erred", stimulus)
        self._release_inputs(ts, recs)
        for dts in list(ts.waiters):
            if dts.state not in ("erred", "memory", "forgotten"):
                if dts.state == "processing" and dts.processing_on is not None:
                    self.placement.unassign(dts, dts.processing_on)
                    self.out.append(ToWorker(dts.processing_on.address,
                                             {"op": "free-keys", "keys": [dts.key]}))
                    dts.processing_on = None
                self._erred(dts, ts, recs, stimulus)
        ts.waiters = EMPTY
        if ts.who_wants:
            self._report_erred(ts, ts.who_wants)
        if FIRE_AND_FORGET in ts.who_wants:
            ts.who_wants.discard(FIRE_AND_FORGET)
            if not self._wanted(ts):
                recs[ts.key] = "forgotten" if not ts.dependents else "released"

    def _missing_data(self, ev: MissingData) -> None:
        ts = self.tasks.get(ev.key)
        errant = self.workers.get(ev.errant_worker)
        if ts is None or errant is None or errant not in ts.who_has:
            return
        ts.who_has.discard(errant)
        errant.has_what.discard(ts)
        errant.nbytes -= ts.nbytes
        recs: dict[str, str] = {}
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
            self.out.append(ToWorker(ws.address, {"op": "free-keys", "keys": stale}))

    def _steal_response(self, ev: StealResponse) -> None:
        self.stealing.response(ev.worker, ev.key, ev.state)

    def _long_running(self, ev: LongRunning) -> None:
        ts, ws = self.tasks.get(ev.key), self.workers.get(ev.worker)
        if ts is not None and ws is not None and ts.processing_on is ws:
            self.placement.secede(ts, ws, ev.stimulus_id)

    # --------------------------------------------------------- transitions

    def _transitions(self, recs: dict[str, str], stimulus: str) -> None:
        while recs:
            key, finish = recs.popitem()
            ts = self.tasks.get(key)
            if ts is None or ts.state == finish or ts.state in _STALE.get(finish, ()):
                continue
            self._transition(ts, finish, recs, stimulus)

    def _check(self, ts: TaskState, finish: str) -> None:
        if finish not in LEGAL_TRANSITIONS.get(ts.state, ()):
            raise InvalidTransition(f"{ts.key!r}: {ts.state} -> {finish} is not allowed")

    def _transition(self, ts: TaskState, finish: str, recs: dict[str, str], stim: str) -> None:
        start = ts.state
        if finish == "forgotten" and start not in ("released", "memory", "erred"):
            self._transition(ts, "released", recs, stim)
            start = ts.state
        if finish == "processing" and start == "released":
            self._transition(ts, "waiting", recs, stim)  # which recommends processing
            return
        if finish == "erred":
            return  # only reached through _erred with a cause
        self._check(ts, finish)
        getattr(self, f"_to_{finish.replace('-', '_')}")(ts, recs)
        self._log(ts, start, ts.state, stim)

    def _to_waiting(self, ts: TaskState, recs: dict[str, str]) -> None:
        if ts.run_args is None and ts.func is None:
            self._lost_scattered(ts, recs)
            return
        ts.state = "waiting"
        ts.waiting_on = {dep for dep in ts.dependencies if dep.state != "memory"} or EMPTY
        for dep in ts.dependencies:
            dep.waiters = grow(dep.waiters)
            dep.waiters.add(ts)
            if dep.state == "released":
                recs[dep.key] = "waiting"
            elif dep.state == "erred":
                self._erred(ts, dep, recs, "dependency-erred")
                return
        if not ts.waiting_on:
            recs[ts.key] = "processing"

    def _lost_scattered(self, ts: TaskState, recs: dict[str, str]) -> None:
        from ..protocol import serialize

        error = LostDataError(ts.key)
        ts.exception, ts.traceback, ts.exception_text = serialize(error), "", str(error)
        self._erred(ts, None, recs, "lost-data")

    def _to_processing(self, ts: TaskState, recs: dict[str, str]) -> None:
        self.placement.schedule(ts)

    def _to_released(self, ts: TaskState, recs: dict[str, str]) -> None:
        start = ts.state
        if start == "processing" and ts.processing_on is not None:
            ws = ts.processing_on
            self.placement.unassign(ts, ws)
            ts.processing_on = None
            self.out.append(ToWorker(ws.address, {"op": "free-keys", "keys": [ts.key]}))
            self.placement.fill(ws, "released")
        elif start == "memory":
            self._drop_replicas(ts)
        self.placement.dequeue(ts)
        ts.state = "released"
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

    def _to_forgotten(self, ts: TaskState, recs: dict[str, str]) -> None:
        if ts.state == "memory":
            self._drop_replicas(ts)
        ts.state = "forgotten"
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
            if not dep.dependents and not dep.who_wants and dep.state in (
                "released", "memory", "erred"
            ):
                recs[dep.key] = "forgotten"
            elif not self._wanted(dep) and dep.state not in ("released", "erred", "forgotten"):
                recs[dep.key] = "released"
        ts.dependencies = EMPTY

    # --------------------------------------------------------- helpers

    def _wanted(self, ts: TaskState) -> bool:
        return bool(ts.who_wants or ts.waiters)

    def _add_replica(self, ts: TaskState, ws: WorkerState) -> None:
        if ws not in ts.who_has:
            ts.who_has.add(ws)
            ws.has_what.add(ts)
            ws.nbytes += ts.nbytes

    def _drop_replicas(self, ts: TaskState) -> None:
        for ws in ts.who_has:
            ws.has_what.discard(ts)
            ws.nbytes -= ts.nbytes
            self.out.append(ToWorker(ws.address, {"op": "free-keys", "keys": [ts.key]}))
        ts.who_has.clear()

    def _report_memory(self, ts: TaskState, clients: Iterable[str], inline: Any = None) -> None:
        workers = [ws.address for ws in ts.who_has]
        for client in clients:
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

    def _log(self, ts: TaskState, start: str, finish: str, stimulus: str) -> None:
        if self.transition_log is not None:
            self.transition_log.append((ts.key, start, finish, stimulus))

    def _update_idle(self) -> None:
        busy = any(ws.processing for ws in self.workers.values()) or self.placement.queued
        if busy:
            self.idle_since = None
        elif self.idle_since is None:
            self.idle_since = self.clock()

    def who_has(self, keys: Iterable[str]) -> dict[str, list[str]]:
        out = {}
        for key in keys:
            ts = self.tasks.get(key)
            out[key] = [ws.address for ws in ts.who_has] if ts is not None else []
        return out

    # --------------------------------------------------------- validation

    def validate(self) -> None:
        """Check every invariant; raises AssertionError naming the broken one."""
        validate_state(self)


__all__ = [
    "LEGAL_TRANSITIONS",
    "InvalidTransition",
    "KilledWorkerError",
    "LostDataError",
    "SchedulerState",
]
