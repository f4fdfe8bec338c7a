"""Work stealing: idle workers take waiting work from busy ones.

After every batch of events the scheduler looks for a worker with idle
threads.  From the most loaded worker it asks back (``steal-request``) the
tasks assigned last, as long as fetching their inputs to the idle worker is
expected to be quicker than waiting behind the busy worker's queue.  The
busy worker gives a task up only if it has not started it; its answer
(``steal-response``) moves the task, or leaves it where it is.

A worker that pauses for memory is neither thief nor victim; what waits on
it unstarted is asked back at once (:meth:`Stealing.evacuate`) and placed
afresh on the running workers.

This module only decides: :meth:`Stealing.balance` and :meth:`Stealing.evacuate`
return the requests to make and :meth:`Stealing.response` the move to make;
the state machine writes the messages and performs the transitions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._model import TaskState, WorkerState
from ._placement import BANDWIDTH, FETCH_LATENCY

if TYPE_CHECKING:
    from ._state import SchedulerState

#: Most steal requests in flight from one balancing pass.
MAX_STEALS_PER_PASS = 16


class Stealing:
    def __init__(self, state: SchedulerState) -> None:
        self.state = state
        self.in_flight: dict[TaskState, WorkerState] = {}  # task -> thief
        self.count = 0

    def balance(self) -> list[tuple[TaskState, WorkerState]]:
        """The steal requests to send now: (task, the busy worker to ask)."""
        loads = self.state.placement.loads
        if not loads.idle or not loads.saturated:  # no thief, or nothing to steal
            return []
        workers = [ws for ws in self.state.workers.values() if ws.status == "running"]
        if len(workers) < 2:
            return []
        idle = [ws for ws in workers if ws.busy < ws.nthreads]
        if not idle:
            return []
        victim = max(workers, key=lambda ws: (ws.occupancy / ws.nthreads, ws.address))
        surplus = victim.busy - victim.nthreads
        if surplus <= 0:
            return []
        wait = victim.occupancy / victim.nthreads
        budget = min(surplus, MAX_STEALS_PER_PASS)
        requests: list[tuple[TaskState, WorkerState]] = []
        for ts in reversed(list(victim.processing)[-surplus:]):
            if len(requests) >= budget:
                break
            if ts in self.in_flight or ts in victim.long_running:
                continue
            thief = min(idle, key=lambda ws: (ws.busy / ws.nthreads, ws.address))
            if thief is victim or not self.state.placement.valid(ts, thief):
                continue
            if self._transfer_seconds(ts, thief) >= wait:
                continue
            self.in_flight[ts] = thief
            requests.append((ts, victim))
        return requests

    def evacuate(self, ws: WorkerState) -> list[TaskState]:
        """The tasks to ask back from ``ws``, which paused: those another running
        worker could take (the ones it already started it keeps).  Recorded with
        ``ws`` itself as the thief: given up, they are placed afresh."""
        running = [other for other in self.state.workers.values() if other.status == "running"]
        if not running:
            return []
        valid = self.state.placement.valid
        asked = []
        for ts in ws.processing:
            if ts in self.in_flight or ts in ws.long_running:
                continue
            if any(valid(ts, other) for other in running):
                self.in_flight[ts] = ws
                asked.append(ts)
        return asked

    def _transfer_seconds(self, ts: TaskState, ws: WorkerState) -> float:
        missing = [dep for dep in ts.dependencies if ws not in dep.who_has]
        if not missing:
            return 0.0
        return FETCH_LATENCY + sum(dep.nbytes for dep in missing) / BANDWIDTH

    def response(self, victim_address: str, key: str,
                 worker_state: str) -> tuple[TaskState, WorkerState | None] | None:
        """The victim's answer (``released`` means it gave the task up): the task
        to move and where to (None: place it afresh), or None to leave it."""
        ts = self.state.tasks.get(key)
        if ts is None:
            return None
        thief = self.in_flight.pop(ts, None)
        victim = self.state.workers.get(victim_address)
        if thief is None or victim is None or worker_state != "released":
            return None
        if ts.state != "processing" or ts.processing_on is not victim:
            return None
        if (thief is not victim and thief.address in self.state.workers
                and self.state.placement.valid(ts, thief)):
            self.count += 1
            return ts, thief
        return ts, None  # the thief is gone or paused, or this was an evacuation

    def forget(self, ts: TaskState) -> None:
        self.in_flight.pop(ts, None)
