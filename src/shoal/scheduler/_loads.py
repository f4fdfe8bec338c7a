"""The running workers filed by how busy they are, kept in step with every move.

Placing a root, balancing by stealing and telling whether the cluster is idle
each used to pass over every worker, on every task or every batch of events,
so the scheduler's cost per task grew with the cluster (at 1,000 workers, 10
to 20 times the cost at 2: ``benchmarks/cluster_size.py``).  This index answers the same questions without that
pass:

* the least busy running worker of each thread count (:meth:`Loads.least_busy`):
  workers with as many threads are given as many roots at most, so the least
  busy of them has room if any has;
* how many running workers have a free thread (``idle``) and how many were
  given more tasks than they have threads (``saturated``): stealing has
  something to do only when both are nonzero;
* the running workers in the order they started running (``ring``), for the
  round-robin extra candidates of placement;
* how many tasks are processing anywhere (``processing``), paused and
  closing workers included.

Every change of a worker's status calls :meth:`Loads.refile`.  The
placement's bookkeeping (``occupy``, ``unassign``, ``secede``) calls
:meth:`Loads.touch` instead, and the touched workers are filed when the index
is next read: a finished task and the queued root that takes its slot leave
a worker's busy count where it was, so most touches need no move at all.  The
scheduler's ``validate()`` checks the index against a pass over the workers.
"""

from __future__ import annotations

from collections.abc import Iterator

from ._model import WorkerState


class Loads:
    def __init__(self) -> None:
        #: nthreads -> busy slots -> the running workers that busy, in the order filed
        self.groups: dict[int, dict[int, dict[WorkerState, None]]] = {}
        #: each running worker -> the busy count it is filed under
        self.filed: dict[WorkerState, int] = {}
        self._ring: list[WorkerState] = []
        self._idle = 0
        self._saturated = 0
        self.processing = 0
        #: counts the refilings that may have made room: a running worker less
        #: busy than before, or newly running (see Placement._idlest_with_room)
        self._freed = 0
        #: workers touched since the last settle, the last touched last
        self._touched: dict[WorkerState, None] = {}

    def touch(self, ws: WorkerState) -> None:
        """``ws`` changed its busy count: filed anew when the index is next read.

        A finished task frees a slot that the next queued root takes at once,
        so filing on every change would move most workers out and back in.
        """
        touched = self._touched
        touched.pop(ws, None)  # to the end: filed after the others, as if last
        touched[ws] = None

    def settle(self) -> None:
        """File the touched workers, in the order last touched."""
        if self._touched:
            touched, self._touched = self._touched, {}
            for ws in touched:
                self.refile(ws)

    @property
    def ring(self) -> list[WorkerState]:
        self.settle()
        return self._ring

    @property
    def idle(self) -> int:
        self.settle()
        return self._idle

    @property
    def saturated(self) -> int:
        self.settle()
        return self._saturated

    @property
    def freed(self) -> int:
        self.settle()
        return self._freed

    def refile(self, ws: WorkerState) -> None:
        """``ws`` changed its busy count or its status: file it anew."""
        busy = ws.busy if ws.status == "running" else None
        old = self.filed.get(ws)
        if old == busy:
            return
        if busy is not None and (old is None or busy < old):
            self._freed += 1
        if old is not None:
            group = self.groups[ws.nthreads]
            bucket = group[old]
            del bucket[ws]
            if not bucket:
                del group[old]
            self._count(ws, old, -1)
        if busy is None:
            del self.filed[ws]
            self._ring.remove(ws)  # a worker stops running rarely: a pass is fine here
            return
        if old is None:
            self._ring.append(ws)
        self.groups.setdefault(ws.nthreads, {}).setdefault(busy, {})[ws] = None
        self.filed[ws] = busy
        self._count(ws, busy, 1)

    def _count(self, ws: WorkerState, busy: int, sign: int) -> None:
        if busy < ws.nthreads:
            self._idle += sign
        elif busy > ws.nthreads:
            self._saturated += sign

    def least_busy(self) -> Iterator[WorkerState]:
        """For each thread count, the running worker with the fewest busy slots.

        Of equals, the one filed there last: the one that finished a task most
        recently, so a lone task after another goes to the same warm worker
        (the one its client follows) rather than round the cluster.
        """
        self.settle()
        for group in self.groups.values():
            if group:
                yield next(reversed(group[min(group)]))

    def check(self, workers: dict[str, WorkerState]) -> None:
        """Assert the index matches ``workers`` (see ``_validate.py``)."""
        self.settle()
        running = {ws: ws.busy for ws in workers.values() if ws.status == "running"}
        assert self.filed == running, f"loads filed {self.filed} != {running}"
        assert set(self.ring) == set(running) and len(self.ring) == len(running), "loads ring"
        for nthreads, group in self.groups.items():
            for busy, bucket in group.items():
                assert bucket, f"loads: empty bucket {nthreads}/{busy}"
                assert all(ws.nthreads == nthreads and running[ws] == busy for ws in bucket)
        assert self.idle == sum(busy < ws.nthreads for ws, busy in running.items()), "idle"
        assert self.saturated == sum(busy > ws.nthreads for ws, busy in running.items())
        total = sum(len(ws.processing) for ws in workers.values())
        assert self.processing == total, f"loads: {self.processing} processing != {total}"
