"""Where a ready task runs, and how much work each worker is given ahead.

* A task with inputs goes to the worker where it is expected to *start*
  soonest: the time to fetch the inputs it lacks there plus the work already
  queued there.  Small inputs make that mostly the queue; large inputs pull
  the task to its data.  Workers holding none of its inputs are only
  considered while no root waits in the queue: otherwise a worker with idle
  threads is about to be given one of those, which needs nothing fetched.
* A task without inputs (a root) is only handed to a worker with a free
  slot; the rest wait in the scheduler's queue, in priority order, so a graph
  with a million roots does not flood the workers' memory before the
  reducing tasks get to run.  A slot count covers a few milliseconds of work
  ahead per thread, so tiny tasks keep the threads busy across round trips.
  It is counted from the durations of the roots' own prefix: a worker that
  just ran tiny tasks is not handed dozens of a new graph's heavy roots
  (which would then all run before any task that consumes them, their
  results piling up), and the roots of a prefix never seen get the base count
  until one has finished.

The queue is a heap of *runs*: a run is a FIFO of tasks whose priorities
never decrease, and a task that is not behind the newest run's last one
starts a run of its own.  Graphs arrive in priority order (a map of a million
roots is one run), so queuing and taking a task costs O(1) and no entry
object, where a heap of tasks paid twenty tuple comparisons and a tuple each.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from typing import TYPE_CHECKING

from ._loads import Loads
from ._model import TaskState, WorkerState

if TYPE_CHECKING:
    from ._state import SchedulerState

#: Estimated seconds for a task of a prefix never seen finishing.
UNKNOWN_TASK_DURATION = 0.5
#: Assumed worker-to-worker bandwidth (bytes/s) and per-fetch latency (s).
BANDWIDTH = 500e6
FETCH_LATENCY = 0.001
#: Root tasks per thread a worker is given at least.
SATURATION = 1.5
#: ...and enough more to cover this much time when tasks are tiny.
PIPELINE_SECONDS = 0.004
MAX_SLOTS_PER_THREAD = 64
#: Other workers considered besides those holding a task's inputs.
EXTRA_CANDIDATES = 2


#: Tasks this short or shorter get MAX_SLOTS_PER_THREAD.
_TINY = PIPELINE_SECONDS / MAX_SLOTS_PER_THREAD


def _per_thread(duration: float | None) -> int:
    """Roots per thread beyond SATURATION for tasks of ``duration`` (None: unknown)."""
    if duration is None:
        return 0
    if duration <= _TINY:  # tiny tasks, the ones finishing by the thousand a second
        return MAX_SLOTS_PER_THREAD
    return math.ceil(PIPELINE_SECONDS / duration)


class Placement:
    def __init__(self, state: SchedulerState) -> None:
        self.state = state
        #: how many tasks are queued.  The runs may also hold tasks that left the
        #: queue since (their state says so): those are skipped when reached.  A
        #: count, not a set: a set of a million queued tasks cost memory, and its
        #: rehash on growth stalled the event loop for tens of milliseconds.
        self.queued = 0
        #: the runs, as (priority of the run's first task, order made, run)
        self._runs: list[tuple[tuple, int, deque[TaskState]]] = []
        self._newest: deque[TaskState] | None = None  # the run a task may join at its end
        self._counter = itertools.count()
        self._cursor = 0
        self.loads = Loads()
        self.durations: dict[str, float] = {}
        #: prefix -> {threads: slots} (see slots), until the prefix's slots per thread change
        self._slots: dict[str | None, dict[int, int]] = {}
        #: (prefix, Loads.freed) when no worker had room for a root of that prefix:
        #: until a slot frees, nor has any for the next (see _idlest_with_room)
        self._full: tuple[str, int] | None = None

    # ------------------------------------------------------------ durations

    def estimate(self, ts: TaskState) -> float:
        return self.durations.get(ts.prefix, UNKNOWN_TASK_DURATION)

    def record_duration(self, ts: TaskState, seconds: float) -> None:
        prefix = ts.prefix
        old = self.durations.get(prefix)
        new = self.durations[prefix] = seconds if old is None else 0.8 * old + 0.2 * seconds
        # the slots are counted again when next asked, if they change
        if prefix in self._slots and _per_thread(new) != _per_thread(old):
            del self._slots[prefix]
            self._full = None

    def slots(self, ws: WorkerState, prefix: str | None = None) -> int:
        """Roots of ``prefix`` (by default the queue's next one) that ``ws`` is given
        at most at once: :data:`SATURATION` per thread, or as many as cover
        :data:`PIPELINE_SECONDS` of that prefix's tasks when they are tiny."""
        if prefix is None and self._runs:
            prefix = self._runs[0][2][0].prefix
        counts = self._slots.get(prefix)
        if counts is None:
            counts = self._slots[prefix] = {}
        count = counts.get(ws.nthreads)
        if count is None:
            per_thread = _per_thread(self.durations.get(prefix) if prefix is not None else None)
            count = counts[ws.nthreads] = max(math.ceil(ws.nthreads * SATURATION),
                                              per_thread * ws.nthreads)
        return count

    # ------------------------------------------------------------ validity

    def valid(self, ts: TaskState, ws: WorkerState) -> bool:
        """May ``ts`` go to ``ws`` now (it runs, and it fits the task's restrictions)?"""
        return ws.status == "running" and self.fits(ts, ws)

    def fits(self, ts: TaskState, ws: WorkerState) -> bool:
        """Does ``ws`` fit the restrictions of ``ts`` (its status aside)?"""
        restricted = ts.worker_restrictions
        if (restricted is not None and not ts.loose_restrictions
                and ws.address not in restricted and ws.name not in restricted):
            return False
        if ts.resource_restrictions:
            for name, amount in ts.resource_restrictions.items():
                if ws.resources.get(name, 0) < amount:
                    return False
        return True

    def _preferred(self, ts: TaskState) -> list[WorkerState]:
        workers = self.state.workers
        if ts.worker_restrictions is None:
            return []
        return [
            ws for ws in workers.values()
            if (ws.address in ts.worker_restrictions or ws.name in ts.worker_restrictions)
            and self.valid(ts, ws)
        ]

    # ------------------------------------------------------------ deciding

    def queueable(self, ts: TaskState) -> bool:
        """A root without restrictions: it waits in the scheduler's queue for a free slot."""
        return not ts.dependencies and ts.worker_restrictions is None and not (
            ts.resource_restrictions
        )

    def decide(self, ts: TaskState) -> WorkerState | None:
        preferred = self._preferred(ts)
        if preferred:
            return min(preferred, key=self._start_time(ts))
        if ts.worker_restrictions is not None and not ts.loose_restrictions:
            return None
        if self.queueable(ts):
            return self._idlest_with_room(ts.prefix)
        candidates = {ws for dep in ts.dependencies for ws in dep.who_has if self.valid(ts, ws)}
        if not self.queued:
            candidates.update(self._rotating(EXTRA_CANDIDATES, ts))
        if not candidates:
            candidates = {ws for ws in self.state.workers.values() if self.valid(ts, ws)}
        if not candidates:
            return None
        return min(candidates, key=self._start_time(ts))

    def _start_time(self, ts: TaskState):
        deps = ts.dependencies

        def start(ws: WorkerState) -> tuple[float, str]:
            missing_bytes = 0
            missing = 0
            for dep in deps:
                if ws not in dep.who_has:
                    missing_bytes += dep.nbytes
                    missing += 1
            fetch = missing_bytes / BANDWIDTH + (FETCH_LATENCY if missing else 0.0)
            return fetch + ws.occupancy / ws.nthreads, ws.address

        return start

    def _rotating(self, n: int, ts: TaskState) -> list[WorkerState]:
        workers = self.loads.ring  # the running ones
        if not workers:
            return []
        picked = []
        for _ in range(min(n, len(workers))):
            self._cursor = (self._cursor + 1) % len(workers)
            ws = workers[self._cursor]
            if self.fits(ts, ws):
                picked.append(ws)
        return picked

    def _idlest_with_room(self, prefix: str) -> WorkerState | None:
        # a graph of a million roots asks a million times in one pass, and
        # loads only grow in it: once none had room, none has until a slot frees
        full = self._full
        if full is not None and full[0] == prefix and full[1] == self.loads.freed:
            return None
        best: WorkerState | None = None
        best_load = math.inf
        for ws in self.loads.least_busy():  # as many threads, as many slots
            load = ws.busy
            if load >= self.slots(ws, prefix):
                continue
            relative = load / ws.nthreads
            if relative < best_load:
                best, best_load = ws, relative
        if best is None:
            self._full = (prefix, self.loads.freed)
        return best

    # ------------------------------------------------------------ bookkeeping
    # The state machine decides and moves; these keep the per-worker load and
    # the queue in step with its moves.

    def occupy(self, ts: TaskState, ws: WorkerState) -> None:
        assert ts not in ws.processing, f"{ts.key} is processing on {ws.address} already"
        duration = self.estimate(ts)
        ws.processing[ts] = duration
        ws.occupancy += duration
        self.loads.processing += 1
        self.loads.touch(ws)

    def unassign(self, ts: TaskState, ws: WorkerState) -> None:
        self.state.stealing.forget(ts)
        if ts not in ws.processing:
            return
        duration = ws.processing.pop(ts)
        ws.long_running.discard(ts)
        ws.occupancy = max(0.0, ws.occupancy - duration)
        self.loads.processing -= 1
        self.loads.touch(ws)

    def secede(self, ts: TaskState, ws: WorkerState) -> None:
        """``ts`` left its thread slot on ``ws``: the slot can take other work."""
        ws.long_running.add(ts)
        ws.occupancy = max(0.0, ws.occupancy - ws.processing[ts])
        ws.processing[ts] = 0.0
        self.loads.touch(ws)

    def set_status(self, ws: WorkerState, status: str) -> None:
        """The one place a worker's status changes after it joined: running
        workers are the ones placement and stealing consider."""
        ws.status = status
        self.loads.refile(ws)

    def enqueue(self, ts: TaskState) -> None:
        self.queued += 1
        newest = self._newest
        if newest is not None and newest[-1].priority <= ts.priority:
            newest.append(ts)
            return
        runs = self._runs
        if len(runs) == 1:  # alone, its entry was not kept up to date by take()
            _, order, first = runs[0]
            runs[0] = (first[0].priority, order, first)
        run = self._newest = deque((ts,))
        heapq.heappush(runs, (ts.priority, next(self._counter), run))

    def dequeue(self, ts: TaskState) -> None:
        """``ts`` leaves the "queued" state (its run's entry is skipped when reached)."""
        self.queued -= 1

    def take(self, ws: WorkerState) -> list[TaskState]:
        """The queued roots ``ws`` should be given now: as many as its free slots."""
        if ws.status != "running" or not self.queued:
            return []
        runs = self._runs
        room = self.slots(ws) - ws.busy
        taken: list[TaskState] = []
        chosen: set[TaskState] = set()  # a task queued twice has two entries
        while runs and len(taken) < room:
            _, order, run = runs[0]
            ts = run.popleft()
            if not run:
                heapq.heappop(runs)
                if run is self._newest:
                    self._newest = None
            elif len(runs) > 1:  # its first task changed: it may not come first any more
                heapq.heapreplace(runs, (run[0].priority, order, run))
            if ts.state == "queued" and ts not in chosen:  # else it left the queue since
                chosen.add(ts)
                taken.append(ts)
        return taken

    def queued_tasks(self) -> set[TaskState]:
        """The queued tasks the runs hold (for validation: it walks every run)."""
        return {ts for _, _, run in self._runs for ts in run if ts.state == "queued"}
